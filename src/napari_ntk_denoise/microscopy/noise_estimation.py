"""Poisson-Gaussian noise of real cameras: parameter fit, the stabilised noise level and its check.

The fit measures, in blocks, the local mean of the image and the variance of a Laplacian residual,
and fits ``var = gain * mean + c`` over intensity bins (Foi et al. 2008, without clipping model:
blocks that touch a clipping level are left out).  Only ``c = read_noise^2 - gain * offset``
enters the generalized Anscombe transform and its inverse, so ``c`` may have either sign: a dark
level above zero (camera offset, or a background left after subtraction) makes it negative.

After the transform the noise is not of unit variance where counts are low: its standard deviation
is computed here from the fitted model at every pixel's local mean (:func:`stabilised_sigma`), which
is what Monte-Carlo SURE must be given; :func:`noise_report` checks it against a measurement in the
stabilised domain and against spatially correlated noise, which neither the fit nor white-noise
SURE can handle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage, special

from ..engine.noise import blurred_noise
from .vst import PoissonGaussian, gat_forward, gat_inverse

__all__ = ["NoiseReport", "correlated_noise", "correlation_ratio", "estimate_poisson_gaussian",
           "measured_stabilised_sigma", "noise_report", "stabilised_sigma"]

#: share of a plane's pixels on its minimum or maximum from which that value counts as clipping
CLIP_SHARE = 0.005
#: box side of the local means that the stabilised noise level is modelled at
LOCAL_MEAN_SIZE = 7
#: the stabilised-domain check and the model may differ by this fraction before a warning
CHECK_TOLERANCE = 0.2
#: coarse-to-fine noise ratio above which the noise is reported as spatially correlated
CORRELATION_LIMIT = 1.5


def _laplacian_residual(plane: np.ndarray) -> np.ndarray:
    """High-pass residual with the noise variance of one pixel (for white noise)."""
    lap = np.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]) / np.sqrt(20.0)
    return ndimage.convolve(plane, lap, mode="reflect")


def _blocks(a: np.ndarray, block: int) -> np.ndarray:
    """``(n_blocks, block * block)`` view of the whole ``block x block`` blocks of a 2-D plane."""
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    return a[:h, :w].reshape(h // block, block, w // block, block).swapaxes(1, 2).reshape(-1, block * block)


def _clip_levels(plane: np.ndarray) -> list[float]:
    """The plane's minimum and maximum, each where at least :data:`CLIP_SHARE` of pixels sit on it."""
    return [v for v in (plane.min(), plane.max()) if np.count_nonzero(plane == v) >= CLIP_SHARE * plane.size]


