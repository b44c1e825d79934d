"""Choosing the number of twicing steps: Monte-Carlo SURE and the oracle (paper section 6).

All curves are evaluated in coefficient space: with ``c = Q^T y`` and factors ``f(t)``,
``||y - z(t)||^2 = ||y||^2 - ||c||^2 + sum_i (1 - f_i)^2 c_i^2``, so a grid of hundreds of ``t``
costs ``O(k)`` each and no image is formed.

Plain SURE with divergence ``sum_i f_i(t)`` fails because the filter itself depends on ``y``;
Monte-Carlo SURE (Ramani, Blu & Unser 2008, doi:10.1109/TIP.2008.2001404) runs the whole pipeline
once more on ``y + eps b`` (``b ~ N(0, I)``, same anchors) and uses
``div(t) ~ b^T (z_eps(t) - z(t)) / eps``.

Data clipped to a range (8-bit images, saturated detectors) carry less noise near its bounds:
with ``sigma_i`` the standard deviation of ``clip(mu_i + sigma n)``, SURE becomes
``||y - z||^2 - sum_i sigma_i^2 + 2 sum_i sigma_i^2 dz_i/dy_i``, whose divergence term the same
Monte-Carlo pass estimates with the probe weighted by ``sigma_i / sigma``
(:func:`clip_bounds`, :func:`clipped_noise_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .twicing import twicing_factors

__all__ = [
    "BestSoFar", "DoubtfulStopWarning", "FixedStep", "ORACLE", "PilotTerms", "SURE", "StoppingRule", "SureCurve",
    "clip_bounds", "clipped_noise_scale", "estimate_noise_sigma", "mc_sure_curve", "mse_curve", "pilot_blend", "psnr",
    "stop_doubts", "sure_estimate", "t_grid",
]

#: a bound counts as a clipping level when at least this fraction of the values sits exactly on it
CLIP_FRACTION = 1e-3
#: side of the box (pixels, Y and X) whose mean stands for the clean value in :func:`clipped_noise_scale`
CLIP_MEAN_SIZE = 7


def t_grid(t_max: float = 1e6, n: int = 400) -> np.ndarray:
    """Integer, roughly log-spaced twicing steps from 1 to ``t_max`` (unique, ascending)."""
    return np.unique(np.round(np.geomspace(1, t_max, n))).astype(np.int64)


@dataclass(frozen=True)
class StoppingRule:
    """Keep the output that minimises one figure of a run; ties keep the earlier output.

    The NTK filter applies a rule to whole curves over its step grid (:meth:`choose`), the DIP
    trainer to the figures of each recorded iteration as they come (:class:`BestSoFar`).

    Attributes
    ----------
    name : str
        The rule's name in options and results.
    figure : str
        Key of the figure it minimises (``"sure"``, ``"mse"``, ``"psnr"``, ...).
    sign : float
        1 to minimise the figure, -1 to maximise it.
    """

    name: str
    figure: str
    sign: float = 1.0

    def score(self, figures: Mapping[str, float | None]) -> float | None:
        """The value this rule minimises, or None when the figure is missing."""
        value = figures.get(self.figure)
        return None if value is None else self.sign * value

    def choose(self, steps: np.ndarray, values: np.ndarray) -> int:
        """The step of a whole curve that this rule keeps: that of the first minimum."""
        return int(steps[int(np.argmin(self.sign * np.asarray(values)))])


@dataclass(frozen=True)
class FixedStep:
    """Keep the output at a given step, whatever the figures."""

    step: int
    name: str = "fixed"

    def choose(self, steps: np.ndarray, values: np.ndarray | None) -> int:
        """The fixed step."""
        return int(self.step)


#: the NTK filter's automatic stop: the least Monte-Carlo SURE
SURE = StoppingRule("sure", "sure")
#: the paper's oracle protocol: the least mean squared error against the clean image
ORACLE = StoppingRule("oracle", "mse")


class BestSoFar:
    """The best output of a stream of recorded steps under a :class:`StoppingRule`.

    Only a strictly better score replaces the best, so ties keep the earlier step; the first
    step offered is always kept.
    """

    def __init__(self, rule: StoppingRule) -> None:
        self.rule = rule
        self.value = math.inf
        self.step: int | None = None

    def offer(self, step: int, figures: Mapping[str, float | None]) -> bool:
        """Take the figures of ``step``; True when it becomes the best."""
        value = self.rule.score(figures)
        if self.step is not None and not (value is not None and value < self.value):
            return False
        self.value, self.step = (math.inf if value is None else value), step
        return True


def sure_estimate(residual2: np.ndarray | float, divergence: np.ndarray | float, n: int, sigma: float,
                  noise_var: float | None = None) -> np.ndarray | float:
    """Monte-Carlo SURE of the mean squared error per value (Ramani, Blu & Unser 2008).

    ``(||y - z||^2 - n v + 2 sigma^2 div) / n``, with ``v`` the mean noise variance per value
    (``sigma^2`` unless given, see :func:`clipped_noise_scale`) and ``div`` the estimated
    divergence of ``y -> z``.
    """
    return (residual2 - n * (sigma**2 if noise_var is None else noise_var) + 2 * sigma**2 * divergence) / n


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
        return SURE.choose(self.t, self.sure)


#: SURE below minus this fraction of the noise variance counts as negative (beyond Monte-Carlo error)
SURE_NEGATIVE = 0.05


class DoubtfulStopWarning(UserWarning):
    """SURE's stop may be wrong: its curve goes negative or is smallest at an end of the step grid."""


