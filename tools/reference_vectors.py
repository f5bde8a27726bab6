"""Reference vectors from the released H-T code, for tests that need neither torch nor the code:

    python tools/reference_vectors.py --released_dir=CHECKOUT [--out_dir=DIR]

CHECKOUT is a checkout of amzn/image-to-recipe-transformers (its `src/models.py` is imported
from there at run time; nothing of it is copied into this repository). Needs torch, and timm
and torchvision for the image file (without them only the recipe file is written).

Two files in DIR (default tests/data), at small sizes and random weights (fixed seeds):

released_ht_recipe.npz: the inputs (title [B, T], ingredients and instructions [B, N, T] with
padded tokens and fully padded lines, image features [B, F]), the released `JointEmbedding`'s
state dict under 'sd/<key>', and its outputs in eval mode: each component's feature, the merged
recipe feature (Linear + tanh), the image head (Linear + tanh) and the six SSL projections; plus
the sizes and the commit. One departure from the released classes, to keep the file small:
`nn.TransformerEncoderLayer` is built with dim_feedforward=32 instead of its default 2048 (every
other default as released: post-LN, ReLU, eps 1e-5, dropout 0.1).

released_ht_image.npz: the released image encoders (`ViTBackbone`, `TorchVisionBackbone`:
backbone, `fc`, tanh) in eval mode, under 'vit/' and 'resnet/': random photos (uint8
[B, H, W, 3], normalised as the released eval transform does), the outputs, and the state dict
(`image_encoder.*` keys, as in a released checkpoint). The ViT is timm's `VisionTransformer` at
32 px, patch 8, width 16, two blocks (the release asks timm for `vit_base_patch16_224`; here
`create_model` builds this one, with the CLS feature timm 0.3.1's `forward_features` returns);
the ResNet is torchvision's `ResNet` with `Bottleneck` blocks, one per stage (the release's
`resnet50` has 3, 4, 6, 3), at 64 px. Its 8M values are not stored but made by
`seeded_values(shapes, seed)` (NumPy's legacy generator, whose stream is frozen): the file keeps
the keys, shapes and seed.

tests/test_released_layout.py reads both files.
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
VIT = dict(image_size=32, patch=8, width=16, depth=2, heads=2, mlp=32)
RESNET = dict(image_size=64, blocks=(1, 1, 1, 1), seed=0)
IMAGE_BATCH = 3
DEFAULT_OUT_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
RECIPE_FILE, IMAGE_FILE = "released_ht_recipe.npz", "released_ht_image.npz"


def seeded_values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 values for a convolutional network's state dict, reproducible without
    torch (NumPy's RandomState stream is frozen across versions), in the order of `shapes`:
    He-normal convolution weights, a small Linear (the tanh head stays unsaturated), BatchNorm
    scales near 1, shifts and running means near 0, running variances in [0.5, 1.5)."""
    rng = np.random.RandomState(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros(shape, np.int64)
        elif len(shape) == 4:  # conv [O, I, kh, kw]
            fan_in = int(np.prod(shape[1:]))
            out[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif len(shape) == 2:  # the head's Linear [O, I]: features of rms ~10 -> tanh unsaturated
            out[key] = (rng.standard_normal(shape) * 0.1 / np.sqrt(shape[1])).astype(np.float32)
        elif key.endswith("running_var"):
            out[key] = (0.5 + rng.random_sample(shape)).astype(np.float32)
        elif key.endswith("weight"):
            out[key] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:  # bias, running_mean
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


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


def image_case(released: types.ModuleType) -> dict[str, np.ndarray]:
    """The released ViT and ResNet image encoders at small sizes, as module docstring says."""
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models.resnet import Bottleneck, ResNet

    def small_vit(name: str, pretrained: bool = True, **_) -> VisionTransformer:
        v = VIT
        vit = VisionTransformer(
            img_size=v["image_size"],
            patch_size=v["patch"],
            embed_dim=v["width"],
            depth=v["depth"],
            num_heads=v["heads"],
            mlp_ratio=v["mlp"] / v["width"],
        )
        # timm 0.3.1 (the release's): forward_features is the CLS vector after the final norm.
        head = VisionTransformer.forward_head
        features = VisionTransformer.forward_features
        vit.forward_features = lambda x: head(vit, features(vit, x), pre_logits=True)
        return vit

    released.timm = types.SimpleNamespace(create_model=small_vit)
    released.resnet50 = lambda pretrained=True: ResNet(Bottleneck, list(RESNET["blocks"]))
    out: dict[str, np.ndarray] = {"meta/torch": np.asarray(torch.__version__)}
    out["meta/timm"] = np.asarray(timm.__version__)
    rng = np.random.default_rng(1)
    for name, model_name, size in (
        ("vit", "vit_small_for_tests", VIT["image_size"]),
        ("resnet", "resnet50", RESNET["image_size"]),
    ):
        torch.manual_seed(0)
        encoder = released.get_image_model(SIZES["embed"], model_name, pretrained=False).eval()
        sd = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
        if name == "resnet":  # regenerable values instead of 8M stored ones
            shapes = {k: tuple(v.shape) for k, v in sd.items()}
            values = seeded_values(shapes, RESNET["seed"])
            encoder.load_state_dict(
                {k.removeprefix("image_encoder."): torch.from_numpy(v) for k, v in values.items()}
            )
            out["resnet/keys"] = np.asarray(list(shapes))
            for key, shape in shapes.items():
                out[f"resnet/shape/{key}"] = np.asarray(shape, np.int64)
            out["resnet/seed"] = np.asarray(RESNET["seed"])
        else:
            for key, value in sd.items():
                out[f"vit/sd/{key}"] = value.numpy()
        photos = rng.integers(0, 256, size=(IMAGE_BATCH, size, size, 3), dtype=np.uint8)
        with torch.no_grad():
            out[f"{name}/out"] = encoder(released_eval_input(photos)).numpy()
        out[f"{name}/in"] = photos
    for key, value in {**VIT, "embed": SIZES["embed"]}.items():
        out[f"vit/size/{key}"] = np.asarray(value)
    out["resnet/size/image_size"] = np.asarray(RESNET["image_size"])
    out["resnet/size/blocks"] = np.asarray(RESNET["blocks"])
    return out


def released_eval_input(photos: np.ndarray):
    """uint8 [B, H, W, 3] -> what the released eval transform gives after its resize and crop
    (`ToTensor`, then `Normalize` with ImageNet's mean and std): float [B, 3, H, W]."""
    import torch
    from torchvision.transforms import functional

    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255.0
    return functional.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _write(path: str, vectors: dict[str, np.ndarray], commit: str) -> None:
    vectors["meta/commit"] = np.asarray(commit)
    np.savez_compressed(path, **vectors)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB) from commit {commit}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--released_dir", required=True, help="amzn/image-to-recipe-transformers")
    p.add_argument("--out_dir", default=DEFAULT_OUT_DIR, help="default: tests/data")
    args = p.parse_args()
    commit = commit_of(args.released_dir)
    try:  # the recipe case needs neither; stub_missing leaves them stubbed for it
        import timm  # noqa: F401
        import torchvision.models  # noqa: F401

        image = True
    except Exception:  # absent, or torchvision beside a CPU torch that it cannot import with
        image = False
    released = import_released(args.released_dir)
    _write(os.path.join(args.out_dir, RECIPE_FILE), recipe_case(released), commit)
    if image:
        released = import_released(args.released_dir)  # a fresh module: recipe_case patched it
        _write(os.path.join(args.out_dir, IMAGE_FILE), image_case(released), commit)
    else:
        print(f"timm or torchvision not importable: {IMAGE_FILE} not written")


if __name__ == "__main__":
    main()