def _block_statistics(plane: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means and residual variances of one plane, without blocks that touch a clipping level."""
    means = _blocks(plane, block).mean(axis=1)
    variances = _blocks(_laplacian_residual(plane), block).var(axis=1)
    clipped = np.zeros(means.shape, bool)
    for level in _clip_levels(plane):
        clipped |= _blocks(plane == level, block).any(axis=1)
    return means[~clipped], variances[~clipped]


def _fit_variance(mean: np.ndarray, var: np.ndarray, n_bins: int) -> tuple[float, float]:
    """``(gain, c)`` of ``var = gain * mean + c``: weighted least squares over the medians of
    intensity bins (quantiles of the block means), robust to the blocks that hold edges."""
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    bins = np.flatnonzero(counts >= 3)
    if len(bins) < 2:
        raise ValueError("too few intensity levels to estimate Poisson-Gaussian parameters")
    bm = np.array([np.median(mean[which == b]) for b in bins])
    bv = np.array([np.median(var[which == b]) for b in bins])
    gain, c = np.polyfit(bm, bv, 1, w=np.sqrt(counts[bins]))
    return float(gain), float(c)


def estimate_poisson_gaussian(
    image: np.ndarray, *, offset: float | None = None, block: int = 8, n_bins: int = 16
) -> PoissonGaussian:
    """Estimate gain, read noise and offset from a noisy image (a fit of variance against mean).

    Parameters
    ----------
    image : numpy.ndarray
        2-D plane or a stack whose last two axes are Y and X (each plane is analysed separately
        and the statistics pooled); never modified.
    offset : float, optional
        Known camera offset (dark level).  When omitted, the fit gives read noise and offset
        together: a negative intercept ``c`` becomes an offset ``-c / gain`` with no read noise, a
        positive one read noise ``sqrt(c)`` at offset 0 (the transform depends on ``c`` alone).
    block : int
        Side of the square blocks in which local mean and variance are measured.
    n_bins : int
        Number of intensity bins (quantiles of the block means).

    Returns
    -------
    PoissonGaussian

    Raises
    ------
    ValueError
        Too small, non-finite or constant images, or a fit with a non-positive gain (no
        signal-dependent noise: use the Gaussian model).

    Notes
    -----
    Blocks that touch a clipping level (a minimum or maximum that holds at least
    :data:`CLIP_SHARE` of a plane's pixels, as 8-bit files normalised per image do) are left out:
    clipping lowers the variance there.

    References
    ----------
    A. Foi, M. Trimeche, V. Katkovnik, K. Egiazarian, "Practical Poissonian-Gaussian noise modeling
    and fitting for single-image raw-data", IEEE TIP 17(10), 1737-1754, 2008,
    doi:10.1109/TIP.2008.2001399.
    """
    arr = np.asarray(image, dtype=np.float64)
    if int(block) != block or block < 3 or int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"block must be an integer >= 3 and n_bins an integer >= 2, got {block}, {n_bins}")
    if arr.ndim < 2 or min(arr.shape[-2:]) < 2 * block:
        raise ValueError(f"need planes of at least {2 * block}x{2 * block} pixels, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the image contains NaN or infinite values")
    if np.ptp(arr) == 0:
        raise ValueError("the image is constant; cannot estimate Poisson-Gaussian parameters")
    stats = [_block_statistics(plane, block) for plane in arr.reshape(-1, *arr.shape[-2:])]
    mean, var = (np.concatenate(s) for s in zip(*stats))
    if len(mean) < 2 or np.ptp(mean) == 0:
        raise ValueError("too few unclipped blocks to estimate Poisson-Gaussian parameters")
    gain, c = _fit_variance(mean, var, n_bins)
    if gain <= 0:
        raise ValueError(f"estimated gain {gain:.3g} is not positive: the noise looks signal-independent; "
                         "use the Gaussian noise model")
    if offset is None:
        offset = 0.0 if c >= 0 else -c / gain
    return PoissonGaussian(gain=gain, read_noise=float(np.sqrt(max(c + gain * offset, 0.0))), offset=float(offset))


@lru_cache(maxsize=64)
def _gat_variance_table(s2: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lam, var)``: the variance of ``2 sqrt(max(P + G + 3/8 + s2, 0))`` with ``P ~ Poisson(lam)``
    and ``G ~ N(0, s2)``, exact up to quadrature, on a grid of ``lam`` (it tends to 1 beyond)."""
    lam = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 96)])
    x, wq = special.roots_hermitenorm(24)
    wq = wq / wq.sum()
    var = np.empty_like(lam)
    for i, mu in enumerate(lam):
        k = np.arange(int(mu + 12 * np.sqrt(mu) + 20) + 1)
        pk = np.exp(special.xlogy(k, mu) - mu - special.gammaln(k + 1))
        f = 2 * np.sqrt(np.maximum(k[:, None] + np.sqrt(s2) * x + 0.375 + s2, 0.0))
        p = pk[:, None] * wq
        m1 = float((p * f).sum())
        var[i] = float((p * f * f).sum()) - m1 * m1
    return lam, var


def _spatial_sizes(ndim: int, channel_axis: int | None, size: int) -> list[int]:
    """Box sizes: ``size`` along the last two non-channel axes (Y, X), 1 along the others."""
    axes = [a for a in range(ndim) if channel_axis is None or a != channel_axis % ndim]
    return [size if a in axes[-2:] else 1 for a in range(ndim)]


