"""Correlated Gaussian noise: white noise blurred and rescaled, the noise model of ``noise_blur``."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["blurred_noise"]


def blurred_noise(white: np.ndarray, blur: float, sizes: Any = None, mode: str = "reflect") -> np.ndarray:
    """White noise blurred by a Gaussian of std ``blur`` (along ``sizes``' non-zero axes, all by
    default) and rescaled to the white noise's variance per value."""
    kernel = ndimage.gaussian_filter(np.pad([[1.0]], int(3 * blur) + 1), blur, mode="constant", truncate=3.0)
    sizes = blur if sizes is None else sizes
    return ndimage.gaussian_filter(white, sizes, mode=mode, truncate=3.0) / np.sqrt((kernel**2).sum())
