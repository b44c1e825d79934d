"""NTK Filter widget: closed-form NTK denoising of an image layer, streamed as it computes.

The widget turns the chosen layer into engine calls, one per plane, in a worker thread: planes up to
the tile size go to :func:`napari_ntk_denoise.iter_denoise_ntk` (twicing steps streamed into the
output layer), larger planes to :func:`napari_ntk_denoise.iter_denoise_tiled` (per-tile progress,
the plane shown when done, every tile's eigenimages kept within the memory budget). Every plane
keeps its own SURE step; the ``t`` label and the plot (SURE curve, and PSNR against a reference)
show the plane on screen, orange where SURE's stop is doubtful (the engine's ``stop_warnings``).
Afterwards the ``t`` slider moves every plane the same number of grid steps from its own SURE step
(a tiled plane's tiles each from theirs), re-rendering ``z(t)`` from the stored eigen-coefficients.
With the Poisson-Gaussian noise model every plane goes through the generalized Anscombe transform
(parameters given or estimated from three planes). Planes are read one at a time, so dask-backed
(lazy) layers are never loaded whole.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, Slider, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info

from napari_ntk_denoise import NTKResult, TiledResult, TwicingStep, iter_denoise_ntk, iter_denoise_tiled
from napari_ntk_denoise.engine.stopping import estimate_noise_sigma
from napari_ntk_denoise.microscopy.noise_estimation import noise_report, stabilised_sigma
from napari_ntk_denoise.microscopy.tiling import TILE, TILE_FINE, TILE_Z, check_tiled_request, choose_tile, fixed_tile
from napari_ntk_denoise.microscopy.vst import PoissonGaussian, gat_forward, gat_inverse

from ._base import ImageRunWidget
from ._controls import KERNEL_CHOICES, FilterControls, engine_default
from ._dock import Section
from ._filters import filters
from ._layers import ImageSource, InputError, PlaneDone, PlaneEvent, iter_planes, source_from_layer
from ._plots import CurvePlot

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["NTKFilterWidget"]

#: eigenimages kept for the ``t`` slider over all planes of a run; beyond, the slider is disabled
RENDER_BUDGET = 1 << 30

#: Colour of the ``t`` label and the plot's marker where SURE's stop is doubtful.
DOUBT_COLOUR = "#ffa726"


def stop_warnings(result: NTKResult | TiledResult) -> list[str]:
    """Why SURE's stop of an engine result is doubtful: empty when it holds (or the engine says nothing).

    Parameters
    ----------
    result : NTKResult or TiledResult
        The engine's result; an :class:`NTKResult` carries them in ``params["stop_warnings"]``, a
        :class:`TiledResult` in its metadata (``"tile k: reason"``).

    Returns
    -------
    list of str
        One reason per doubt.
    """
    source = result.params if isinstance(result, NTKResult) else result.metadata()
    return [str(w) for w in source.get("stop_warnings", [])]


@dataclass(frozen=True)
class PlaneResult:
    """A denoised plane: the image in data units and the engine's result.

    Attributes
    ----------
    image : numpy.ndarray
        Denoised plane (after the inverse transform with the Poisson-Gaussian model).
    result : NTKResult or TiledResult
        The engine's result (in the stabilised domain with the Poisson-Gaussian model); one whose
        eigenimages were dropped (memory budget) has ``renderable`` False.
    noise : PoissonGaussian or None
        Poisson-Gaussian parameters of the run.
    renderable : bool
        Whether :meth:`render` can re-render other steps.
    """

    image: np.ndarray
    result: NTKResult | TiledResult
    noise: PoissonGaussian | None = None
    renderable: bool = False

    @property
    def stop_warnings(self) -> list[str]:
        """Why SURE's stop of this plane is doubtful (empty when it holds)."""
        return stop_warnings(self.result)

    def offsets(self) -> tuple[int, int]:
        """Lowest and highest slider offsets (grid steps from SURE's step) that stay on the ``t`` grid
        (of some tile, for a tiled plane)."""
        return self.result.offsets()

    def step(self, offset: int) -> int | list[int]:
        """Twicing step shown ``offset`` grid steps from SURE's step (stopping at the grid's ends;
        every tile's, for a tiled plane); SURE's step itself when the plane cannot re-render."""
        return self.result.step_at(offset) if self.renderable else self.result.t

    def render(self, offset: int) -> np.ndarray:
        """The plane ``offset`` grid steps from SURE's step (each tile from its own), in data units."""
        assert self.renderable
        return _data_units(self.result.render_offset(offset), self.noise)

    def metadata(self) -> dict[str, Any]:
        """The engine result's metadata, with the noise model and the stop's doubts (``stop_warnings``)."""
        meta = {**self.result.metadata(), "stop_warnings": self.stop_warnings}
        if self.noise is not None:
            meta["noise_model"] = "poisson-gaussian"
            meta["poisson_gaussian"] = dataclasses.asdict(self.noise)
        return meta


