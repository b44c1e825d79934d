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
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox, create_widget
from napari.layers import Image
from napari.utils.notifications import show_error

from napari_ntk_denoise import LowRankFilter, iter_filter

from ._filters import filters
from ._layers import ImageSource, InputError, iter_planes, put_layer, source_from_layer
from ._picker import SelectionFollower
from ._plots import CurvePlot
from ._runner import StreamRunner, device_choices

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["EigenimageInspectorWidget"]


def _filter_plane(source: ImageSource, index: tuple[int, ...], params: dict[str, Any]) -> Any:
    """Generator of plane events computing the filter of one plane with :func:`iter_filter`."""
    return iter_planes(
        source, lambda plane, _: iter_filter(plane, channel_axis=source.channel_axis, **params), [index]
    )


class EigenimageInspectorWidget(Container):
    """Inspect the NTK filter of an image: eigenimages, eigenvalue decay, per-pixel weights.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from, add results to and listen to clicks in.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._image = create_widget(annotation=Image, label="image")
        self._depth = SpinBox(label="depth", value=2, min=2, max=8)
        self._kernel_size = SpinBox(label="kernel size", value=11, min=1, max=31, step=2)
        self._kernel = ComboBox(label="kernel type", choices=("ntk", "nngp"), value="ntk")
        self._input = ComboBox(label="input", choices=("image", "noise"), value="image",
                               tooltip="Kernel of the noisy image, or of i.i.d. noise (the DIP's input).")
        self._fraction = FloatSpinBox(label="anchor fraction", value=0.02, min=0.001, max=1.0, step=0.005)
        self._rank = SpinBox(label="rank", value=256, min=1, max=8192)
        self._n_show = SpinBox(label="eigenimages shown", value=16, min=1, max=1024)
        self._device = ComboBox(label="device", choices=device_choices())
        self._run = PushButton(text="Compute filter")
        self._stop = PushButton(text="Stop")
        self._info = Label(value="Compute the filter, then click a pixel to see its weights.")
        self._plot = CurvePlot("Eigenvalue decay", xlabel="index i", ylabel="λᵢ / λ₁", log_y=True)
        self.extend([
            self._image, self._depth, self._kernel_size, self._kernel, self._input, self._fraction,
            self._rank, self._n_show, self._device,
            Container(widgets=[self._run, self._stop], layout="horizontal", labels=False), self._info,
        ])
        self.native.layout().addWidget(self._plot)
        self._runner = StreamRunner(viewer, self.native, self._run, self._stop)
        self._filter: LowRankFilter | None = None
        self._source: ImageSource | None = None
        self._eigen_layer: Image | None = None
        self._weights_layer: Image | None = None
        self._pixel: tuple[int, int] | None = None
        self._meta: dict[str, Any] = {}
        self._started = 0.0
        self._run.changed.connect(self.run)
        viewer.mouse_drag_callbacks.append(self._on_click)
        self.native.destroyed.connect(self._disconnect_clicks)
        self._follower = SelectionFollower(self._image, viewer)

    def reset_choices(self, *args: Any) -> None:
        """Refresh the layer lists (napari calls this), then show the selected image layer."""
        super().reset_choices(*args)
        self._follower.follow()

    @property
    def worker(self) -> GeneratorWorker | None:
        """The running worker, if any."""
        return self._runner.worker

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
        device = self._device.value
        return {
            "depth": self._depth.value, "kernel_size": self._kernel_size.value, "kernel": self._kernel.value,
            "input": self._input.value, "fraction": self._fraction.value, "rank": self._rank.value,
            "device": None if device == "auto" else device, "seed": 0,
        }

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
            show_error(str(exc))
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
        how = "reused" if seconds is None else f"computed in {seconds:.1f} s"
        self._info.value = (f"'{source.name}': rank {filt.rank}, {len(filt.anchors)} anchors ({how}).\n"
                            "Click a pixel to see its filter weights.")
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

    def _on_click(self, viewer: napari.viewer.Viewer, event: Any) -> None:
        """Show the weights of the clicked pixel (clicks outside the plane are ignored)."""
        if self._filter is None or self._source is None or self._source.layer not in viewer.layers:
            return
        coords = np.asarray(self._source.layer.world_to_data(event.position))[-2:]
        row, col = (int(round(float(c))) for c in coords)
        h, w = self._filter.shape
        if 0 <= row < h and 0 <= col < w:
            self.show_weights((row, col))
