"""Reference vectors from the released H-T code, for tests that need neither torch nor the code:

    python tools/reference_vectors.py --released_dir=CHECKOUT [--out=FILE.npz]

CHECKOUT is a checkout of amzn/image-to-recipe-transformers (its `src/models.py` is imported
from there at run time; nothing of it is copied into this repository). Needs torch; timm and
torchvision are stubbed when absent, since only the recipe side and the heads are built.

The file holds, at small sizes and random weights (fixed seeds): the inputs (title [B, T],
ingredients and instructions [B, N, T] with padded tokens and fully padded lines, image
features [B, F]), the released `JointEmbedding`'s state dict under 'sd/<key>', and its outputs
in eval mode: each component's feature, the merged recipe feature (Linear + tanh), the image
head (Linear + tanh) and the six SSL projections; plus the sizes and the commit.

One departure from the released classes, to keep the file small: `nn.TransformerEncoderLayer`
is built with dim_feedforward=32 instead of its default 2048 (every other default as released:
post-LN, ReLU, eps 1e-5, dropout 0.1). tests/test_released_layout.py reads the file.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np

COMPONENTS = ("title", "ingredients", "instructions")
SIZES = dict(vocab=40, width=16, heads=2, layers=2, mlp=32, embed=24, image_features=12)
BATCH, TOKENS, LINES = 4, 7, 5
DEFAULT_OUT = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "tests", "data", "released_ht_recipe.npz")
)


def stub_missing(names: dict[str, list[str]]) -> None:
    """Empty modules for imports the recipe side never uses (timm, torchvision.models)."""
    for name, attrs in names.items():
        try:
            importlib.import_module(name)
            continue
        except Exception:  # absent, or (torchvision beside a CPU torch) not importable
            pass
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for attr in attrs:
            setattr(sys.modules[name], attr, None)
        if len(parts) > 1:
            setattr(sys.modules[parts[0]], parts[1], sys.modules[name])


def import_released(released_dir: str) -> types.ModuleType:
    path = os.path.join(released_dir, "src", "models.py")
    if not os.path.exists(path):
        raise SystemExit(f"--released_dir={released_dir!r}: no src/models.py there")
    resnets = ["resnet18", "resnet50", "resnet101", "resnet152", "inception_v3"]
    resnets += ["resnext50_32x4d", "resnext101_32x8d"]
    stub_missing({"timm": [], "torchvision.models": resnets})
    spec = importlib.util.spec_from_file_location("released_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commit_of(released_dir: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", released_dir, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def ragged(rng: np.random.Generator, shape: tuple[int, ...], vocab: int) -> np.ndarray:
    ids = rng.integers(3, vocab, size=shape)
    lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
    return np.where(np.arange(shape[-1]) < lengths[..., None], ids, 0).astype(np.int64)


def recipe_case(released: types.ModuleType) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    s = SIZES

    class ImageHead(nn.Module):
        """The released image encoders' head (`fc`, then tanh) on given backbone features."""

        def __init__(self, hidden: int):
            super().__init__()
            self.fc = nn.Linear(s["image_features"], hidden)

        def forward(self, feats: torch.Tensor, freeze_backbone: bool = False) -> torch.Tensor:
            return torch.tanh(self.fc(feats))

    small = types.SimpleNamespace(**vars(nn))
    small.TransformerEncoderLayer = functools.partial(
        nn.TransformerEncoderLayer, dim_feedforward=s["mlp"]
    )
    released.nn = small  # the classes resolve `nn.` at construction time
    released.get_image_model = lambda hidden_size, image_model, pretrained=True: ImageHead(
        hidden_size
    )
    torch.manual_seed(0)
    model = released.JointEmbedding(
        s["embed"],
        "none",
        vocab_size=s["vocab"],
        hidden_recipe=s["width"],
        n_heads=s["heads"],
        n_layers=s["layers"],
    ).eval()
    rng = np.random.default_rng(0)
    title = ragged(rng, (BATCH, TOKENS), s["vocab"])
    ingredients = ragged(rng, (BATCH, LINES, TOKENS), s["vocab"])
    instructions = ragged(rng, (BATCH, LINES, TOKENS), s["vocab"])
    ingredients[0, 2:] = 0  # fully padded lines: trailing, and between real lines
    ingredients[2, 3] = 0
    instructions[1, 1:] = 0
    image = rng.normal(size=(BATCH, s["image_features"])).astype(np.float32)
    t = torch.from_numpy
    with torch.no_grad():
        img, recipe, proj = model(t(image), t(title), t(ingredients), t(instructions))
    out = {
        "in/title": title,
        "in/ingredients": ingredients,
        "in/instructions": instructions,
        "in/image_features": image,
        "out/image": img.numpy(),
        "out/recipe": recipe.numpy(),
    }
    for a in COMPONENTS:
        out[f"out/{a}"] = proj["raw"][a].numpy()
        for b in COMPONENTS:
            if a != b:
                out[f"out/ssl/{a}/{b}"] = proj[a][b].numpy()
    for key, value in model.state_dict().items():
        out[f"sd/{key}"] = value.numpy()
    for key, value in s.items():
        out[f"size/{key}"] = np.asarray(value)
    out["meta/torch"] = np.asarray(torch.__version__)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--released_dir", required=True, help="amzn/image-to-recipe-transformers")
    p.add_argument("--out", default=DEFAULT_OUT, help="default: tests/data/released_ht_recipe.npz")
    args = p.parse_args()
    released = import_released(args.released_dir)
    vectors = recipe_case(released)
    vectors["meta/commit"] = np.asarray(commit_of(args.released_dir))
    np.savez_compressed(args.out, **vectors)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size / 1024:.0f} KiB) from commit {vectors['meta/commit']}")


if __name__ == "__main__":
    main()
