"""Eigenimage Inspector widget: the low-rank NTK filter of a layer, its eigenimages and weights.

Computes (or reuses, see :mod:`._filters`) the filter of the shown plane of an image layer with
:func:`napari_ntk_denoise.iter_filter` in a worker thread, then shows the leading eigenimages as
one stacked layer, the eigenvalue decay on a log scale, and, for each pixel the user clicks, that
pixel's row of the filter as a layer (the paper's Fig. 2b).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, SpinBox
from napari.layers import Image, Points

from napari_ntk_denoise import LowRankFilter, iter_filter

from ._base import DockWidget
from ._controls import FilterControls
from ._dock import Section
from ._filters import filters
from ._layers import ImageSource, InputError, iter_planes, put_layer, source_from_layer
from ._plots import CurvePlot

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["EigenimageInspectorWidget"]


def _filter_plane(source: ImageSource, index: tuple[int, ...], params: dict[str, Any]) -> Any:
    """Generator of plane events computing the filter of one plane with :func:`iter_filter`."""
    return iter_planes(
        source, lambda plane, _: iter_filter(plane, channel_axis=source.channel_axis, **params), [index]
    )


class EigenimageInspectorWidget(DockWidget):
    """Inspect the NTK filter of an image: eigenimages, eigenvalue decay, per-pixel weights.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from, add results to and listen to clicks in.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "Compute filter", "Compute the NTK filter of the plane on screen (reused when "
                         "already computed with the same settings, e.g. by the NTK Filter widget).")
        self._filter_controls = FilterControls()
        self._input = ComboBox(
            label="kernel of", choices=(("the noisy image", "image"), ("random noise (DIP input)", "noise")),
            value="image", tooltip="The filter of a network fed the noisy image, or random noise (the deep "
            "image prior's input, whose filter does not depend on the image).")
        self._n_show = SpinBox(label="eigenimages shown", value=16, min=1, max=1024,
                               tooltip="Leading eigenimages shown as a stack, from the largest eigenvalue.")
        self._info = Label(value="Compute the filter, then click a pixel to see its weights.",
                           tooltip="The filter shown, and how to see a pixel's weights.")
        self._info.native.setWordWrap(True)
        self._plot = CurvePlot("Eigenvalue decay", xlabel="index i", ylabel="λᵢ / λ₁", log_y=True)
        self._plot.setToolTip("Eigenvalues of the filter relative to the largest: fast decay, strong smoothing.")
        self._lay_out([
            Container(widgets=[self._image, self._input, self._n_show]),
            Section("Filter settings", self._filter_controls.widgets,
                    "The network whose filter is computed and how it is approximated."),
            Container(widgets=[self._buttons, self._progress, self._info], labels=False),
        ], [self._plot])
        self._filter: LowRankFilter | None = None
        self._source: ImageSource | None = None
        self._eigen_layer: Image | None = None
        self._weights_layer: Image | None = None
        self._pixel_layer: Points | None = None
        self._pixel: tuple[int, int] | None = None
        self._meta: dict[str, Any] = {}
        self._started = 0.0
        viewer.mouse_drag_callbacks.append(self._on_click)
        self.native.destroyed.connect(self._disconnect_clicks)

    def _disconnect_clicks(self, *_: object) -> None:
        """Stop listening to clicks once the widget is gone."""
        if self._on_click in self._viewer.mouse_drag_callbacks:
            self._viewer.mouse_drag_callbacks.remove(self._on_click)

    @property
    def filter(self) -> LowRankFilter | None:
        """The filter shown."""
        return self._filter

    def _read_params(self) -> dict[str, Any]:
        """:func:`iter_filter` keyword arguments from the controls."""
        return {**self._filter_controls.params(), "input": self._input.value}

    def run(self) -> GeneratorWorker | None:
        """Compute the filter of the shown plane, or reuse one computed with the same parameters.

        Returns
        -------
        GeneratorWorker or None
            The worker, or ``None`` when the filter was reused or the run refused.
        """
        if self._runner.refuse_if_running():
            return None
        try:
            source = source_from_layer(self._image.value, self._viewer)
        except InputError as exc:
            self._refuse(str(exc))
            return None
        index, params = source.current_index(self._viewer), self._read_params()
        cached = filters.get(source.layer, index, params)
        if cached is not None:
            self._show_filter(source, index, params, cached, seconds=None)
            return None
        self._started = time.perf_counter()
        return self._runner.start(
            _filter_plane, source, index, params,
            description=f"NTK filter of '{source.name}'", n_planes=1, on_event=lambda _: None,
            on_return=lambda res: self._on_filter(source, index, params, res[index]), watch=[source.layer],
        )

    def _on_filter(self, source: ImageSource, index: tuple[int, ...], params: dict[str, Any],
                   filt: LowRankFilter) -> None:
        """Keep the computed filter and show it."""
        filters.put(source.layer, index, params, filt)
        self._show_filter(source, index, params, filt, seconds=time.perf_counter() - self._started)

    def _show_filter(self, source: ImageSource, index: tuple[int, ...], params: dict[str, Any],
                     filt: LowRankFilter, seconds: float | None) -> None:
        """Show eigenimages and eigenvalue decay; refresh the weights of the last clicked pixel."""
        self._filter, self._source = filt, source
        self._meta = meta = {
            "params": dict(params), "plane": list(index), "rank": filt.rank, "n_anchors": int(len(filt.anchors)),
            "reused": seconds is None, "timings": {} if seconds is None else {"filter": seconds},
        }
        eigen = filt.eigenimages(self._n_show.value)
        limit = float(np.percentile(np.abs(eigen), 99.5)) or 1.0  # a few peaks would wash out the rest
        self._eigen_layer = put_layer(
            self._viewer, self._eigen_layer, eigen, source.plane_kwargs("eigenimages", meta, leading=1),
            colormap="bwr", contrast_limits=(-limit, limit),
        )
        lam = filt.eigenvalues / filt.eigenvalues[0]
        self._plot.clear()
        self._plot.set_curve("eigenvalues", np.arange(1, len(lam) + 1), lam)
        how = "reused from an earlier run" if seconds is None else f"computed in {seconds:.1f} s"
        self._info.value = (f"'{source.name}': {filt.rank} eigenimages from {len(filt.anchors)} sampled pixels "
                            f"({how}). Click a pixel to see its filter weights.")
        if seconds is None:
            self._progress.say("Reused the filter computed before with the same settings.")
        if self._pixel is not None:
            self.show_weights(self._pixel)

    def show_weights(self, pixel: tuple[int, int]) -> None:
        """Show the filter weights of ``pixel`` = ``(row, col)`` of the inspected plane.

        Parameters
        ----------
        pixel : tuple of int
            Pixel of the plane, inside it.
        """
        assert self._filter is not None and self._source is not None
        self._pixel = pixel
        weights = self._filter.weights(pixel)
        meta = {**self._meta, "pixel": list(pixel)}
        self._weights_layer = put_layer(
            self._viewer, self._weights_layer, weights, self._source.plane_kwargs("filter weights", meta),
            colormap="magma", contrast_limits=(0.0, float(weights.max()) or 1.0),
        )
        self._mark(pixel, self._source.plane_kwargs("clicked pixel", meta))

    def _mark(self, pixel: tuple[int, int], kwargs: dict[str, Any]) -> None:
        """A cross on the clicked pixel, in a points layer added once and moved afterwards."""
        point = np.array([pixel], dtype=float)
        layer = self._pixel_layer
        if layer is not None and layer in self._viewer.layers:
            layer.data, layer.metadata = point, kwargs["metadata"]
            return
        size = max(3.0, max(self._filter.shape) / 40) if self._filter is not None else 3.0
        self._pixel_layer = self._viewer.add_points(point, symbol="cross", size=size, face_color="#00e5ff",
                                                    border_width=0, **kwargs)

    def _on_click(self, viewer: napari.viewer.Viewer, event: Any) -> None:
        """Show the weights of the clicked pixel (clicks outside the plane are ignored)."""
        if self._filter is None or self._source is None or self._source.layer not in viewer.layers:
            return
        coords = np.asarray(self._source.layer.world_to_data(event.position))[-2:]
        row, col = (int(round(float(c))) for c in coords)
        h, w = self._filter.shape
        if 0 <= row < h and 0 <= col < w:
            self.show_weights((row, col))