def stop_doubts(curve: SureCurve, noise_var: float) -> list[str]:
    """Why the step chosen on a SURE curve is doubtful (an empty list when it holds).

    Parameters
    ----------
    curve : SureCurve
        The curve SURE chose its step on.
    noise_var : float
        The noise variance per value that SURE was given.

    Returns
    -------
    list of str
        A negative minimum (an estimate of a mean squared error cannot be: the noise level is
        over-estimated and the stop smooths too much), or a minimum at the first step or at the
        last while still falling there (a curve flat at its end holds).
    """
    doubts = []
    low = float(curve.sure.min())
    if low < -SURE_NEGATIVE * noise_var:
        doubts.append(f"SURE goes negative ({low / noise_var:.2f} of the noise variance): the noise level is "
                      "over-estimated, so the stop smooths too much")
    best = int(np.argmin(curve.sure))
    if best == 0:
        doubts.append(f"SURE is smallest at the first step t = {int(curve.t[0])}, the heaviest smoothing: "
                      "the noise level may be over-estimated")
    elif best == len(curve.t) - 1 and curve.sure[-len(curve.t) // 10] - low > SURE_NEGATIVE * noise_var:
        doubts.append(f"SURE is smallest at the last step t = {int(curve.t[-1])}, almost no smoothing: "
                      "the noise level may be under-estimated")
    return doubts


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
    noise_var: float | None = None,
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
    noise_var : float, optional
        Mean noise variance per value (default ``sigma^2``); for clipped data the mean of
        ``sigma_i^2``, the probe ``b`` then weighted by ``sigma_i / sigma``.

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
    return SureCurve(t=ts, sure=sure_estimate(residual, div, n, sigma, noise_var), residual=residual / n,
                     divergence=div)


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
    sure_u = SureCurve(t=ts, sure=sure.sure + residual - sure.residual + 2 * sigma**2 * (div - sure.divergence) / n,
                       residual=residual, divergence=div)
    return a, sure_u, mse_u


def clip_bounds(image: np.ndarray, fraction: float = CLIP_FRACTION) -> tuple[float | None, float | None]:
    """Levels at which noisy data were clipped: the minimum and the maximum, each where at least
    ``fraction`` of the values sit exactly on it (noise leaves ties at an extreme improbable
    otherwise).

    Parameters
    ----------
    image : numpy.ndarray
        Noisy data, any shape.
    fraction : float
        Share of the values that must sit on an extreme for it to count as a clipping level.

    Returns
    -------
    low, high : float or None
        The clipping levels, ``None`` where the data were not clipped (both for a constant image).
    """
    need = max(2.0, fraction * image.size)
    lo, hi = image.min(), image.max()
    if lo == hi:
        return None, None
    low = float(lo) if np.count_nonzero(image == lo) >= need else None
    high = float(hi) if np.count_nonzero(image == hi) >= need else None
    return low, high


def clipped_noise_scale(
    image: torch.Tensor, sigma: float, low: float | None, high: float | None, size: int = CLIP_MEAN_SIZE
) -> torch.Tensor:
    """``sigma_i / sigma``: the standard deviation of ``clip(mu_i + sigma n, low, high)``
    (``n ~ N(0, 1)``) relative to ``sigma``, with ``mu_i`` the mean of the clipped data over a
    ``size x size`` box (per channel and plane).

    Parameters
    ----------
    image : torch.Tensor
        Noisy clipped data ``(C, ..., H, W)``.
    sigma : float
        Noise standard deviation before clipping (``> 0``).
    low, high : float or None
        Clipping levels (``None``: unbounded on that side).
    size : int
        Odd side of the box.

    Returns
    -------
    torch.Tensor
        Same shape as ``image``, float32, in ``(0, 1]``.

    Notes
    -----
    With ``a = (low - mu) / sigma`` and ``b = (high - mu) / sigma`` the censored normal's moments
    about ``mu`` are ``E[Y - mu] = sigma (phi(a) - phi(b)) + (low - mu) Phi(a) + (high - mu) (1 - Phi(b))``
    and ``E[(Y - mu)^2] = sigma^2 (Phi(b) - Phi(a) + a phi(a) - b phi(b)) + (low - mu)^2 Phi(a) +
    (high - mu)^2 (1 - Phi(b))``.  The box mean of clipped data lies inside the range, a little
    away from a bound it meets (at a clean value on the bound, ``0.4 sigma``), so ``sigma_i`` is
    slightly overestimated there.
    """
    planes = image.reshape(-1, *image.shape[-2:]).float()  # moments about mu: no cancellation
    mu = F.avg_pool2d(planes, size, stride=1, padding=size // 2, count_include_pad=False).reshape(image.shape)
    inner = torch.ones_like(mu)
    m1, m2 = torch.zeros_like(mu), torch.zeros_like(mu)
    for level, sign in ((low, 1.0), (high, -1.0)):
        if level is None:
            continue
        dist = level - mu
        z = dist / sigma
        outside = torch.special.ndtr(sign * z)  # mass beyond the bound, there clipped to it
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        inner -= outside
        m1 += sign * sigma * pdf + dist * outside
        m2 += sign * sigma**2 * z * pdf + dist**2 * outside
    var = sigma**2 * inner + m2 - m1**2
    return (var.clamp_min(0).sqrt() / sigma).clamp(1e-3, 1)


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def estimate_noise_sigma(image: np.ndarray, channel_axis: int | None = None) -> float:
    """Gaussian noise level of an image (wavelet MAD, :func:`skimage.restoration.estimate_sigma`)."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(np.asarray(image, dtype=np.float64), channel_axis=channel_axis, average_sigmas=True))
