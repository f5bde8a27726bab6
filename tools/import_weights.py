"""Check that a pretrained state dict imports into a config's image encoder:

    python tools/import_weights.py --config=configs/tnlbt.py:b16 --weights=vit_b16.safetensors

Training picks the weights up through `--config.model.image_init=PATH`; this tool only verifies
the file maps one-to-one (names and shapes) and reports what it ignores.
"""

from __future__ import annotations

import argparse

from flax import nnx

from xmodal.apps import cli
from xmodal.models import import_weights
from xmodal.models.dual_encoder import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/<method>.py[:preset]")
    p.add_argument("--weights", required=True, help="timm ViT / torchvision ResNet state dict")
    args = p.parse_args()
    config = cli.load_config_file(args.config)
    model = build_model(
        config.model,
        vocab_size=8,
        image_size=config.data.image_size,
        rngs=nnx.Rngs(0),
        decoder_max_len=config.data.max_decoder_tokens,
    )
    unused = import_weights.load_image_encoder(model.image_encoder, args.weights)
    print(f"ok: every image-encoder parameter imported; ignored: {', '.join(unused) or 'nothing'}")


if __name__ == "__main__":
    main()