def stabilised_sigma(stabilised: np.ndarray, noise: PoissonGaussian, channel_axis: int | None = None) -> float:
    """Standard deviation of the noise left after the generalized Anscombe transform (RMS over pixels).

    Parameters
    ----------
    stabilised : numpy.ndarray
        ``gat_forward(image, noise)``: a plane, a volume or a stack whose last two non-channel axes
        are Y and X.
    noise : PoissonGaussian
        The parameters the image was transformed with.
    channel_axis : int, optional
        Colour axis of ``stabilised``.

    Returns
    -------
    float
        ``sqrt(mean_i v(lam_i))``, with ``v(lam)`` the transformed noise's variance at ``lam``
        photo-electrons (below 1 at low counts) and ``lam_i`` the exact unbiased inverse of the
        transformed image's local mean over :data:`LOCAL_MEAN_SIZE` pixels along Y and X.
    """
    arr = np.asarray(stabilised, dtype=np.float64)
    local = ndimage.uniform_filter(arr, _spatial_sizes(arr.ndim, channel_axis, LOCAL_MEAN_SIZE), mode="reflect")
    lam = (gat_inverse(local, noise).astype(np.float64) - noise.offset) / noise.gain
    grid, var = _gat_variance_table(round((noise.read_noise / noise.gain) ** 2, 12))
    return float(np.sqrt(np.interp(lam, grid, var).mean()))


