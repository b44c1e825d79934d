"""Fixtures of the widget tests: a viewer, plugin widgets opened from the manifest, tiny images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from skimage import data, img_as_float32, transform

PLUGIN = "napari-ntk-denoise"
SIGMA = 25 / 255


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs a Qt display."""
    for item in items:
        if "_widgets" in str(item.fspath):
            item.add_marker(pytest.mark.gui)


@pytest.fixture
def viewer(make_napari_viewer: Callable[..., Any]) -> Any:
    """A napari viewer, closed after the test."""
    return make_napari_viewer()


@pytest.fixture
def open_widget(viewer: Any) -> Callable[[str], Any]:
    """Open a widget of the plugin through the npe2 manifest, as the Plugins menu does."""

    def _open(name: str) -> Any:
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        return widget

    return _open


@pytest.fixture
def camera_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 32 x 32 cameraman (clean, noisy with sigma = 25/255): small enough for a 2-core machine."""
    clean = transform.resize(img_as_float32(data.camera()), (32, 32), anti_aliasing=True).astype(np.float32)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, SIGMA, clean.shape), 0, 1).astype(np.float32)
    return clean, noisy


@pytest.fixture
def small() -> Callable[[Any], Any]:
    """Set kernel settings that keep a run of a 32 x 32 image to about a second; returns the widget."""

    def _small(widget: Any) -> Any:
        widget._kernel_size.value = 3
        widget._fraction.value = 0.1
        widget._rank.value = 32
        return widget

    return _small
