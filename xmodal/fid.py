"""Fréchet Inception Distance (Heusel et al., NeurIPS 2017) of generated images against real
photos, as TNLBT and ACME's successors report generation.

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

over the features of the two image sets (means mu, covariances S with n - 1, as pytorch-fid).
Tr((S_r S_g)^(1/2)) is the sum of the square roots of the eigenvalues of S_r S_g (real and
non-negative for two covariance matrices), which needs no matrix square root and no retry with
a jitter on near-singular products.

The features are those of the Inception-v3 FID is defined with (`xmodal.models.inception`, from
the weights file the user brings: nothing is downloaded), or, without that file, of a frozen
image encoder trained on real photos. The two are different numbers: every output names its
feature network (`FEATURES_INCEPTION` or `encoder_features_name`), and only the Inception one
compares with published FIDs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from xmodal.models import inception
from xmodal.runtime.embed import in_fixed_batches

FEATURES_INCEPTION = "Inception-v3 pool features (pytorch-fid's FID weights, {path})"
INCEPTION_BATCH = 50


def encoder_features_name(workdir: str) -> str:
    return (
        f"the frozen image encoder of run {workdir!r} (not Inception-v3: not comparable with "
        "published FIDs)"
    )


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (n - 1) of features [N, D]; N >= 2."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"FID needs at least 2 feature rows [N, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} and {mu2.shape}")
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid(real: np.ndarray, generated: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*statistics(real), *statistics(generated))


def inception_features(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images [N, H, W, 3] (any size: resized to 299) -> their FID Inception features
    [N, 2048], in fixed batches of up to `INCEPTION_BATCH` (one compiled program)."""
    graphdef, state = nnx.split(inception.from_file(path))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda images: in_fixed_batches(
        lambda x: forward(state, x), [images], min(INCEPTION_BATCH, len(images))
    )