def _planes(arr: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Every Y-X plane of ``arr`` (channels apart) as ``(n, Y, X)``."""
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, 0)
    return arr.reshape(-1, *arr.shape[-2:])


def _median_residual_variance(plane: np.ndarray, block: int) -> float:
    return float(np.median(_blocks(_laplacian_residual(plane), block).var(axis=1)))


def measured_stabilised_sigma(planes: np.ndarray, block: int = 8) -> float:
    """The transformed noise's level measured in the transformed planes ``(n, Y, X)``: the RMS of the
    Laplacian residual over blocks, the tenth of blocks with the most structure capped."""
    var = np.concatenate([_blocks(_laplacian_residual(p), block).var(axis=1) for p in planes])
    return float(np.sqrt(np.minimum(var, np.quantile(var, 0.9)).mean()))


def correlation_ratio(planes: np.ndarray, block: int = 8) -> float:
    """Noise level after 2 x 2 binning relative to what white noise would leave (1 for white
    noise, more where neighbouring pixels' noise is correlated), median over the planes."""
    ratios = []
    for p in planes:
        h, w = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
        binned = p[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        fine = _median_residual_variance(p, block)
        ratios.append(np.sqrt(4 * _median_residual_variance(binned, block // 2) / fine) if fine > 0 else 1.0)
    return float(np.median(ratios))


@lru_cache(maxsize=1)
def _blur_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(blur, ratio, fine)``: for white noise blurred by Gaussians of std ``blur`` and scaled to unit
    variance, its :func:`correlation_ratio` and the variance the Laplacian residual sees of it."""
    blurs = np.concatenate([[0.0], np.geomspace(0.3, 4.0, 24)])
    white = np.random.default_rng(0).standard_normal((512, 512))
    ratio, fine = [], []
    for b in blurs:
        n = blurred_noise(white, b, mode="wrap")
        ratio.append(correlation_ratio(n[None]))
        fine.append(_median_residual_variance(n, 8))
    return blurs, np.maximum.accumulate(np.array(ratio)), np.array(fine)


def correlated_noise(ratio: float) -> tuple[float, float]:
    """``(blur, fine)``: the Gaussian blur of white noise with this :func:`correlation_ratio`, and the
    share of that noise's variance the Laplacian residual sees (1 for white noise)."""
    blurs, ratios, fine = _blur_table()
    blur = float(np.interp(ratio, ratios, blurs))
    return blur, float(np.interp(blur, blurs, fine))


@dataclass(frozen=True)
class NoiseReport:
    """Poisson-Gaussian parameters of an image with the noise level they leave after the transform.

    Attributes
    ----------
    noise : PoissonGaussian
        The parameters (given or estimated).
    estimated : bool
        Whether ``noise`` was estimated from the image.
    sigma : float
        Model noise level after the transform (:func:`stabilised_sigma`): what SURE is given.
    check : float
        The same level measured in the transformed image (:func:`measured_stabilised_sigma`).
    correlation : float
        :func:`correlation_ratio` of the transformed image.
    blur : float
        Spatially correlated noise (``correlation`` above :data:`CORRELATION_LIMIT`) is modelled as
        white noise blurred by a Gaussian of this std (pixels; 0: white), the parameters corrected
        for the part of it the fit does not see; pass it as ``noise_blur`` to the denoiser.
    warnings : tuple of str
        Where the model and the data disagree.
    """

    noise: PoissonGaussian
    estimated: bool
    sigma: float
    check: float
    correlation: float
    blur: float = 0.0
    warnings: tuple[str, ...] = field(default=())

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        meta = asdict(self)
        meta["warnings"] = list(self.warnings)
        return meta

    def summary(self) -> str:
        """One line for a user: the parameters, the transformed noise level and its check."""
        blur = f", correlated noise (blur {self.blur:.2f} pixels)" if self.blur else ""
        return (f"{self.noise.describe()}{blur}; noise after the transform {self.sigma:.3f} "
                f"(measured in it: {self.check:.3f})")


def _report_warnings(sigma: float, check: float, correlation: float, blur: float) -> tuple[str, ...]:
    out = []
    if blur == 0 and abs(check / sigma - 1) > CHECK_TOLERANCE:
        out.append(f"the noise level measured after the transform ({check:.3f}) differs from the model's "
                   f"({sigma:.3f}) by more than {CHECK_TOLERANCE:.0%}: the Poisson-Gaussian parameters may be wrong")
    if correlation > CORRELATION_LIMIT:
        how = (f"modelled as white noise blurred by {blur:.2f} pixels" if blur else
               "the given parameters assume white noise, so SURE will leave noise")
        out.append(f"the noise is spatially correlated ({correlation:.1f}x the level white noise would leave after "
                   f"2x2 binning): {how}")
    return tuple(out)


def noise_report(
    image: np.ndarray, noise: PoissonGaussian | None = None, *, offset: float | None = None,
    channel_axis: int | None = None,
) -> NoiseReport:
    """Estimate (unless given) the Poisson-Gaussian parameters of ``image`` and check them.

    Parameters
    ----------
    image : numpy.ndarray
        Noisy data in camera units (a plane, a volume or a stack, Y and X last apart from
        ``channel_axis``); never modified.
    noise : PoissonGaussian, optional
        Known parameters; estimated from all planes (:func:`estimate_poisson_gaussian`) when omitted.
    offset : float, optional
        Known dark level for the estimate.
    channel_axis : int, optional
        Colour axis (channels share the parameters).

    Returns
    -------
    NoiseReport
        With a warning where the transformed image's measured noise level differs from the model's
        by more than :data:`CHECK_TOLERANCE`, or where the noise is spatially correlated.
    """
    arr = np.asarray(image)
    planes = _planes(arr, channel_axis)
    estimated = noise is None
    if estimated:
        noise = estimate_poisson_gaussian(planes, offset=offset)
    stabilised = gat_forward(planes, noise).astype(np.float64)
    correlation, blur, fine = correlation_ratio(stabilised), 0.0, 1.0
    if correlation > CORRELATION_LIMIT and estimated:  # the fit saw only part of the correlated noise's variance
        blur, fine = correlated_noise(correlation)
        noise = PoissonGaussian(noise.gain / fine, noise.read_noise / np.sqrt(fine), noise.offset)
        stabilised = gat_forward(planes, noise).astype(np.float64)
    sigma = stabilised_sigma(stabilised, noise)
    check = measured_stabilised_sigma(stabilised) / np.sqrt(fine)
    return NoiseReport(noise, estimated, sigma, check, correlation, blur,
                       _report_warnings(sigma, check, correlation, blur))
