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

__all__ = ["t_grid", "SureCurve", "mc_sure_curve", "mse_curve", "PilotTerms", "pilot_blend", "estimate_noise_sigma",
           "psnr"]


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


@dataclass
class PilotTerms:
    """What :func:`pilot_blend` needs of a pilot estimate ``p`` (the first stage's output).

    Attributes
    ----------
    coeffs : torch.Tensor
        ``Q^T p`` in the basis of the stage it is averaged with, shape ``(k, C)``.
    norm2 : float
        ``||p||^2``.
    y_dot : float
        ``y^T p``.
    divergence : float or None
        Monte-Carlo divergence of ``y -> p`` (for SURE).
    ref_dot : float or None
        ``x^T p`` with a reference ``x`` (for the MSE).
    """

    coeffs: torch.Tensor
    norm2: float
    y_dot: float
    divergence: float | None = None
    ref_dot: float | None = None


def pilot_blend(
    ts: np.ndarray,
    lam: np.ndarray,
    coeffs: torch.Tensor,
    pilot: PilotTerms,
    sure: SureCurve | None,
    mse: np.ndarray | None,
    ref_coeffs: torch.Tensor | None,
    sigma: float,
    n: int,
) -> tuple[np.ndarray, SureCurve | None, np.ndarray | None]:
    """Average twicing ``z(t)`` with a pilot: ``u(t) = a(t) p + (1 - a(t)) z(t)``, ``a`` in [0, 1].

    For each ``t``, ``a(t)`` minimises the Monte-Carlo SURE of ``u(t)`` (``sure`` given), else the
    MSE against the reference (``mse`` given; the oracle protocol).  Both are quadratic in ``a``:
    ``||y - u||^2 = ||y - z||^2 - 2 a (y - z)^T (p - z) + a^2 ||p - z||^2`` and, for a fixed ``a``,
    ``div u = a div p + (1 - a) div z``, so ``a = ((y - z)^T (p - z) - sigma^2 (div p - div z)) /
    ||p - z||^2``.  Every inner product is a spectral sum over the ``k`` coefficients of ``z(t)``.

    Parameters
    ----------
    ts, lam, coeffs
        Steps, normalised eigenvalues and ``Q^T y`` of the stage, as in :func:`mc_sure_curve`.
    pilot : PilotTerms
        The pilot's inner products (its ``divergence`` needed with ``sure``, ``ref_dot`` with ``mse``).
    sure : SureCurve or None
        The stage's own SURE curve.
    mse : numpy.ndarray or None
        The stage's own MSE curve against a reference (per value).
    ref_coeffs : torch.Tensor or None
        ``Q^T x`` for the reference, with ``mse``.
    sigma : float
        Noise standard deviation.
    n : int
        Number of values.

    Returns
    -------
    weights : numpy.ndarray
        ``a(t)`` over ``ts``.
    sure : SureCurve or None
        SURE of ``u(t)``.
    mse : numpy.ndarray or None
        MSE of ``u(t)`` against the reference.

    Raises
    ------
    ValueError
        With neither ``sure`` nor ``mse``: nothing to choose ``a`` by.
    """
    if sure is None and mse is None:
        raise ValueError("pilot_blend needs a SURE curve or an MSE curve to choose the weights by")
    f = twicing_factors(lam, ts)
    c2 = (coeffs**2).sum(1)
    zz = _spectral_sum(f**2, c2)
    pz = _spectral_sum(f, (coeffs * pilot.coeffs).sum(1))
    gap = np.maximum(pilot.norm2 - 2 * pz + zz, 1e-30)  # ||p - z||^2
    y_cross = pilot.y_dot - _spectral_sum(f, c2) - pz + zz  # (y - z)^T (p - z)
    x_cross = None
    if mse is not None:
        x_cross = pilot.ref_dot - _spectral_sum(f, (coeffs * ref_coeffs).sum(1)) - pz + zz  # (x - z)^T (p - z)
    a = x_cross if sure is None else y_cross - sigma**2 * (pilot.divergence - sure.divergence)
    a = np.clip(a / gap, 0.0, 1.0)
    mse_u = None if mse is None else mse - (2 * a * x_cross - a**2 * gap) / n
    if sure is None:
        return a, None, mse_u
    residual = sure.residual - (2 * a * y_cross - a**2 * gap) / n
    div = a * pilot.divergence + (1 - a) * sure.divergence
    sure_u = SureCurve(t=ts, sure=residual - sigma**2 + 2 * sigma**2 * div / n, residual=residual, divergence=div)
    return a, sure_u, mse_u


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def estimate_noise_sigma(image: np.ndarray, channel_axis: int | None = None) -> float:
    """Gaussian noise level of an image (wavelet MAD, :func:`skimage.restoration.estimate_sigma`)."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(np.asarray(image, dtype=np.float64), channel_axis=channel_axis, average_sigmas=True))
