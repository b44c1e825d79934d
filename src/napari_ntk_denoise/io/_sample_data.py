"""Sample data of the napari plugin: the engine's noisy sample images, as layers.

Each sample opens two layers, the noisy image to denoise and its clean original (hidden), so that
the widgets can plot PSNR against a reference layer.  The images and the noise protocol are those
of :mod:`napari_ntk_denoise.io.samples`.  Nothing here needs Qt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .samples import SIGMA, noisy_sample

__all__ = ["noisy_astronaut", "noisy_camera", "noisy_fluorescence"]

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def _layers(name: str, rgb: bool) -> list[LayerDataTuple]:
    """Layer data of a sample: the hidden clean reference, then the noisy image (added last, so selected)."""
    noisy, clean = noisy_sample(name)
    common = {"rgb": rgb, "contrast_limits": (0.0, 1.0)}
    noise = {"model": "gaussian", "sigma": SIGMA, "seed": 0}
    return [
        (clean.astype(np.float32), {"name": f"{name} (clean)", "visible": False, **common}, "image"),
        (noisy, {"name": f"{name} (noisy)", "metadata": {"noise": noise}, **common}, "image"),
    ]


def noisy_astronaut() -> list[LayerDataTuple]:
    """Astronaut (512 x 512 RGB) with Gaussian noise of standard deviation 25/255, and its original."""
    return _layers("astronaut", rgb=True)


def noisy_camera() -> list[LayerDataTuple]:
    """Cameraman (512 x 512 gray) with Gaussian noise of standard deviation 25/255, and its original."""
    return _layers("camera", rgb=False)


def noisy_fluorescence() -> list[LayerDataTuple]:
    """Synthetic fluorescence image (256 x 256) with Gaussian noise of 25/255, and its original."""
    return _layers("fluorescence", rgb=False)
