"""Built-in sample images (from scikit-image's bundled data or generated), clean and noisy.

Noise protocol (``shared/data/README.md``): clean image scaled to ``[0, 1]``,
``noisy = clip(clean + N(0, sigma^2), 0, 1)`` with ``sigma = 25/255`` and a fixed seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLES", "clean_sample", "add_noise", "noisy_sample"]

SIGMA = 25 / 255


def _fluorescence(size: int = 256, seed: int = 3) -> np.ndarray:
    """Synthetic fluorescence-like image: blurred blobs and filaments on a dim background."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(40):  # cells
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 14)
        img += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    for _ in range(25):  # filaments: random walks
        y, x = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(200):
            angle += rng.normal(0, 0.15)
            y, x = (y + np.sin(angle)) % size, (x + np.cos(angle)) % size
            img[int(y), int(x)] += 0.6
    img = ndimage.gaussian_filter(img, 1.2) + 0.05
    return np.clip(img / np.percentile(img, 99.8), 0, 1)


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut() / 255.0


def _camera() -> np.ndarray:
    from skimage import data

    return data.camera() / 255.0


SAMPLES = {"astronaut": _astronaut, "camera": _camera, "fluorescence": _fluorescence}


def clean_sample(name: str) -> np.ndarray:
    """Clean sample image in ``[0, 1]`` (float64): ``astronaut`` (RGB), ``camera``, ``fluorescence``."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose from {sorted(SAMPLES)}")
    return SAMPLES[name]()


def add_noise(clean: np.ndarray, sigma: float = SIGMA, seed: int = 0) -> np.ndarray:
    """``clip(clean + N(0, sigma^2), 0, 1)`` as float32, with a fixed seed."""
    rng = np.random.default_rng(seed)
    return np.clip(clean + sigma * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)


def noisy_sample(name: str, sigma: float = SIGMA, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy, clean)`` pair of a built-in sample."""
    clean = clean_sample(name)
    return add_noise(clean, sigma, seed), clean