def _data_units(image: np.ndarray, noise: PoissonGaussian | None) -> np.ndarray:
    """An engine image back in data units: the exact unbiased inverse GAT with ``noise``."""
    return image if noise is None else gat_inverse(image, noise).astype(np.float32)


def _denoise_plane(
    plane: np.ndarray, ref: np.ndarray | None, sigma: float | None, noise: PoissonGaussian | None,
    tile: int | None, keep: bool, channel_axis: int | None, params: dict[str, Any],
) -> Generator[object, None, PlaneResult]:
    """Denoise one plane (in tiles of ``tile`` unless ``None``, through the GAT with ``noise``),
    streaming its events; ``keep`` keeps the eigenimages for :meth:`PlaneResult.render`."""
    if noise is not None:  # SURE gets the noise level the transform leaves (each tile its own)
        plane, ref = gat_forward(plane, noise), None
        sigma = partial(stabilised_sigma, noise=noise) if tile else stabilised_sigma(plane, noise, channel_axis)
    if tile is not None:
        tiled = yield from iter_denoise_tiled(plane, sigma, tile=tile, channel_axis=channel_axis, keep_filters=keep,
                                              **params)
        return PlaneResult(_data_units(tiled.image, noise), tiled, noise, renderable=keep)
    gen = iter_denoise_ntk(plane, sigma, channel_axis=channel_axis, reference=ref, **params)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        if isinstance(event, TwicingStep):
            event = dataclasses.replace(event, image=_data_units(event.image, noise))
        yield event
    return PlaneResult(_data_units(res.image, noise), res if keep else res.without_eigenimages(), noise,
                       renderable=keep)


