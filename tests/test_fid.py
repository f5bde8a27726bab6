"""xmodal.fid and the FID Inception against pytorch-fid 0.3.0: tests/data/fid_reference.npz,
written by `tools/reference_fid.py` (pytorch-fid on torchvision 0.29.1's Inception3, seeded
random weights; no torch needed here)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from tools.reference_fid import seeded_fid_weights
from xmodal import fid
from xmodal.models import inception

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = np.load(os.path.join(REPO, "tests", "data", "fid_reference.npz"))


def _reference_weights() -> dict[str, np.ndarray]:
    shapes = [tuple(int(d) for d in s.split(",") if d) for s in REFERENCE["shapes"]]
    return seeded_fid_weights(list(zip(map(str, REFERENCE["names"]), shapes, strict=True)))


def test_the_frechet_distance_is_pytorch_fids():
    a, b = REFERENCE["set_a"], REFERENCE["set_b"]
    assert fid.fid(a, b) == pytest.approx(float(REFERENCE["fid"]), rel=1e-9)


def test_the_frechet_distance_of_diagonal_gaussians_by_hand():
    # N(mu1, diag(v1)) and N(mu2, diag(v2)): |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    by_hand = 1.0 + 0.0 + 4.0 + (1.0 + 0.0 + 4.0)
    assert fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(by_hand)
    x = np.random.default_rng(0).standard_normal((30, 5))
    assert fid.fid(x, x) == pytest.approx(0.0, abs=1e-9)


def test_bad_feature_sets_are_refused():
    with pytest.raises(ValueError, match="at least 2 feature rows"):
        fid.fid(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid.fid(np.ones((3, 4)) * [[1], [2], [3]], np.ones((3, 5)) * [[1], [2], [3]])


def test_the_fid_inception_from_a_weights_file_is_pytorch_fids(tmp_path):
    path = str(tmp_path / "inception.safetensors")
    save_file(_reference_weights(), path)
    features = fid.inception_features(path)(REFERENCE["images"])
    expected = REFERENCE["features"]
    assert features.shape == (3, inception.FEATURES)
    np.testing.assert_allclose(features, expected, atol=1e-5 * np.abs(expected).max())


def test_a_file_that_is_not_the_fid_inception_is_refused_by_name(tmp_path):
    weights = _reference_weights()
    missing = str(tmp_path / "missing.safetensors")
    save_file(
        {k: v for k, v in weights.items() if k != "Mixed_6c.branch7x7_2.bn.running_var"}, missing
    )
    with pytest.raises(KeyError, match=r"Mixed_6c\.branch7x7_2\.bn\.running_var"):
        inception.from_file(missing)
    extra = str(tmp_path / "extra.safetensors")
    save_file(
        {**weights, "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32)}, extra
    )
    with pytest.raises(ValueError, match="not pytorch-fid's Inception"):
        inception.from_file(extra)
