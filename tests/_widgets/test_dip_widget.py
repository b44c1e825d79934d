"""DIP Training widget: live output and curves, stop keeping the best output, running again."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ntk_denoise.dip import DIPStep

TIMEOUT = 120_000  # ms


@pytest.fixture
def dip(viewer, open_widget, camera_pair):
    """DIP Training opened from the manifest: a small U-Net on a 32 x 32 image with a reference."""
    clean, noisy = camera_pair
    viewer.add_image(clean, name="clean")
    viewer.add_image(noisy, name="noisy", scale=(2.0, 2.0))
    widget = open_widget("DIP Training")
    widget._image.value = viewer.layers["noisy"]
    widget._reference.value = viewer.layers["clean"]
    widget._arch.value = "unet"
    widget._width.value = 8
    widget._iterations.value = 40
    widget._every.value = 10
    return widget


def _record(worker, viewer) -> list[tuple[DIPStep, int, np.ndarray]]:
    """Each DIPStep with the layer count and the output's data, seen right after the widget's update."""
    seen: list[tuple[DIPStep, int, np.ndarray]] = []

    def record(item):
        if isinstance(item.event, DIPStep):
            seen.append((item.event, len(viewer.layers), viewer.layers[-1].data.copy()))

    worker.yielded.connect(record)
    return seen


def test_live_output_curves_and_best_result(qtbot, viewer, dip, camera_pair) -> None:
    """The output layer is added once and follows training; curves grow; the best output stays."""
    _clean, noisy = camera_pair
    worker = dip.run()
    seen = _record(worker, viewer)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert [s.iteration for s, _, _ in seen] == [0, 1, 2, 4, 8, 10, 20, 30, 40]  # the first at once
    assert {n for _, n, _ in seen} == {3}
    for step, _, data in seen:
        np.testing.assert_array_equal(data, step.image)  # the layer showed each step live
    out = viewer.layers["noisy [DIP]"]
    result = dip._results[()]
    np.testing.assert_array_equal(out.data, result.image)
    np.testing.assert_array_equal(out.scale, (2.0, 2.0))
    np.testing.assert_array_equal(viewer.layers["noisy"].data, noisy)
    meta = out.metadata
    assert meta["status"] == "finished" and meta["best_iteration"] == result.best_iteration
    assert meta["criterion"] == "psnr" and meta["params"]["arch"] == "unet" and meta["timings"]["train_s"] > 0
    assert set(dip._fit_plot.curves) == {"loss"}  # noise input, stopped by the reference
    np.testing.assert_allclose(dip._fit_plot.curves["loss"][1], result.loss)
    np.testing.assert_allclose(dip._psnr_plot.curves["PSNR"][1], result.psnr)
    assert len(dip._weights_plot.curves) == 2
    assert dip._fit_plot.marker == result.best_iteration
    assert dip._weights_plot.curves["‖w − w0‖₂"][1][0] == 0  # no change at initialisation


def test_stop_keeps_the_best_output(qtbot, viewer, dip) -> None:
    """Stop mid-training: no result, and the output shows the best step that had arrived."""
    dip._iterations.value = 100_000
    worker = dip.run()
    seen = _record(worker, viewer)

    def stop_after_three(item):
        if len(seen) == 3:
            dip._stop.native.click()

    worker.yielded.connect(stop_after_three)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT), qtbot.assertNotEmitted(worker.returned):
        pass
    out = viewer.layers["noisy [DIP]"]
    steps = [s for s, _, _ in seen[:3]]  # steps arriving after Stop are not shown
    best = next(s for s in steps if s.iteration == steps[-1].best_iteration)
    np.testing.assert_array_equal(out.data, best.image)
    assert out.metadata["status"] == "stopped" and out.metadata["best_iteration"] == best.iteration
    assert dip._run.enabled and dip.worker is None


def test_run_again_without_restarting(qtbot, viewer, dip) -> None:
    """A second run (another optimiser) after the first adds its own output; the first stays."""
    for optimizer in ("adam", "gd"):
        dip._optimizer.value = optimizer
        worker = dip.run()
        with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
            pass
    outputs = [layer for layer in viewer.layers if layer.name.startswith("noisy [DIP]")]
    assert [o.metadata["params"]["optimizer"] for o in outputs] == ["adam", "gd"]
    assert not np.array_equal(outputs[0].data, outputs[1].data)


def test_defaults_stop_without_a_reference(qtbot, viewer, dip) -> None:
    """Without a clean image the run keeps its output by the held-out pixels and stops on patience."""
    dip._reference.value = None
    dip._iterations.value, dip._patience.value = 2000, 30
    worker = dip.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    result = dip._results[()]
    assert result.criterion == "holdout" and result.params["iterations_run"] < 2000
    assert result.best_iteration == result.iterations[np.argmin(result.validation)]
    assert set(dip._fit_plot.curves) == {"loss", "held-out residual"}
    assert dip._fit_plot.marker == result.best_iteration
    assert viewer.layers["noisy [DIP]"].metadata["params"]["patience"] == 30
