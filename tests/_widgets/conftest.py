"""Fixtures of the widget tests: a viewer, plugin widgets opened from the manifest, tiny images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from skimage import data, img_as_float32, transform

PLUGIN = "napari-ntk-denoise"
SIGMA = 25 / 255


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs a Qt display."""
    for item in items:
        if "_widgets" in str(item.fspath):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """One intra-op thread: the worker's OpenMP threads then do not spin against the GUI thread.

    On the 2-core machines that run these tests, oversubscribed spinning made a 40-iteration DIP run
    take 20 s instead of 1 s.
    """
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def viewer(make_napari_viewer: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A napari viewer, closed after the test, which fails if a worker raised an exception.

    napari relays a worker's exception to ``notification_manager.receive_error`` (an error
    notification for the user); the widgets' messages about unusable input are not errors.
    """
    errors: list[BaseException] = []
    receive = notification_manager.receive_error

    def record(exctype: type[BaseException], value: BaseException, *args: Any) -> None:
        errors.append(value)
        receive(exctype, value, *args)

    monkeypatch.setattr(notification_manager, "receive_error", record)
    yield make_napari_viewer()
    assert not errors, errors


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
        widget._filter_controls.kernel_size.value = 3
        widget._filter_controls.fraction.value = 0.1
        widget._filter_controls.rank.value = 32
        if hasattr(widget, "_guided"):  # the one-stage filter, unless a test ticks the guided one
            widget._guided.value = False
        return widget

    return _small
