"""Poisson-Gaussian noise: the generalized Anscombe transform and its exact unbiased inverse
(parameters: :mod:`~napari_ntk_denoise.microscopy.noise_estimation`).

Microscopy images follow ``z = alpha * p + n`` with ``p ~ Poisson(x / alpha)`` photo-electrons,
gain ``alpha`` and Gaussian read noise ``n ~ N(mu, sigma^2)``.  The generalized Anscombe transform
(GAT) makes the noise approximately Gaussian with unit variance where counts are high (less where
they are low: :func:`~napari_ntk_denoise.microscopy.noise_estimation.stabilised_sigma`), so the Gaussian NTK
denoiser runs on the transformed image; the exact unbiased inverse maps the denoised values back
without the bias of the algebraic inverse at low counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PoissonGaussian", "gat_forward", "gat_inverse"]


@dataclass(frozen=True)
class PoissonGaussian:
    """Parameters of Poisson-Gaussian noise ``z = gain * Poisson(x / gain) + N(offset, read_noise^2)``.

    Attributes
    ----------
    gain : float
        ``alpha > 0``, data units per photo-electron.
    read_noise : float
        ``sigma >= 0``, standard deviation of the Gaussian part (data units).
    offset : float
        ``mu``, mean of the Gaussian part (camera offset, data units).
    """

    gain: float
    read_noise: float
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.gain) or self.gain <= 0:
            raise ValueError(f"gain must be a finite positive number, got {self.gain}")
        if not np.isfinite(self.read_noise) or self.read_noise < 0:
            raise ValueError(f"read_noise must be a finite non-negative number, got {self.read_noise}")
        if not np.isfinite(self.offset):
            raise ValueError(f"offset must be finite, got {self.offset}")

    def describe(self) -> str:
        """``gain = ..., read noise = ..., offset = ...`` for a user."""
        return f"gain = {self.gain:.4g}, read noise = {self.read_noise:.4g}, offset = {self.offset:.4g}"

    def variance(self, mean: np.ndarray | float) -> np.ndarray | float:
        """Noise variance at a given mean value: ``gain * (mean - offset) + read_noise^2``."""
        return self.gain * (np.asarray(mean) - self.offset) + self.read_noise**2


def gat_forward(image: np.ndarray, noise: PoissonGaussian) -> np.ndarray:
    """Generalized Anscombe transform; the result has approximately unit noise variance.

    Parameters
    ----------
    image : numpy.ndarray
        Data in camera units; never modified.
    noise : PoissonGaussian
        Noise parameters.

    Returns
    -------
    numpy.ndarray
        ``2 sqrt(max(z' + 3/8 + s^2, 0))`` with ``z' = (z - mu) / alpha`` and ``s = sigma / alpha``
        (float64 for float64 input, float32 otherwise).

    References
    ----------
    F. Murtagh, J.-L. Starck, A. Bijaoui, "Image restoration with noise suppression using a
    multiresolution support", A&AS 112, 1995.  M. Makitalo, A. Foi, "Optimal inversion of the
    generalized Anscombe transformation for Poisson-Gaussian noise", IEEE TIP 22(1), 91-103, 2013,
    doi:10.1109/TIP.2012.2202675.
    """
    z = np.asarray(image)
    dtype = np.float64 if z.dtype == np.float64 else np.float32
    s = noise.read_noise / noise.gain
    arg = (z.astype(np.float64) - noise.offset) / noise.gain + 0.375 + s * s
    return (2.0 * np.sqrt(np.maximum(arg, 0.0))).astype(dtype)


def gat_inverse(stabilised: np.ndarray, noise: PoissonGaussian) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of :func:`gat_forward`.

    Parameters
    ----------
    stabilised : numpy.ndarray
        Denoised values ``D`` in the transformed domain (estimates of ``E[f(z)]``).
    noise : PoissonGaussian
        Parameters used by the forward transform.

    Returns
    -------
    numpy.ndarray
        Estimates of the mean ``E[z]`` in camera units.

    Notes
    -----
    Makitalo & Foi (2013), eq. 20:
    ``I(D) = D^2/4 + sqrt(3/2)/4 D^-1 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8 - s^2``, clipped at 0,
    then scaled back by ``alpha`` and shifted by ``mu``.  Unlike the algebraic inverse
    ``D^2/4 - 3/8 - s^2`` it is (nearly) unbiased at low photon counts.

    References
    ----------
    M. Makitalo, A. Foi, IEEE TIP 22(1), 91-103, 2013, doi:10.1109/TIP.2012.2202675.
    """
    d = np.asarray(stabilised)
    dtype = np.float64 if d.dtype == np.float64 else np.float32
    d = np.maximum(d.astype(np.float64), 1e-3)  # the series diverges at 0; values there map to 0 anyway
    s = noise.read_noise / noise.gain
    r = np.sqrt(1.5)
    inv = d**2 / 4 + r / 4 / d - 11 / 8 / d**2 + 5 / 8 * r / d**3 - 1 / 8 - s * s
    return (np.maximum(inv, 0.0) * noise.gain + noise.offset).astype(dtype)