def _denoise_planes(
    sigma: float | None, noise: PoissonGaussian | str | None, tile: int, params: dict[str, Any],
    source: ImageSource, reference: ImageSource | None,
) -> Generator[PlaneEvent, None, dict[tuple[int, ...], PlaneResult]]:
    """Generator of :class:`PlaneEvent` denoising every plane (in tiles of ``tile``, 0 for
    :func:`choose_tile`'s); ``noise="estimate"`` estimates the
    Poisson-Gaussian parameters from three planes first (announced as a ``PlaneEvent`` of them)."""
    if noise == "estimate":
        planes = [np.moveaxis(p, -1, 0) if source.rgb else p for p in source.sample_planes()]
        report = noise_report(np.concatenate([p.reshape(-1, *p.shape[-2:]) for p in planes]))
        noise = report.noise
        if report.blur > 0:  # spatially correlated noise: SURE's probe coloured alike
            params = {**params, "noise_blur": report.blur}
        yield PlaneEvent((), 0, noise)
    spatial = source.spatial_shape
    if not tile:  # auto: measured on the middle plane, as the filter will see it, where it must be
        options = dict(params)
        device = options.pop("device", None)
        tile = fixed_tile(spatial, **options)
        if tile is None:
            sample = source.plane(source.indices[len(source.indices) // 2])
            sample = sample if noise is None else gat_forward(sample, noise)
            tile = choose_tile(sample, source.channel_axis, device, **options)
    tiled = max(spatial[-2:]) > tile or (source.volume and spatial[0] > TILE_Z)
    pixels, stages = math.prod(spatial), 1 + params["guided"]
    if tiled:  # the tiles overlap: count every tile's pixels; a tile keeps its final stage only
        pixels, stages = check_tiled_request((*spatial, 1), tile=tile, **params).tile_pixels, 1
    eigen_bytes = 4 * pixels * params["rank"] * stages * len(source.indices)
    keep = eigen_bytes <= RENDER_BUDGET

    def run_plane(plane: np.ndarray, index: tuple[int, ...]) -> Generator[object, None, PlaneResult]:
        ref = None if reference is None else reference.plane(index)
        return _denoise_plane(plane, ref, sigma, noise, tile if tiled else None, keep, source.channel_axis, params)

    return (yield from iter_planes(source, run_plane, announce=True))


class NTKFilterWidget(ImageRunWidget):
    """Denoise an image layer with the analytic NTK filter of a CNN (Nyström + twicing).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from and add the output to.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "NTK", "A noise-free version of the same image, if you have one (e.g. of a "
                         "simulation): the plot then shows the true PSNR of every smoothing step. Optional.",
                         "Denoise the image with the NTK filter; every plane gets its own smoothing step.")
        self._sigma = FloatSpinBox(
            label="noise level σ", min=0.0, max=1e9, step=1e-4,
            tooltip="Standard deviation of the noise, in the image's own units (e.g. grey levels for 8-bit "
            "data), estimated when the image is chosen. Raise it for a smoother result, lower it to keep more "
            "detail. Left at the estimate, or at 0 (auto), it is estimated for each plane.",
        )
        self._sigma.native.setSpecialValueText("auto")
        self._filter_controls = FilterControls()
        self._guided = CheckBox(value=engine_default("guided"), text="two-stage (guided) filter",
                                tooltip="Filter once, build a second filter from that first estimate, filter "
                                "again and average the two (weight chosen by SURE): sharper, about twice as slow. "
                                "Untick it for the one-stage filter.")
        self._guided_kernel = ComboBox(
            label="second-stage kernel", choices=KERNEL_CHOICES, value=engine_default("guided_kernel"),
            visible=engine_default("guided"),
            tooltip="Kernel of the two-stage filter's runs; the last-layer (NNGP) kernel gains more.")
        self._noise_model = ComboBox(
            label="noise model", choices=(("Gaussian", "gaussian"), ("photon counts (Poisson-Gaussian)",
                                                                     "poisson-gaussian")),
            value="gaussian",
            tooltip="Gaussian: the same noise everywhere. Photon counts (fluorescence, cameras): noise grows with "
            "brightness; the image is variance-stabilised (generalized Anscombe transform) before the filter "
            "and transformed back after. Gain and read noise given or estimated.")
        self._gain = FloatSpinBox(label="gain", min=0.0, max=1e9, step=0.01, visible=False,
                                  tooltip="Data units per photon (the camera's conversion factor); 'auto' "
                                  "estimates it from the image, with the read noise.")
        self._read_noise = FloatSpinBox(label="read noise", min=0.0, max=1e9, step=0.01, visible=False,
                                        tooltip="Standard deviation of the camera's read noise, in data units; "
                                        "'auto' estimates it.")
        for box in (self._gain, self._read_noise):
            box.native.setSpecialValueText("auto")
        self._volume = CheckBox(value=False, text="3-D patches (Z stack)",
                                tooltip="Filter each Z-Y-X volume (the axis before Y is Z) with 3-D patches "
                                "instead of each plane on its own: better when neighbouring planes are alike.")
        self._kernel_size_z = SpinBox(label="patch depth (planes)", value=engine_default("kernel_size"), min=1,
                                      max=31, step=2, visible=False, tooltip="Patch size along Z, in planes (odd).")
        self._tile = SpinBox(label="tile size (px)", value=0, min=0, max=16384, step=64,
                             tooltip="Planes larger than this are denoised in overlapping tiles, each with its own "
                             f"filter and smoothing step: faster, and usually sharper than one filter for the whole "
                             f"plane. Larger tiles need more memory. 'auto': {TILE['2d']}, or {TILE_FINE} where the "
                             f"filter's spectrum shows more detail than its rank can hold (colour photographs); "
                             f"{TILE['3d']} for 3-D patches.")
        self._tile.native.setSpecialValueText("auto")
        self._t = Slider(
            label="smoothing step", min=0, max=0, value=0, enabled=False,
            tooltip="Moves the result away from the automatic choice: 0 shows every plane at the step SURE "
            "chose (twicing step t), +k is k steps sharper (less smoothed), -k smoother. Each plane moves from "
            "its own choice (each tile of a tiled plane from its own) and stops at the ends of its range. "
            "Planes whose eigenimages were not kept (memory) stay at their choice.")
        self._t_label = Label(value="smoothing step: run the filter first",
                              tooltip="The step shown on the plane on screen and the one SURE chose.")
        self._t_label.native.setWordWrap(True)
        self._plot = CurvePlot("Quality over smoothing steps", xlabel="twicing step t", ylabel="dB", log_x=True)
        self._plot.setToolTip("SURE's estimate of the PSNR (no clean image needed) and, with a reference, the "
                              "true PSNR, over the twicing step; the marker is the step shown.")
        self._lay_out([
            Container(widgets=[self._image, self._reference, self._noise_model, self._sigma, self._gain,
                               self._read_noise, self._guided]),
            Section("Filter settings", [*self._filter_controls.widgets, self._guided_kernel],
                    "The network whose filter is used and how it is approximated."),
            Section("Stacks and large images", [self._volume, self._kernel_size_z, self._tile],
                    "3-D patches for Z stacks; tiles for large planes."),
            Container(widgets=[self._buttons, self._progress, self._t, self._t_label], labels=True),
        ], [self._plot])
        self._results: dict[tuple[int, ...], PlaneResult] = {}
        self._run_params: dict[str, Any] = {}
        self._noise_estimate: dict[str, Any] = {}
        self._sigma_estimate: float | None = None
        self._sigma_layer: Image | None = None
        self._image.changed.connect(self._estimate_sigma)
        self._noise_model.changed.connect(self._show_noise_fields)
        self._volume.changed.connect(lambda on: setattr(self._kernel_size_z, "visible", on))
        self._guided.changed.connect(lambda on: setattr(self._guided_kernel, "visible", on))
        self._t.changed.connect(self._render_t)
        viewer.dims.events.current_step.connect(self._update_plot)
        self.native.destroyed.connect(lambda *_: viewer.dims.events.current_step.disconnect(self._update_plot))

    def _params(self) -> dict[str, Any]:
        """Engine keyword arguments from the controls."""
        return {
            **self._filter_controls.params(), "input": "image",
            "guided": self._guided.value, "guided_kernel": self._guided_kernel.value,
            "volume": self._volume.value, "kernel_size_z": self._kernel_size_z.value if self._volume.value else None,
        }

    def _show_noise_fields(self, *args: Any) -> None:
        """σ for the Gaussian model; gain and read noise for the Poisson-Gaussian one."""
        pg = self._noise_model.value == "poisson-gaussian"
        self._sigma.visible = not pg
        self._gain.visible = self._read_noise.visible = pg

    def _noise_spec(self) -> PoissonGaussian | str | None:
        """``None`` (Gaussian), given parameters, or ``"estimate"``."""
        if self._noise_model.value == "gaussian":
            return None
        gain, read = self._gain.value, self._read_noise.value
        if gain > 0 and read > 0:
            return PoissonGaussian(gain, read)
        if gain > 0 or read > 0:
            raise InputError("Give both gain and read noise, or leave both at 'auto' to estimate them.")
        return "estimate"

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
        except InputError:  # an unusable image gets no estimate, and no other layer's either
            self._sigma.value, self._sigma_estimate = 0.0, None
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
        try:
            noise = self._noise_spec()
        except InputError as exc:
            self._refuse(str(exc))
            return None
        worker = self._start(partial(_denoise_planes, sigma, noise, self._tile.value, params), "NTK filter",
                             volume=params["volume"], on_event=self._on_step, on_return=self._on_result,
                             on_finished=self._on_finished)
        if worker is not None:
            if noise is not None and self._reference.value is not None:
                show_info("PSNR curves against the reference need the Gaussian noise model; the reference is "
                          "not used with the Poisson-Gaussian one.")
            self._results, self._run_params, self._noise_estimate = {}, params, {}
            self._t.enabled = False
            self._plot.clear()
            self._set_label("smoothing step: shown when the plane on screen is done", [])
        return worker

    def _on_step(self, item: PlaneEvent) -> None:
        """Stream a twicing step, or a finished plane, into the output layer."""
        assert self._source is not None and self._out is not None
        event = item.event
        if isinstance(event, PoissonGaussian):  # no layer yet: nothing to show but the estimate
            self._noise_estimate = {"poisson_gaussian": dataclasses.asdict(event)}
            self._set_label(f"estimated gain {event.gain:.4g}, read noise {event.read_noise:.4g}; smoothing step "
                            "shown when the plane on screen is done", [])
        elif isinstance(event, TwicingStep):
            self._source.store(self._out, item.index, event.image)
            self._show({"status": "running", "plane": list(item.index), "stage": event.stage, "t": event.t,
                        **self._noise_estimate})
        elif isinstance(event, PlaneDone):
            self._results[item.index] = event.value
            self._source.store(self._out, item.index, event.value.image)
            self._show({"status": "running", "planes_done": len(self._results), "planes": len(self._source.indices),
                        **self._noise_estimate})
            self._update_plot()

    def _on_result(self, results: dict[tuple[int, ...], PlaneResult]) -> None:
        """Keep the results for the ``t`` slider, show the metadata, plot the curves, tell of doubtful stops."""
        assert self._source is not None and self._out is not None
        self._results = results
        for index, res in results.items():
            plane_filter = not (self._run_params["guided"] or self._run_params["volume"] or res.noise)
            if res.renderable and plane_filter and isinstance(res.result, NTKResult):
                filters.put(self._source.layer, index, self._run_params, res.result.filter)  # as the Inspector's
        self._reset_slider()
        self._show(self._metadata())
        self._update_plot()
        self._tell_doubts()
        if self._reference.value is not None and not all(isinstance(r.result, NTKResult) for r in results.values()):
            show_info("NTK filter: tiled planes have no PSNR curve against the reference; set the tile size to "
                      "the image size to see it.")

    def _reset_slider(self) -> None:
        """Slider at 0 (every plane at its SURE step), spanning the offsets of the planes that re-render."""
        offsets = [res.offsets() for res in self._results.values() if res.renderable]
        if offsets:
            with self._t.changed.blocked():
                self._t.max, self._t.min = max(hi for _, hi in offsets), min(lo for lo, _ in offsets)
                self._t.value = 0
        self._t.enabled = bool(offsets)

    def _tell_doubts(self) -> None:
        """A notification when SURE's stop is doubtful on some planes (the first reason given)."""
        doubts = {index: res.stop_warnings for index, res in self._results.items() if res.stop_warnings}
        if not doubts:
            return
        where = "" if list(self._results) == [()] else f" on {len(doubts)} of {len(self._results)} planes"
        show_info(f"NTK filter: SURE's stop is doubtful{where} ({next(iter(doubts.values()))[0]}); see the t "
                  "label and the layer's metadata (stop_warnings): check the noise level, or move the t slider.")

    def _on_finished(self, stopped: bool) -> None:
        """Tell the user about a stop; the output keeps the last streamed step."""
        if not stopped:
            return
        if self._output is None:
            show_info("NTK filter stopped before its first result: no output layer was made.")
            return
        show_info("NTK filter stopped: the output shows the last step that arrived.")
        self._output.metadata = {**self._output.metadata, "status": "stopped"}

    def _offset(self) -> int:
        """Grid steps from each plane's SURE step that the output shows (0 while the slider is off)."""
        return int(self._t.value) if self._t.enabled else 0

    def _metadata(self) -> dict[str, Any]:
        """Result metadata: parameters, σ, chosen and shown t, stop doubts, timings (per plane for stacks)."""
        offset = self._offset()

        def plane_meta(res: PlaneResult) -> dict[str, Any]:
            return {**res.metadata(), "t_shown": res.step(offset)}

        if list(self._results) == [()]:
            return {**plane_meta(self._results[()]), "t_offset": offset}
        planes = [{"index": list(i), **plane_meta(res)} for i, res in self._results.items()]
        doubtful = [list(i) for i, res in self._results.items() if res.stop_warnings]
        return {"planes": planes, "t_offset": offset, "doubtful_planes": doubtful}

    def _render_t(self, offset: int) -> None:
        """Re-render every plane that can at ``offset`` grid steps from its own SURE step."""
        if not self._results or self._source is None or self._out is None or not self._t.enabled:
            return
        for index, res in self._results.items():
            if res.renderable:
                self._source.store(self._out, index, res.render(offset))
        self._show(self._metadata())
        self._update_plot()

    def _set_label(self, text: str, doubts: list[str]) -> None:
        """Show ``text`` as the ``t`` label, in orange with the reasons where the stop is doubtful."""
        self._t_label.value = text + (f"   (doubtful: {'; '.join(doubts)})" if doubts else "")
        self._t_label.native.setStyleSheet(f"color: {DOUBT_COLOUR};" if doubts else "")
        self._t_label.tooltip = ("SURE's stop of this plane is doubtful: " + "; ".join(doubts)) if doubts else None

    def _update_plot(self, event: Any = None) -> None:
        """Label, SURE (as PSNR) and reference PSNR of the plane on screen, marking its shown t."""
        if not self._results or self._source is None:
            return
        plane = self._results.get(self._source.current_index(self._viewer))
        self._plot.clear()
        if plane is None:
            self._set_label("smoothing step: the plane on screen is not done yet", [])
            return
        res, doubts = plane.result, plane.stop_warnings
        t = plane.step(self._offset())
        kept = "" if plane.renderable else "; eigenimages not kept (memory), so the slider cannot move it"
        if not isinstance(res, NTKResult):
            self._set_label(f"tiled plane: smoothing step per tile {t}   (chosen by SURE: {res.t}; "
                            f"σ = {res.sigma:.4g}{kept})", doubts)
            return
        self._set_label(f"smoothing step t = {t}   (chosen by SURE: {res.t}; σ = {res.sigma:.4g}{kept})", doubts)
        if res.sure is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                sure_db = 10 * np.log10(res.data_range**2 / np.where(res.sure > 0, res.sure, np.nan))
            self._plot.set_curve("SURE estimate", res.t_grid, sure_db)
        if res.psnr is not None:
            self._plot.set_curve("PSNR vs reference", res.t_grid, res.psnr)
        self._plot.set_marker(t, f"t = {t}" + (" (doubtful)" if doubts else ""), DOUBT_COLOUR if doubts else None)
