"""The Inception-v3 that FID is defined with (Heusel et al., NeurIPS 2017: TensorFlow's
`inception-2015-12-05` graph, as pytorch-fid's `FIDInceptionV3` ports it), for
`xmodal.fid`: uint8 images -> its 2,048 final-pool features.

The module tree mirrors torchvision's `Inception3` state-dict names (`Conv2d_1a_3x3.conv`,
`Mixed_5b.branch1x1.bn`, ...), so pytorch-fid's weights file (`pt_inception-2015-12-05-*.pth`,
which the user brings: nothing is downloaded) loads name for name with `load_fid_weights`. Where
the FID graph differs from torchvision's Inception (its average pools leave the padding out of
the mean; the last block max-pools its pool branch) this follows the FID graph. Input as
pytorch-fid feeds it: resized bilinearly to 299 x 299 (no antialiasing), scaled to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

from xmodal.models import import_weights

INPUT_SIZE = 299
FEATURES = 2048
_Size = int | tuple[int, int]


def _pair(v: _Size) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


class BasicConv(nnx.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: _Size, *, stride: int = 1, pad: _Size = 0, rngs: nnx.Rngs
    ):
        ph, pw = _pair(pad)
        self.conv = nnx.Conv(
            cin,
            cout,
            kernel_size=_pair(kernel),
            strides=(stride, stride),
            padding=[(ph, ph), (pw, pw)],
            use_bias=False,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_unpadded(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average over the pixels inside the image (torch count_include_pad=False)."""
    return linen.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    return linen.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nnx.Module):
    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv(48, 64, 5, pad=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, pad=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, pad=1, rngs=rngs)
        self.branch_pool = BasicConv(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_avg_pool_unpadded(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(nnx.Module):
    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, pad=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the 1x7 and 7x1
        self.branch1x1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv(c7, c7, row[0], pad=row[1], rngs=rngs)
        self.branch7x7_3 = BasicConv(c7, 192, col[0], pad=col[1], rngs=rngs)
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv(c7, c7, col[0], pad=col[1], rngs=rngs)
        self.branch7x7dbl_3 = BasicConv(c7, c7, row[0], pad=row[1], rngs=rngs)
        self.branch7x7dbl_4 = BasicConv(c7, c7, col[0], pad=col[1], rngs=rngs)
        self.branch7x7dbl_5 = BasicConv(c7, 192, row[0], pad=row[1], rngs=rngs)
        self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        pool = self.branch_pool(_avg_pool_unpadded(x))
        return jnp.concatenate([self.branch1x1(x), b7, d, pool], axis=-1)


class InceptionD(nnx.Module):
    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), pad=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), pad=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """`max_pool`: the FID graph's last block pools its pool branch by max, the one before by
    the unpadded average."""

    def __init__(self, cin: int, *, max_pool: bool, rngs: nnx.Rngs):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), pad=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), pad=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, pad=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), pad=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), pad=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
        pooled = _max_pool(x, 1, pad=1) if self.max_pool else _avg_pool_unpadded(x)
        return jnp.concatenate([self.branch1x1(x), b3, d, self.branch_pool(pooled)], axis=-1)


class FIDInception(nnx.Module):
    """uint8 images [N, H, W, 3] -> float32 pool features [N, 2048]."""

    def __init__(self, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, pad=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        shape = (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3)
        x = 2.0 * jax.image.resize(x, shape, "bilinear", antialias=False) - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x, 2)
        x = _max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return jnp.mean(x, axis=(1, 2))


def load_fid_weights(model: FIDInception, sd: Mapping[str, np.ndarray]) -> list[str]:
    """pytorch-fid's state dict into `model` in place (every conv and BatchNorm must be there);
    returns the names left unused (its 1008-way `fc`)."""
    used: set[str] = set()
    for path, module in nnx.iter_graph(model):
        if isinstance(module, BasicConv):
            prefix = ".".join(str(p) for p in path)
            import_weights.load_conv(module.conv, sd, f"{prefix}.conv", used)
            import_weights.load_batch_norm(module.bn, sd, f"{prefix}.bn", used)
    return sorted(set(sd) - used)


def from_file(path: str) -> FIDInception:
    """The FID Inception with the weights of `path` (pytorch-fid's `.pth`, or the same names in
    `.safetensors`); a file missing any of its tensors is refused by name."""
    model = FIDInception(nnx.Rngs(0))
    unused = load_fid_weights(model, import_weights.load_state_dict(path))
    extra = [name for name in unused if not name.startswith("fc.")]
    if extra:
        raise ValueError(
            f"{path!r} is not pytorch-fid's Inception: it has {len(extra)} tensors that the FID "
            f"Inception does not, e.g. {extra[:3]}"
        )
    return model
