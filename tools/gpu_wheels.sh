#!/usr/bin/env bash
# Wheels tools/gpu_check.py needs on the lent GPU machine (Python 3.12, no package index there):
# the project's dependencies that its image lacks (/work/.library/device/KINDS.md lists what it
# has), pinned to the versions the project is tested with, downloaded into .whl/ (gitignored).
#   bash tools/gpu_wheels.sh            # on a machine with pip access, once
#   then carry .whl with the call:      python3 tools/gpu_check.py --wheels=.whl
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" \
  grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 ijson==3.6.0 tensorboardX==2.6.5 \
  portpicker==1.6.0
ls -l "$DEST"
