"""Sample data for the napari plugin: noisy test images with their clean references.

Each sample opens two layers, the noisy image to denoise and its clean reference (hidden), so that
the widgets can plot PSNR against a reference layer.  The photographs come from scikit-image's
bundled data (no download); the fluorescence image is synthesised.  Nothing here needs Qt.

The synthetic-noise protocol is the one of the paper and of the deep-image-prior code: the clean
image scaled to ``[0, 1]``, ``noisy = clip(clean + N(0, sigma^2), 0, 1)`` with ``sigma = 25/255``
and a fixed seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage import data, draw, filters, img_as_float32

__all__ = ["SIGMA", "noisy_astronaut", "noisy_camera", "noisy_fluorescence"]

SIGMA = 25 / 255
"""Standard deviation of the Gaussian noise of the photograph samples (images in ``[0, 1]``)."""

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def _gaussian_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Return ``clip(clean + N(0, sigma^2), 0, 1)`` as float32, with a fixed seed."""
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _pair(
    name: str, clean: np.ndarray, noisy: np.ndarray, noise: dict[str, Any], rgb: bool
) -> list[LayerDataTuple]:
    """Layer data for a hidden clean reference and the noisy image (added last, so selected)."""
    common = {"rgb": rgb, "contrast_limits": (0.0, 1.0)}
    return [
        (clean, {"name": f"{name} (clean)", "visible": False, **common}, "image"),
        (noisy, {"name": f"{name} (noisy)", "metadata": {"noise": noise}, **common}, "image"),
    ]


def noisy_astronaut() -> list[LayerDataTuple]:
    """Astronaut (512 x 512 RGB) with Gaussian noise of standard deviation 25/255.

    Returns
    -------
    list of tuple
        Layer data for the clean reference ``"astronaut (clean)"`` and ``"astronaut (noisy)"``.
    """
    clean = img_as_float32(data.astronaut())
    noise = {"model": "gaussian", "sigma": SIGMA, "seed": 0}
    return _pair("astronaut", clean, _gaussian_noise(clean, SIGMA, seed=0), noise, rgb=True)


def noisy_camera() -> list[LayerDataTuple]:
    """Cameraman (512 x 512 gray) with Gaussian noise of standard deviation 25/255.

    Returns
    -------
    list of tuple
        Layer data for the clean reference ``"camera (clean)"`` and ``"camera (noisy)"``.
    """
    clean = img_as_float32(data.camera())
    noise = {"model": "gaussian", "sigma": SIGMA, "seed": 0}
    return _pair("camera", clean, _gaussian_noise(clean, SIGMA, seed=0), noise, rgb=False)


def fluorescence_image(shape: tuple[int, int] = (256, 256), seed: int = 1) -> np.ndarray:
    """Synthetic clean fluorescence image: cells with bright nuclei, filaments and puncta.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``.
    seed : int
        Seed of the random layout.

    Returns
    -------
    np.ndarray
        Float32 image in ``[0, 1]``, smoothed by a Gaussian of 1.2 pixels (the optics).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    scale = min(h, w) / 256
    img = np.zeros(shape, np.float64)
    for _ in range(12):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(14, 30) * scale, rng.uniform(10, 20) * scale
        angle = rng.uniform(0, np.pi)
        rr, cc = draw.ellipse(cy, cx, ry, rx, shape=shape, rotation=angle)
        img[rr, cc] += 0.25
        rr, cc = draw.ellipse(cy, cx, 0.4 * ry, 0.45 * rx, shape=shape, rotation=angle)
        img[rr, cc] += 0.45
    for _ in range(20):
        pts = rng.integers(0, (h, w), size=(3, 2))
        rr, cc = draw.bezier_curve(*pts[0], *pts[1], *pts[2], weight=1.0, shape=shape)
        img[rr, cc] += 0.6
    spots = rng.integers(0, (h, w), size=(80, 2))
    img[spots[:, 0], spots[:, 1]] += rng.uniform(1.5, 3.0, len(spots))
    img = filters.gaussian(img, sigma=1.2 * scale)
    return (0.05 + 0.9 * img / img.max()).astype(np.float32)


def noisy_fluorescence() -> list[LayerDataTuple]:
    """Synthetic 256 x 256 fluorescence image with Poisson-Gaussian (shot and read) noise.

    The clean image (:func:`fluorescence_image`) is scaled to a peak of 30 photons, Poisson
    sampled, scaled back, and a Gaussian read noise of standard deviation 0.02 is added.

    Returns
    -------
    list of tuple
        Layer data for ``"fluorescence (clean)"`` and ``"fluorescence (noisy)"``.
    """
    peak, read = 30.0, 0.02
    clean = fluorescence_image()
    rng = np.random.default_rng(0)
    noisy = rng.poisson(clean * peak) / peak + rng.normal(0.0, read, clean.shape)
    noisy = np.clip(noisy, 0.0, 1.0).astype(np.float32)
    noise = {"model": "poisson-gaussian", "peak_photons": peak, "read_sigma": read, "seed": 0}
    return _pair("fluorescence", clean, noisy, noise, rgb=False)
