"""Choosing the number of twicing steps: Monte-Carlo SURE and the oracle (paper section 6).

All curves are evaluated in coefficient space: with ``c = Q^T y`` and factors ``f(t)``,
``||y - z(t)||^2 = ||y||^2 - ||c||^2 + sum_i (1 - f_i)^2 c_i^2``, so a grid of hundreds of ``t``
costs ``O(k)`` each and no image is formed.

Plain SURE with divergence ``sum_i f_i(t)`` fails because the filter itself depends on ``y``;
Monte-Carlo SURE (Ramani, Blu & Unser 2008, doi:10.1109/TIP.2008.2001404) runs the whole pipeline
once more on ``y + eps b`` (``b ~ N(0, I)``, same anchors) and uses
``div(t) ~ b^T (z_eps(t) - z(t)) / eps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .twicing import twicing_factors

__all__ = ["t_grid", "SureCurve", "mc_sure_curve", "mse_curve", "estimate_noise_sigma", "psnr"]


def t_grid(t_max: float = 1e6, n: int = 400) -> np.ndarray:
    """Integer, roughly log-spaced twicing steps from 1 to ``t_max`` (unique, ascending)."""
    return np.unique(np.round(np.geomspace(1, t_max, n))).astype(np.int64)


@dataclass
class SureCurve:
    """Monte-Carlo SURE over a grid of steps.

    Attributes
    ----------
    t : numpy.ndarray
        Steps.
    sure : numpy.ndarray
        Unbiased estimate of ``||z(t) - x||^2 / n`` (mean squared error per value).
    residual : numpy.ndarray
        ``||y - z(t)||^2 / n``.
    divergence : numpy.ndarray
        Estimated divergence of ``y -> z(t)``.
    """

    t: np.ndarray
    sure: np.ndarray
    residual: np.ndarray
    divergence: np.ndarray

    @property
    def best_t(self) -> int:
        """Step minimising SURE."""
        return int(self.t[int(np.argmin(self.sure))])


def _spectral_sum(factors: np.ndarray, weights: torch.Tensor) -> np.ndarray:
    """``sum_i factors[:, i] * weights[i]`` for a ``(n, k)`` factor table."""
    return factors @ weights.cpu().numpy()


def mc_sure_curve(
    ts: np.ndarray,
    lam: np.ndarray,
    coeffs: torch.Tensor,
    probe_coeffs: torch.Tensor,
    lam_eps: np.ndarray,
    coeffs_eps: torch.Tensor,
    probe_coeffs_eps: torch.Tensor,
    y_norm2: float,
    sigma: float,
    eps: float,
    n: int,
) -> SureCurve:
    """Monte-Carlo SURE curve of twicing from the coefficients of two pipeline runs.

    Parameters
    ----------
    ts : numpy.ndarray
        Steps.
    lam, lam_eps : numpy.ndarray
        Normalised eigenvalues of the filters computed from ``y`` and from ``y + eps b``.
    coeffs, coeffs_eps : torch.Tensor
        ``Q^T y`` and ``Q_eps^T (y + eps b)``, shape ``(k, C)``.
    probe_coeffs, probe_coeffs_eps : torch.Tensor
        ``Q^T b`` and ``Q_eps^T b``.
    y_norm2 : float
        ``||y||^2``.
    sigma : float
        Noise standard deviation.
    eps : float
        Perturbation size.
    n : int
        Number of values in ``y`` (pixels times channels).

    Returns
    -------
    SureCurve
    """
    f = twicing_factors(lam, ts)
    f_eps = twicing_factors(lam_eps, ts)
    c2 = (coeffs**2).sum(1)
    residual = y_norm2 - float(c2.sum()) + _spectral_sum((1 - f) ** 2, c2)
    bz = _spectral_sum(f, (probe_coeffs * coeffs).sum(1))
    bz_eps = _spectral_sum(f_eps, (probe_coeffs_eps * coeffs_eps).sum(1))
    div = (bz_eps - bz) / eps
    sure = residual - n * sigma**2 + 2 * sigma**2 * div
    return SureCurve(t=ts, sure=sure / n, residual=residual / n, divergence=div)


def mse_curve(
    ts: np.ndarray, lam: np.ndarray, coeffs: torch.Tensor, ref_coeffs: torch.Tensor, ref_norm2: float, n: int
) -> np.ndarray:
    """Exact ``||z(t) - x||^2 / n`` against a reference ``x`` (the paper's oracle protocol).

    ``||x - z||^2 = ||x||^2 - 2 sum_i f_i c_i a_i + sum_i f_i^2 c_i^2`` with ``a = Q^T x``.
    """
    f = twicing_factors(lam, ts)
    cross = _spectral_sum(f, (coeffs * ref_coeffs).sum(1))
    sq = _spectral_sum(f**2, (coeffs**2).sum(1))
    return (ref_norm2 - 2 * cross + sq) / n


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def estimate_noise_sigma(image: np.ndarray, channel_axis: int | None = None) -> float:
    """Gaussian noise level of an image (wavelet MAD, :func:`skimage.restoration.estimate_sigma`)."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(np.asarray(image, dtype=np.float64), channel_axis=channel_axis, average_sigmas=True))
