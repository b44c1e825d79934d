"""Image pickers that follow napari's layer selection until the user picks a layer by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image

if TYPE_CHECKING:
    import napari
    from magicgui.widgets.bases import CategoricalWidget

__all__ = ["SelectionFollower", "is_result", "preferred_image"]


def is_result(layer: object) -> bool:
    """Whether ``layer`` is a result of this plugin (its metadata names the source layer)."""
    return isinstance(layer, Image) and "source" in layer.metadata


def preferred_image(viewer: napari.viewer.Viewer) -> Image | None:
    """The image layer a picker should show: the selected one, else the topmost visible one.

    The plugin's own results are skipped, so that a new output layer (selected when added) does not
    become the next run's input.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layer list is read.

    Returns
    -------
    napari.layers.Image or None
        The layer, or ``None`` when a result is selected or no suitable image layer exists.
    """
    active = viewer.layers.selection.active
    if is_result(active):
        return None
    if isinstance(active, Image):
        return active
    visible = [layer for layer in viewer.layers
               if isinstance(layer, Image) and layer.visible and not is_result(layer)]
    return visible[-1] if visible else None


class SelectionFollower:
    """Keep a layer picker on :func:`preferred_image` until the user picks a layer by hand.

    Parameters
    ----------
    picker : magicgui.widgets.bases.CategoricalWidget
        The image picker (a combo box over the viewer's image layers).
    viewer : napari.viewer.Viewer
        The viewer whose selection is followed.
    """

    def __init__(self, picker: CategoricalWidget, viewer: napari.viewer.Viewer) -> None:
        self._picker = picker
        self._viewer = viewer
        self.manual = False
        picker.native.activated.connect(self._on_user_pick)
        viewer.layers.selection.events.active.connect(self.follow)

    def follow(self, *args: Any) -> None:
        """Show the preferred layer, unless the user has picked one by hand."""
        if self.manual:
            return
        layer = preferred_image(self._viewer)
        if layer is not None and layer in self._picker.choices:
            self._picker.value = layer

    def _on_user_pick(self, *args: Any) -> None:
        """The user chose a layer in the combo box: stop following."""
        self.manual = True
