"""Shared fixtures: small deterministic test images and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def smooth_image(shape=(24, 24), channels: int | None = None, seed: int = 0) -> np.ndarray:
    """Piecewise-smooth test image in [0, 1]: a gradient, a disc and a bar."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    img = 0.2 + 0.4 * xx + 0.3 * ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.08) + 0.2 * (np.abs(yy - 0.7) < 0.08)
    if channels is None:
        return img
    tint = np.linspace(0.8, 1.2, channels)
    return np.clip(img[..., None] * tint, 0, 1)


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared test data not found at {DATA} (the ../shared/data folder beside the repository)")
    return DATA
