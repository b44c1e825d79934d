"""NTK Filter widget: closed-form NTK denoising of an image layer, streamed as it computes.

The widget turns the chosen layer into calls of :func:`napari_ntk_denoise.iter_denoise_ntk`, one
per plane, in a worker thread.  The output layer is added at the first twicing step and updated
in place; after the run, the ``t`` slider re-renders ``z(t)`` from the stored eigen-coefficients
(:meth:`NTKResult.render`) and the plot shows the SURE curve (and PSNR against a reference).
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, Slider, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info

from napari_ntk_denoise import NTKResult, TwicingStep, iter_denoise_ntk
from napari_ntk_denoise.stopping import estimate_noise_sigma

from ._base import ImageRunWidget
from ._filters import filters
from ._layers import ImageSource, InputError, PlaneEvent, iter_planes, source_from_layer
from ._plots import CurvePlot
from ._runner import device_choices

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["NTKFilterWidget"]


def _denoise_planes(
    sigma: float | None, params: dict[str, Any], source: ImageSource, reference: ImageSource | None
) -> Any:
    """Generator of :class:`PlaneEvent` running :func:`iter_denoise_ntk` on every plane."""

    def run_plane(plane: np.ndarray, index: tuple[int, ...]) -> Any:
        ref = None if reference is None else reference.plane(index)
        return iter_denoise_ntk(plane, sigma, channel_axis=source.channel_axis, reference=ref, **params)

    return iter_planes(source, run_plane)


class NTKFilterWidget(ImageRunWidget):
    """Denoise an image layer with the analytic NTK filter of a CNN (Nyström + twicing).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from and add the output to.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "NTK", "Clean image of the same shape, for PSNR curves (optional).")
        self._sigma = FloatSpinBox(
            label="σ (noise)", min=0.0, max=1e9, step=1e-4,
            tooltip="Noise standard deviation in the image's units, estimated when the image is chosen. "
            "Left at the estimate, or at 0 (auto), it is estimated for each plane.",
        )
        self._sigma.native.setSpecialValueText("auto")
        self._depth = SpinBox(label="depth", value=2, min=2, max=8, tooltip="Weight layers of the CNN.")
        self._kernel_size = SpinBox(label="kernel size", value=11, min=1, max=31, step=2,
                                    tooltip="Convolution size r (the patch is r x r for depth 2).")
        self._kernel = ComboBox(label="kernel type", choices=("ntk", "nngp"), value="ntk",
                                tooltip="ntk: every layer trained; nngp: output layer only (paper eq. 12).")
        self._fraction = FloatSpinBox(label="anchor fraction", value=0.02, min=0.001, max=1.0, step=0.005,
                                      tooltip="Fraction of pixels used as Nyström anchors.")
        self._rank = SpinBox(label="rank", value=256, min=1, max=8192, tooltip="Eigenimages kept.")
        self._guided = CheckBox(value=False, text="guided second stage",
                                tooltip="Recompute the filter from the first estimate and filter again.")
        self._device = ComboBox(label="device", choices=device_choices())
        self._t = Slider(label="t", min=0, max=0, value=0, readout=False, enabled=False,
                         tooltip="Twicing step of the output, re-rendered from the stored eigen-coefficients.")
        self._t_label = Label(value="t: run the filter first")
        self._plot = CurvePlot("SURE and PSNR over twicing steps", xlabel="twicing step t", ylabel="dB", log_x=True)
        self.extend([
            self._image, self._reference, self._sigma, self._depth, self._kernel_size, self._kernel,
            self._fraction, self._rank, self._guided, self._device, self._buttons, self._t, self._t_label,
        ])
        self.native.layout().addWidget(self._plot)
        self._results: dict[tuple[int, ...], NTKResult] = {}
        self._run_params: dict[str, Any] = {}
        self._sigma_estimate: float | None = None
        self._sigma_layer: Image | None = None
        self._image.changed.connect(self._estimate_sigma)
        self._t.changed.connect(self._render_t)
        viewer.dims.events.current_step.connect(self._update_plot)
        self.native.destroyed.connect(lambda *_: viewer.dims.events.current_step.disconnect(self._update_plot))

    def _params(self) -> dict[str, Any]:
        """Engine keyword arguments from the controls."""
        device = self._device.value
        return {
            "depth": self._depth.value, "kernel_size": self._kernel_size.value, "kernel": self._kernel.value,
            "input": "image", "fraction": self._fraction.value, "rank": self._rank.value,
            "guided": self._guided.value, "device": None if device == "auto" else device, "seed": 0,
        }

    def reset_choices(self, *args: Any) -> None:
        """Refresh the layer lists (napari calls this); estimate σ if the image changed."""
        super().reset_choices(*args)
        if self._image.value is not self._sigma_layer:
            self._estimate_sigma()

    def _estimate_sigma(self, *args: Any) -> None:
        """Fill σ with the noise estimate of the shown plane of the chosen layer."""
        self._sigma_layer = self._image.value
        try:
            source = source_from_layer(self._image.value, self._viewer)
        except InputError:
            return
        sigma = estimate_noise_sigma(source.plane(source.current_index(self._viewer)), source.channel_axis)
        if sigma > 0:
            self._sigma.step = 10 ** (math.floor(math.log10(sigma)) - 2)
        self._sigma.value = sigma
        self._sigma_estimate = self._sigma.value

    def run(self) -> GeneratorWorker | None:
        """Start denoising the chosen layer; refused while a run is going.

        Returns
        -------
        GeneratorWorker or None
            The worker (``None`` when refused or when the input is unusable).
        """
        sigma = None if self._sigma.value in (0.0, self._sigma_estimate) else float(self._sigma.value)
        params = self._params()
        worker = self._start(partial(_denoise_planes, sigma, params), "NTK filter",
                             on_event=self._on_step, on_return=self._on_result, on_finished=self._on_finished)
        if worker is not None:
            self._results, self._run_params = {}, params
            self._t.enabled = False
            self._plot.clear()
        return worker

    def _on_step(self, item: PlaneEvent) -> None:
        """Stream a twicing step of one plane into the output layer."""
        step = item.event
        if not isinstance(step, TwicingStep):
            return
        assert self._source is not None and self._out is not None
        self._source.store(self._out, item.index, step.image)
        self._show({"status": "running", "plane": list(item.index), "stage": step.stage, "t": step.t})

    def _on_result(self, results: dict[tuple[int, ...], NTKResult]) -> None:
        """Show the final images, keep the results for the ``t`` slider, plot the curves."""
        assert self._source is not None and self._out is not None
        self._results = results
        for index, res in results.items():
            self._source.store(self._out, index, res.image)
            if not self._run_params["guided"]:  # the filter of the image itself, as the Inspector's
                filters.put(self._source.layer, index, self._run_params, res.filter)
        first = next(iter(results.values()))
        with self._t.changed.blocked():
            self._t.max = len(first.t_grid) - 1
            self._t.value = int(np.searchsorted(first.t_grid, first.t))
        self._t.enabled = True
        self._show(self._metadata(first.t))
        self._update_plot()

    def _on_finished(self, stopped: bool) -> None:
        """Tell the user about a stop; the output keeps the last streamed step."""
        if stopped:
            show_info("NTK filter stopped: the output shows the last step that arrived.")
            if self._output is not None:
                self._output.metadata = {**self._output.metadata, "status": "stopped"}

    def _metadata(self, t_shown: int) -> dict[str, Any]:
        """Result metadata: parameters, σ, chosen t, timings (per plane for stacks)."""
        if list(self._results) == [()]:
            return {**self._results[()].metadata(), "t_shown": t_shown}
        planes = [{"index": list(i), **res.metadata()} for i, res in self._results.items()]
        return {"planes": planes, "t_shown": t_shown}

    def _render_t(self, position: int) -> None:
        """Re-render the output at the slider's step from the stored coefficients."""
        if not self._results or self._source is None or self._out is None:
            return
        t = int(next(iter(self._results.values())).t_grid[position])
        for index, res in self._results.items():
            self._source.store(self._out, index, res.render(t))
        self._show(self._metadata(t))
        self._update_plot()

    def _update_plot(self, event: Any = None) -> None:
        """Plot SURE (as PSNR) and the reference PSNR of the shown plane, marking the shown t."""
        if not self._results or self._source is None:
            return
        res = self._results.get(self._source.current_index(self._viewer), next(iter(self._results.values())))
        t = int(res.t_grid[self._t.value])
        self._t_label.value = f"t = {t}   (SURE choice: {res.t}, σ = {res.sigma:.4g})"
        self._plot.clear()
        if res.sure is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                sure_db = 10 * np.log10(res.data_range**2 / np.where(res.sure > 0, res.sure, np.nan))
            self._plot.set_curve("SURE estimate", res.t_grid, sure_db)
        if res.psnr is not None:
            self._plot.set_curve("PSNR vs reference", res.t_grid, res.psnr)
        self._plot.set_marker(t, f"t = {t}")
