"""Reference numbers of pytorch-fid, for tests/test_fid.py (which needs neither torch nor it):

    python tools/reference_fid.py --pytorch_fid=PF --torchvision=TV [--out=FILE]

PF and TV are the unpacked wheels pytorch_fid-0.3.0 and torchvision-0.29.1 (`python -m zipfile
-e WHEEL DIR`). pytorch-fid builds its FID Inception on torchvision's `Inception3`; torchvision's
compiled extension does not load beside PyTorch's CPU wheel, so this script runs torchvision's
`models/inception.py` alone, with the few helpers it imports (weight enums, logging, presets)
replaced by empty stand-ins in memory; nothing of either package is copied here. Needs torch.
FILE: tests/data/fid_reference.npz.

Writes: the FID Inception's state-dict names and shapes; its pool features [3, 2048] for three
64 px images (two of noise, one a smooth ramp) with the weights `seeded_fid_weights(names and
shapes)` (pytorch-fid's `InceptionV3([3])`, resize and normalisation included, eval mode); and
`calculate_frechet_distance` of two small feature sets.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types

import numpy as np

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "fid_reference.npz")


def seeded_fid_weights(
    names_shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random weights that keep the activations of a deep ReLU network in range: He-scaled
    kernels, BatchNorm scales and variances in [0.5, 1.5], small biases and means."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in names_shapes:
        if name.endswith("num_batches_tracked"):
            sd[name] = np.zeros(shape, np.int64)
        elif name.endswith(("running_var", "bn.weight")):
            sd[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith(("bias", "running_mean")):
            sd[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[name] = (np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)).astype(np.float32)
    return sd


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def load_torchvision_inception(torchvision_dir: str) -> types.ModuleType:
    """torchvision's models/inception.py as `torchvision.models.inception`, its imports stubbed."""

    class WeightsEnum:
        verify = classmethod(lambda cls, w: w)

    tv = _module("torchvision", __version__="0.29.1", __path__=[])
    tv.transforms = _module("torchvision.transforms", __path__=[])
    _module("torchvision.transforms._presets", ImageClassification=lambda *a, **k: None)
    _module("torchvision.utils", _log_api_usage_once=lambda obj: None)
    tv.models = _module("torchvision.models", __path__=[])
    _module(
        "torchvision.models._api",
        register_model=lambda *a, **k: lambda f: f,
        Weights=lambda *a, **k: None,
        WeightsEnum=WeightsEnum,
    )
    _module("torchvision.models._meta", _IMAGENET_CATEGORIES=["class"] * 1000)
    _module(
        "torchvision.models._utils",
        _ovewrite_named_param=lambda kwargs, name, value: kwargs.__setitem__(name, value),
        handle_legacy_interface=lambda **k: lambda f: f,
    )
    path = os.path.join(torchvision_dir, "torchvision", "models", "inception.py")
    spec = importlib.util.spec_from_file_location("torchvision.models.inception", path)
    inception = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = inception
    spec.loader.exec_module(inception)
    tv.models.inception = inception
    tv.models.inception_v3 = inception.inception_v3
    return inception


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pytorch_fid", required=True, help="unpacked pytorch_fid-0.3.0 wheel")
    p.add_argument("--torchvision", required=True, help="unpacked torchvision-0.29.1 wheel")
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args()
    import torch

    load_torchvision_inception(args.torchvision)
    sys.path.insert(0, args.pytorch_fid)
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pf

    names_shapes: list[tuple[str, tuple[int, ...]]] = []

    def seeded_instead_of_download(url, progress=True):
        # the state dict fid_inception_v3 would load: its own names and shapes, seeded values
        net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        for name, block in [
            ("Mixed_5b", pf.FIDInceptionA(192, pool_features=32)),
            ("Mixed_5c", pf.FIDInceptionA(256, pool_features=64)),
            ("Mixed_5d", pf.FIDInceptionA(288, pool_features=64)),
            ("Mixed_6b", pf.FIDInceptionC(768, channels_7x7=128)),
            ("Mixed_6c", pf.FIDInceptionC(768, channels_7x7=160)),
            ("Mixed_6d", pf.FIDInceptionC(768, channels_7x7=160)),
            ("Mixed_6e", pf.FIDInceptionC(768, channels_7x7=192)),
            ("Mixed_7b", pf.FIDInceptionE_1(1280)),
            ("Mixed_7c", pf.FIDInceptionE_2(2048)),
        ]:
            setattr(net, name, block)
        names_shapes.extend((k, tuple(v.shape)) for k, v in net.state_dict().items())
        return {k: torch.from_numpy(v) for k, v in seeded_fid_weights(names_shapes).items()}

    pf.load_state_dict_from_url = seeded_instead_of_download
    model = pf.InceptionV3([3]).eval()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    images[2] = np.linspace(0, 255, 64).astype(np.uint8)[None, :, None]
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        features = model(x)[0].flatten(1).numpy()
    set_a = rng.standard_normal((40, 6)) * [1.0, 2.0, 3.0, 1.0, 1.0, 1.0] + 0.5
    set_b = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6)) * 0.7
    fid = fid_score.calculate_frechet_distance(
        set_a.mean(0), np.cov(set_a, rowvar=False), set_b.mean(0), np.cov(set_b, rowvar=False)
    )
    np.savez_compressed(
        args.out,
        names=np.array([n for n, _ in names_shapes]),
        shapes=np.array([",".join(map(str, s)) for _, s in names_shapes]),
        images=images,
        features=features,
        set_a=set_a,
        set_b=set_b,
        fid=np.float64(fid),
    )
    print(
        f"wrote {args.out}: features {features.shape} "
        f"(|max| {np.abs(features).max():.3g}), FID {fid:.6f}"
    )


if __name__ == "__main__":
    main()
