"""DIP Training widget: train a deep image prior on an image layer, watching it learn.

Runs :func:`napari_ntk_denoise.dip.iter_dip` on each plane in a worker thread.  The output layer
shows the network's current output as training goes; the docked plots follow the loss, MC-SURE
or the held-out residual, PSNR (with a reference layer) and the weight change ``||w^t - w^0||``.
At the end, or when the user presses Stop, the output layer keeps the best output (by the
trainer's criterion, which needs no clean image), and the plots mark where it is.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, SpinBox
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QTabWidget

from napari_ntk_denoise.dip import ARCHITECTURES, DIPProgress, DIPResult, DIPStep, iter_dip, min_image_size
from napari_ntk_denoise.dip.config import PATIENCE, default_style, resolve_criterion

from ._base import ImageRunWidget
from ._controls import device_control
from ._dock import Section
from ._layers import ImageSource, InputError, PlaneEvent, iter_planes
from ._plots import CurvePlot

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["DIPTrainingWidget"]

Index = tuple[int, ...]

#: The architectures in words, and the engine's names for them.
ARCHITECTURE_NAMES = {"ae": "autoencoder", "unet": "U-Net", "skip": "skip net (DIP)",
                      "vanilla": "vanilla CNN (11 x 11)"}

#: How each stopping criterion is named to the user.
CRITERION_WORDS = {"holdout": "the held-out pixels", "sure": "SURE", "psnr": "PSNR vs the reference",
                   "variance": "the output's variance", "last": "the last iteration"}

#: Default time limit of a run, in minutes: a CPU finishes in minutes whatever the image size.
TIME_LIMIT_MINUTES = 10.0


def _train_planes(params: dict[str, Any], source: ImageSource, reference: ImageSource | None) -> Any:
    """Generator of :class:`PlaneEvent` running :func:`iter_dip` on every plane."""

    def run_plane(plane: np.ndarray, index: Index) -> Any:
        ref = None if reference is None else reference.plane(index)
        return iter_dip(plane, channel_axis=source.channel_axis, reference=ref, **params)

    return iter_planes(source, run_plane)


def dip_progress(event: object) -> tuple[float, str] | None:
    """Fraction and message of a :class:`DIPProgress`; ``None`` for a :class:`DIPStep`."""
    if isinstance(event, DIPProgress):
        rate = event.iteration / event.seconds if event.seconds > 0 else 0.0
        return event.fraction, f"iteration {event.iteration}/{event.iterations} ({rate:.3g} it/s)"
    return None


class DIPTrainingWidget(ImageRunWidget):
    """Train a deep image prior (Adam or gradient descent) on an image layer, with live curves.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from and add the output to.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "DIP", "A noise-free version of the same image, if you have one: the PSNR "
                         "curve, and the best output chosen by PSNR. Optional.",
                         "Train the network on the image; the output layer follows the training live.")
        self._arch = ComboBox(
            label="network", choices=[(ARCHITECTURE_NAMES[a], a) for a in ARCHITECTURES], value="ae",
            tooltip="The network trained on the image. Autoencoder (default) and skip net denoise best; the "
            "vanilla CNN is the one whose wide limit is the NTK filter.")
        self._optimizer = ComboBox(
            label="optimiser", choices=(("Adam", "adam"), ("gradient descent", "gd")), value="adam",
            tooltip="Adam leaves the NTK regime and beats the NTK filter; plain gradient descent follows it "
            "(and needs thousands of iterations).")
        self._input = ComboBox(
            label="network input", choices=(("random noise (DIP)", "noise"), ("the noisy image", "image")),
            value="noise",
            tooltip="Random noise: the original deep image prior; the best output is chosen on 5 % of the pixels "
            "held out of training. The noisy image: the best output is chosen by SURE.")
        self._iterations = SpinBox(label="iterations (at most)", value=3000, min=1, max=1_000_000,
                                   tooltip="Most training iterations; training stops earlier once the output "
                                   "has not improved for 'patience' iterations, or at the time limit.")
        self._time_limit = FloatSpinBox(
            label="time limit (min)", value=TIME_LIMIT_MINUTES, min=0.0, max=10_000.0, step=1.0,
            tooltip="Stop training after this many minutes and keep the best output so far; 0: no limit. "
            "Large images train slowly on a CPU: crop them or use a GPU for a better result in the same time.")
        self._time_limit.native.setSpecialValueText("none")
        self._width = SpinBox(label="width (channels)", value=64, min=1, max=4096,
                              tooltip="Channels of the hidden layers. Wider: slower, and (with gradient descent) "
                              "closer to the NTK filter.")
        self._lr = FloatSpinBox(label="learning rate", value=0.0, min=0.0, max=100.0, step=1e-4,
                                tooltip="Step size of the optimiser; 0 (auto): Adam 0.01 for the U-Net, "
                                "autoencoder and skip net, 0.001 for the vanilla CNN; gradient descent "
                                "1 / largest NTK eigenvalue. Too large: the output collapses (the run says so).")
        self._lr.native.setSpecialValueText("auto")
        self._patience = SpinBox(label="patience", value=PATIENCE, min=1, max=1_000_000,
                                 tooltip="Stop after this many iterations without a better output.")
        self._every = SpinBox(label="show every (iterations)", value=50, min=1, max=100_000,
                              tooltip="Iterations between updates of the output layer and the curves (each "
                              "update costs about one iteration).")
        self._device = device_control()
        self._best_label = Label(value="", tooltip="The iteration whose output is kept, and why.")
        self._best_label.native.setWordWrap(True)
        self._fit_plot = CurvePlot("Loss and stopping criterion", xlabel="iteration", ylabel="mean squared",
                                   log_y=True)
        self._psnr_plot = CurvePlot("PSNR vs reference", xlabel="iteration", ylabel="dB")
        self._weights_plot = CurvePlot("Weight change", xlabel="iteration", ylabel="|w - w0|", log_y=True)
        self._fit_plot.setToolTip("Training loss, and the criterion that picks the best output (held-out "
                                  "residual or SURE); the marker is the best iteration.")
        self._weights_plot.setToolTip("How far the weights moved from their start: small for a network in "
                                      "the NTK regime.")
        self._plots = QTabWidget()  # one pane: three stacked plots made the dock too tall for a screen
        for plot, tab in ((self._fit_plot, "loss"), (self._psnr_plot, "PSNR"), (self._weights_plot, "weights")):
            self._plots.addTab(plot, tab)
        self._lay_out([
            Container(widgets=[self._image, self._reference, self._arch, self._optimizer, self._input,
                               self._iterations, self._time_limit]),
            Section("Training settings", [self._width, self._lr, self._patience, self._every, self._device],
                    "Network width, learning rate, stopping patience, update interval, device."),
            Container(widgets=[self._buttons, self._progress, self._best_label], labels=False),
        ], [self._plots])
        self._best: dict[Index, DIPStep] = {}
        self._curves: dict[Index, list[DIPStep]] = {}
        self._results: dict[Index, DIPResult] = {}
        self._params: dict[str, Any] = {}
        self._criterion = ""

    def _read_params(self) -> dict[str, Any]:
        """:func:`iter_dip` keyword arguments from the controls."""
        return {
            "arch": self._arch.value, "optimizer": self._optimizer.value, "input": self._input.value,
            "width": self._width.value, "lr": self._lr.value or None, "iterations": self._iterations.value,
            "every": self._every.value, "patience": self._patience.value, "device": self._device.value, "seed": 0,
            "time_limit": 60 * self._time_limit.value or None,
        }

    def run(self) -> GeneratorWorker | None:
        """Start training on the chosen layer; refused while a run is going.

        Returns
        -------
        GeneratorWorker or None
            The worker (``None`` when refused or when the input is unusable).
        """
        params = self._read_params()

        def check(source: ImageSource) -> None:
            smallest = min_image_size(params["arch"])
            if min(source.plane_shape) < smallest:
                name = ARCHITECTURE_NAMES[params["arch"]]
                raise InputError(f"The {name} needs planes of at least {smallest} x {smallest} pixels; "
                                 f"'{source.name}' has {source.plane_shape}.")

        worker = self._start(partial(_train_planes, params), "DIP training", check, on_event=self._on_step,
                             on_return=self._on_result, on_finished=self._on_finished, progress_of=dip_progress,
                             upper_bound=True)
        if worker is not None:
            self._params, self._best, self._curves, self._results = params, {}, {}, {}
            self._criterion = resolve_criterion("auto", self._reference.value is not None, params["input"],
                                                default_style(params["arch"], params["optimizer"]))
            for plot in (self._fit_plot, self._psnr_plot, self._weights_plot):
                plot.clear()
            self._plots.setTabVisible(1, self._reference.value is not None)
        return worker

    def _on_step(self, item: PlaneEvent) -> None:
        """Show the current output of a plane, keep the best so far, extend the curves."""
        step = item.event
        assert isinstance(step, DIPStep) and self._source is not None and self._out is not None
        if step.iteration == step.best_iteration:
            self._best[item.index] = step
        self._curves.setdefault(item.index, []).append(step)
        self._plot_curves(item.index)
        self._best_label.value = (f"iteration {step.iteration}: loss {step.loss:.3g}"
                                  + ("" if step.psnr is None else f", PSNR {step.psnr:.2f} dB")
                                  + f"; best so far at {step.best_iteration} (by {CRITERION_WORDS[self._criterion]})")
        if self._output is None and np.ptp(step.image) == 0:  # e.g. a network that starts at zero
            return
        self._source.store(self._out, item.index, step.image)
        self._show({"status": "training", "plane": list(item.index), "iteration": step.iteration,
                    "params": dict(self._params)})

    def _plot_curves(self, index: Index) -> None:
        """Plot the curves of one plane, marking its best iteration."""
        steps = self._curves.get(index, [])
        if not steps:
            return
        it = np.array([s.iteration for s in steps], float)
        self._fit_plot.set_curve("loss", it, [s.loss for s in steps])
        if steps[-1].sure is not None:
            self._fit_plot.set_curve("SURE", it, [s.sure for s in steps])
        if steps[-1].validation is not None:
            self._fit_plot.set_curve("held-out residual", it, [s.validation for s in steps])
        if steps[-1].psnr is not None:
            self._psnr_plot.set_curve("PSNR", it, [s.psnr for s in steps])
        self._weights_plot.set_curve("‖w − w0‖₂", it, [s.weight_change_l2 for s in steps])
        self._weights_plot.set_curve("mean max |Δw|", it, [s.weight_change_max for s in steps])
        best = steps[-1].best_iteration
        for plot in (self._fit_plot, self._psnr_plot, self._weights_plot):
            plot.set_marker(best, f"best {best}")

    def _on_result(self, results: dict[Index, DIPResult]) -> None:
        """Show the best output of every plane, with the run's metadata."""
        assert self._source is not None and self._out is not None
        self._results = results
        for index, res in results.items():
            self._source.store(self._out, index, res.image)
        self._show(self._metadata("finished"))

    def _on_finished(self, stopped: bool) -> None:
        """After a stop, show the best output seen so far in each trained plane."""
        if not stopped or self._source is None or self._out is None:
            return
        for index, step in self._best.items():
            self._source.store(self._out, index, step.image)
        if self._output is not None:
            self._show(self._metadata("stopped"))
        show_info("DIP training stopped: the output shows the best iteration reached.")

    def _metadata(self, status: str) -> dict[str, Any]:
        """Parameters, best iterations, PSNR/SURE there, and timings, per plane for stacks."""
        planes = []
        for index, best in self._best.items():
            entry: dict[str, Any] = {"index": list(index), "best_iteration": best.best_iteration,
                                     "loss": best.loss, "psnr": best.psnr, "sure": best.sure}
            res = self._results.get(index)
            if res is not None:
                entry.update(criterion=res.criterion, timings=dict(res.timings), params=dict(res.params))
            planes.append(entry)
        meta: dict[str, Any] = {"method": "deep-image-prior", "status": status, "params": dict(self._params)}
        if list(self._best) == [()]:
            meta.update({k: v for k, v in planes[0].items() if k != "index"})
        else:
            meta["planes"] = planes
        return meta
