"""ResNet image encoder (He et al., CVPR 2016), v1.5 as in torchvision, for im2recipe, AdaMine,
H-T and the CCA baseline (all of which use an ImageNet ResNet-50).

The module tree mirrors torchvision's state-dict names so pretrained weights map one-to-one:
`conv1`, `bn1`, `layer1..layer4[i].{conv1, bn1, conv2, bn2[, conv3, bn3]}`, `layer*[0].downsample`
= [conv, bn] (torchvision's `downsample.0` / `downsample.1`), and an optional `fc`. Conv kernels
are HWIO (torch OIHW: transpose (2, 3, 1, 0)); BatchNorm `scale`/`bias`/`mean`/`var` are torch's
`weight`/`bias`/`running_mean`/`running_var`. v1.5: the stride of a bottleneck sits on its 3x3
conv (`conv2`), not on the first 1x1.

BatchNorm in train mode normalises with the statistics of the batch it sees and updates running
averages (nnx.BatchStat, carried in `TrainState.model_state`). Inside the jitted train step the
batch is one global, batch-sharded array, so the mean/variance reductions run over the *global*
batch (XLA inserts the cross-device reduction): sync-BN semantics, independent of the device count.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.models import conv_ops
from xmodal.models.layers import Dtype

# Blocks per stage and block kind for the standard depths (He et al. 2016, Table 1).
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(cin: int, cout: int, k: int, stride: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=[(k // 2, k // 2)] * 2,  # torch's symmetric padding (not SAME's asymmetric one)
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=CONV_INIT,
        conv_general_dilated=conv_ops.conv_general_dilated,
        rngs=rngs,
    )


def _bn(features: int, dtype: Dtype, rngs: nnx.Rngs, *, zero: bool = False) -> nnx.BatchNorm:
    # torch momentum 0.1 on the new value == flax momentum 0.9 on the running value.
    return nnx.BatchNorm(
        features,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init(),
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    def __init__(self, cin, planes, stride, *, zero_init_residual, dtype, rngs):
        self.conv1 = _conv(cin, planes, 3, stride, dtype, rngs)
        self.bn1 = _bn(planes, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, dtype, rngs)
        self.bn2 = _bn(planes, dtype, rngs, zero=zero_init_residual)
        self.downsample = _downsample(cin, planes, stride, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
    """1x1 reduce -> 3x3 (strided, v1.5) -> 1x1 expand x4 (ResNet-50/101/152)."""

    def __init__(self, cin, planes, stride, *, zero_init_residual, dtype, rngs):
        out = planes * EXPANSION["bottleneck"]
        self.conv1 = _conv(cin, planes, 1, 1, dtype, rngs)
        self.bn1 = _bn(planes, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, dtype, rngs)
        self.bn2 = _bn(planes, dtype, rngs)
        self.conv3 = _conv(planes, out, 1, 1, dtype, rngs)
        self.bn3 = _bn(out, dtype, rngs, zero=zero_init_residual)
        self.downsample = _downsample(cin, out, stride, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + _shortcut(self.downsample, x))


def _downsample(cin: int, cout: int, stride: int, dtype: Dtype, rngs: nnx.Rngs) -> Any:
    """torchvision's `downsample` = Sequential(conv1x1, bn) where the shape changes, else None."""
    if stride == 1 and cin == cout:
        return None
    return nnx.List([_conv(cin, cout, 1, stride, dtype, rngs), _bn(cout, dtype, rngs)])


def _shortcut(downsample: Any, x: jax.Array) -> jax.Array:
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x))


class ResNet(nnx.Module):
    """ResNet backbone returning (feature map tokens, global-average-pooled feature).

    `depth` picks the standard layout (18/34/50/101/152); `blocks` overrides its blocks per
    stage (e.g. (1, 1, 1, 1) for CPU tests); `width` is the stem/first-stage width (64 in every
    standard model; smaller for CPU tests). `num_classes` > 0 adds torchvision's `fc`
    classifier (only useful for checking imported ImageNet weights); by default there is none.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        width: int = 64,
        blocks: tuple[int, int, int, int] | None = None,
        num_classes: int = 0,
        zero_init_residual: bool = False,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; choose from {sorted(RESNET_DEPTHS)}")
        kind, standard = RESNET_DEPTHS[depth]
        blocks = tuple(blocks) if blocks else standard
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive counts (one per stage), got {blocks}")
        block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
        self.dtype = dtype
        self.conv1 = nnx.Conv(
            3,
            width,
            kernel_size=(7, 7),
            strides=(2, 2),
            padding=[(3, 3), (3, 3)],
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=CONV_INIT,
            conv_general_dilated=conv_ops.conv_general_dilated,
            rngs=rngs,
        )
        self.bn1 = _bn(width, dtype, rngs)
        cin = width
        make = functools.partial(
            block_cls, zero_init_residual=zero_init_residual, dtype=dtype, rngs=rngs
        )
        stages = []
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stage = []
            for j in range(n):
                stage.append(make(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * EXPANSION[kind]
            stages.append(nnx.List(stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = cin
        self.fc = (
            nnx.Linear(cin, num_classes, param_dtype=jnp.float32, rngs=rngs)
            if num_classes
            else None
        )

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: normalised float [B, H, W, 3] -> (tokens [B, h*w, C], pooled [B, C]).

        tokens are the last stage's feature map flattened (for cross-attention); pooled is its
        global average (torchvision's `avgpool` output), or the logits when `fc` exists.
        """
        x = nnx.relu(self.bn1(self.conv1(images.astype(self.dtype))))
        x = conv_ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        pooled = jnp.mean(tokens.astype(jnp.float32), axis=1).astype(x.dtype)
        if self.fc is not None:
            pooled = self.fc(pooled.astype(jnp.float32))
        return tokens, pooled
