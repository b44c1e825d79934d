"""Image pickers: the selected (else topmost visible) image layer, following the selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from napari_ntk_denoise.io._sample_data import noisy_fluorescence

WIDGETS = ["NTK Filter", "DIP Training", "Eigenimage Inspector"]


def _open_sample(viewer: Any) -> list[Any]:
    """Add the layers of the fluorescence sample, as File > Open Sample does."""
    return [viewer.add_image(data, **kwargs) for data, kwargs, _ in noisy_fluorescence()]


def _pick_by_hand(picker: Any, layer: Any) -> None:
    """Choose ``layer`` in the combo box as a user does (the box's ``activated`` signal)."""
    index = picker.native.findText(layer.name)
    picker.native.setCurrentIndex(index)
    picker.native.activated.emit(index)


@pytest.mark.parametrize("name", WIDGETS)
@pytest.mark.parametrize("sample_first", [True, False])
def test_picker_shows_noisy_layer_and_follows_selection(
    viewer: Any, open_widget: Any, name: str, sample_first: bool
) -> None:
    """After a sample the picker shows the noisy layer, follows the selection, then the user's pick."""
    widget = None if sample_first else open_widget(name)
    clean, noisy = _open_sample(viewer)
    widget = widget or open_widget(name)
    assert widget._image.value is noisy
    extra = viewer.add_image(np.zeros((16, 16), np.float32), name="extra")
    assert widget._image.value is extra
    viewer.layers.selection.active = clean
    assert widget._image.value is clean
    _pick_by_hand(widget._image, noisy)
    viewer.layers.selection.active = extra
    assert widget._image.value is noisy


def test_picker_takes_topmost_visible_without_selection(viewer: Any, open_widget: Any) -> None:
    """With no image layer selected the picker shows the topmost visible image layer."""
    _clean, noisy = _open_sample(viewer)
    viewer.add_image(np.zeros((16, 16), np.float32), name="hidden", visible=False)
    viewer.layers.selection.clear()
    widget = open_widget("NTK Filter")
    assert widget._image.value is noisy


def test_picker_ignores_the_plugins_results(viewer: Any, open_widget: Any) -> None:
    """Selecting (or adding) a result layer of the plugin leaves the picker on its input."""
    _clean, noisy = _open_sample(viewer)
    widget = open_widget("NTK Filter")
    viewer.add_image(np.zeros_like(noisy.data), name="out", metadata={"source": noisy.name})
    assert widget._image.value is noisy
