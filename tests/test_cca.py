"""CCA against its definition on synthetic linear pairs: known canonical correlations recovered,
projections whitened and uncorrelated across directions, retrieval from the latent space."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.baselines import cca


def _linear_pair(n=20_000, seed=0):
    """x and y share 3 latent signals with correlations rho (plus independent noise dims), each
    side mixed by a random invertible matrix: CCA must recover rho whatever the mixing."""
    rng = np.random.default_rng(seed)
    rho = np.array([0.9, 0.6, 0.3])
    z = rng.normal(size=(n, 3))
    ex, ey = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    sx, sy = z, rho * z + np.sqrt(1 - rho**2) * ey  # corr(sx_i, sy_i) = rho_i
    x = np.concatenate([sx, ex[:, :2]], 1) @ rng.normal(size=(5, 5))
    y = np.concatenate([sy, rng.normal(size=(n, 1))], 1) @ rng.normal(size=(4, 4))
    return x + 3.0, y - 1.0, rho


def test_recovers_canonical_correlations_and_whitens():
    x, y, rho = _linear_pair()
    model = cca.fit_cca(x, y, dim=3, reg=0.0)
    np.testing.assert_allclose(model.correlations, rho, atol=0.02)
    px, py = model.project_x(x), model.project_y(y)
    # Brute force: the empirical correlation of each projected pair of directions.
    for i in range(3):
        np.testing.assert_allclose(np.corrcoef(px[:, i], py[:, i])[0, 1], rho[i], atol=0.02)
    np.testing.assert_allclose(np.cov(px.T), np.eye(3), atol=1e-6)  # whitened, uncorrelated
    np.testing.assert_allclose(np.cov(py.T), np.eye(3), atol=1e-6)
    np.testing.assert_allclose(np.cov(px.T, py.T)[:3, 3:], np.diag(model.correlations), atol=1e-6)


def test_regularisation_keeps_rank_deficient_features_finite():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    x = np.concatenate([x, x[:, :1]], 1)  # duplicated column: singular covariance
    y = x[:, :3] + 0.1 * rng.normal(size=(50, 3))
    model = cca.fit_cca(x, y, dim=3, reg=1e-2)
    assert np.all(np.isfinite(model.w_x)) and np.all(model.correlations <= 1.0 + 1e-9)


def test_retrieval_in_latent_space_finds_pairs():
    x, y, _ = _linear_pair(n=3000, seed=2)
    model = cca.fit_cca(x[:2000], y[:2000], dim=1, reg=0.0)
    # With the strongest direction only, a query's match should rank far above chance (500).
    from xmodal.evaluate import retrieval_ranks

    px, py = model.project_x(x[2000:]), model.project_y(y[2000:])
    ranks = retrieval_ranks(
        np.concatenate([px, np.ones_like(px)], 1), np.concatenate([py, np.ones_like(py)], 1)
    )
    assert np.median(ranks) < 300


@pytest.mark.parametrize("dim", [0, 6])
def test_bad_dimension_is_rejected(dim):
    x, y, _ = _linear_pair(n=100)
    with pytest.raises(ValueError, match="dim"):
        cca.fit_cca(x, y, dim=dim)


def test_unknown_text_is_rejected():
    with pytest.raises(ValueError, match="text"):
        cca.text_features({"title": np.zeros((2, 3))}, "steps")
