"""Tests for xmodal.models.resnet: parameter counts against the papers (abstractly, nothing
allocated), torchvision's state-dict names, shapes, and BatchNorm statistics in train/eval mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xmodal.models.layers import count_params
from xmodal.models.resnet import ResNet


def abstract_resnet(**kwargs) -> ResNet:
    return nnx.eval_shape(lambda: ResNet(rngs=nnx.Rngs(0), **kwargs))


@pytest.mark.parametrize(
    "depth, expected",
    # torchvision's documented parameter counts (with the 1000-way fc): 11.69M, 21.80M, 25.56M,
    # 44.55M (He et al. 2016 report ~25.5M for ResNet-50).
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)],
)
def test_parameter_counts_match_torchvision(depth, expected):
    assert count_params(abstract_resnet(depth=depth, num_classes=1000)) == expected


def test_resnet50_backbone_without_classifier():
    model = abstract_resnet(depth=50)
    assert model.fc is None and model.num_features == 2048
    # 25,557,032 - fc (2048 * 1000 + 1000).
    assert count_params(model) == 23_508_032


def test_module_tree_mirrors_torchvision_names():
    model = abstract_resnet(depth=50, num_classes=1000)
    names = set()
    for path, _ in nnx.to_flat_state(nnx.state(model)):
        names.add(".".join(str(p) for p in path))
    for name in (
        "conv1.kernel",
        "bn1.scale",
        "bn1.mean",
        "layer1.0.conv3.kernel",
        "layer1.0.downsample.0.kernel",
        "layer1.0.downsample.1.var",
        "layer4.2.bn3.bias",
        "fc.kernel",
    ):
        assert name in names, name
    assert "layer1.1.downsample.0.kernel" not in names  # only the first block of a stage
    # v1.5: the stride sits on the 3x3 conv of the first block of stages 2-4.
    assert model.layer2[0].conv2.strides == (2, 2) and model.layer2[0].conv1.strides == (1, 1)
    assert model.layer1[0].conv2.kernel.shape == (3, 3, 64, 64)


def test_forward_shapes_and_batch_statistics():
    model = ResNet(depth=18, width=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 2.0 + 1.0
    tokens, pooled = model(x)  # train mode: batch statistics, running averages updated
    assert tokens.shape == (4, 1, 64) and pooled.shape == (4, 64)
    assert not np.allclose(model.bn1.mean[...], 0.0)
    before = np.asarray(model.bn1.mean[...])
    model.eval()
    _, pooled_eval = model(x)  # eval mode: running statistics, nothing updated
    np.testing.assert_array_equal(model.bn1.mean[...], before)
    assert pooled_eval.shape == (4, 64) and np.all(np.isfinite(pooled_eval))


def test_bfloat16_compute_keeps_float32_params():
    model = ResNet(depth=18, width=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    tokens, _ = model(jnp.ones((2, 32, 32, 3)))
    assert tokens.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model))} == {jnp.dtype("float32")}


def test_unknown_depth_is_rejected():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42, rngs=nnx.Rngs(0))
