"""`python -m xmodal.predict`: photo -> ingredients and title, the trainer's sibling command.

    python -m xmodal.main --config=configs/tnlbt.py:extended --workdir=W
    python -m xmodal.predict --config=configs/tnlbt.py:extended --workdir=W --split=test

The same program as `python -m xmodal.apps.predict` (its home, with the Python API).
"""

from xmodal.apps.predict import main

if __name__ == "__main__":
    main()
