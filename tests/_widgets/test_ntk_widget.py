"""NTK Filter widget: full runs in a worker, in-place streaming, per-plane stops and the t slider, doubtful
stops, stop, robustness."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from skimage.metrics import peak_signal_noise_ratio as psnr

from conftest import GLIBC, freed_block_returns
from napari_ntk_denoise import TiledResult, TwicingStep, iter_denoise_ntk
from napari_ntk_denoise._widgets import _ntk_widget

TIMEOUT = 120_000  # ms; a 32 x 32 run takes about a second, the machine may be shared


def _messages() -> list[str]:
    return [str(n.message) for n in notification_manager.records]


@pytest.fixture
def ntk(viewer, open_widget, small, camera_pair):
    """NTK Filter opened from the manifest, over a noisy image (scaled, shifted) and its reference."""
    clean, noisy = camera_pair
    viewer.add_image(clean, name="clean")
    viewer.add_image(noisy, name="noisy", scale=(2.0, 3.0), translate=(5.0, -7.0))
    widget = small(open_widget("NTK Filter"))
    widget._image.value = viewer.layers["noisy"]
    return widget


def test_run_streams_into_one_layer_updated_in_place(qtbot, viewer, ntk, camera_pair) -> None:
    """Twicing steps update one output layer in place; the result carries its metadata."""
    clean, noisy = camera_pair
    ntk._reference.value = viewer.layers["clean"]
    assert ntk._sigma.value == pytest.approx(25 / 255, rel=0.35)  # auto-estimated when chosen
    seen = []

    def record(item):  # connected after the widget's own handler: sees the layer after each step
        if isinstance(item.event, TwicingStep):
            seen.append((len(viewer.layers), item.event.t, viewer.layers[-1].data.copy()))

    worker = ntk.run()
    worker.yielded.connect(record)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert len(seen) >= 2
    assert {n for n, _, _ in seen} == {3}  # the output layer was added once
    assert not np.array_equal(seen[0][2], seen[-1][2])  # and its data changed in place
    assert [t for _, t, _ in seen] == sorted(t for _, t, _ in seen)
    out = viewer.layers["noisy [NTK]"]
    np.testing.assert_array_equal(viewer.layers["noisy"].data, noisy)  # source untouched
    np.testing.assert_array_equal(out.scale, (2.0, 3.0))
    np.testing.assert_array_equal(out.translate, (5.0, -7.0))
    meta = out.metadata
    assert meta["source"] == "noisy" and meta["sigma_estimated"] and meta["t"] == meta["t_shown"] >= 1
    assert meta["params"]["kernel_size"] == 3 and meta["timings"]["total"] > 0
    assert psnr(clean, np.clip(out.data, 0, 1), data_range=1) > psnr(clean, noisy, data_range=1) + 2


def test_the_guided_filter_is_the_default(open_widget) -> None:
    """A fresh NTK Filter dock has the two-stage filter ticked, its kernel control shown, as the engine."""
    widget = open_widget("NTK Filter")
    assert widget._guided.value and widget._params()["guided"] and not widget._guided_kernel.native.isHidden()


def test_guided_stage_kernel_is_chosen_with_the_guided_stage(qtbot, viewer, ntk) -> None:
    """The guided kernel control shows with the guided stage and reaches the engine and the metadata."""
    assert ntk._guided_kernel.native.isHidden() and ntk._guided_kernel.value == "nngp"
    ntk._guided.value = True
    assert not ntk._guided_kernel.native.isHidden()  # (the dock itself is not shown in these tests)
    ntk._guided_kernel.value = "ntk"
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    params = viewer.layers["noisy [NTK]"].metadata["params"]
    assert params["guided"] and params["guided_kernel"] == "ntk"


def test_t_slider_rerenders_without_recomputing(qtbot, viewer, ntk, camera_pair) -> None:
    """After a run the slider re-renders z(t) from the stored result, and the plot follows."""
    ntk._reference.value = viewer.layers["clean"]
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    result = ntk._results[()].result
    out = viewer.layers["noisy [NTK]"]
    assert ntk._t.enabled and ntk._t.value == 0 and ntk._t.min == -int(np.searchsorted(result.t_grid, result.t))
    assert set(ntk._plot.curves) == {"SURE estimate", "PSNR vs reference"}
    assert ntk._plot.marker == result.t
    ntk._t.value = ntk._t.min  # t = 1: the most strongly filtered output
    assert ntk.worker is None  # nothing was started
    assert len(viewer.layers) == 3
    np.testing.assert_allclose(out.data, result.render(result.t_grid[0]), rtol=1e-6)
    assert out.metadata["t_shown"] == result.t_grid[0] and out.metadata["t"] == result.t
    assert ntk._plot.marker == result.t_grid[0]
    smooth, chosen = out.data.std(), result.image.std()
    assert smooth < chosen  # z(1) is smoother than z(t*)


def test_stop_mid_kernel(qtbot, viewer, ntk) -> None:
    """Stop pressed during the kernel stage ends the run before any output exists."""
    worker = ntk.run()
    stages = []

    def stop_at_kernel(item):
        stages.append(item.event)
        if len(stages) == 1:
            ntk._stop.native.click()

    worker.yielded.connect(stop_at_kernel)
    with qtbot.waitSignal(worker.aborted, timeout=TIMEOUT), qtbot.assertNotEmitted(worker.returned):
        pass
    qtbot.waitUntil(lambda: ntk.worker is None)
    assert stages[0].done < stages[0].total  # the first event is inside the kernel stage
    assert "noisy [NTK]" not in viewer.layers
    assert ntk._run.enabled and not ntk._stop.enabled
    if GLIBC:  # the stopped run was ended, not left suspended: the engine keeps no freed memory
        assert freed_block_returns() > 200 * 2**20


def test_second_run_is_refused_while_running(qtbot, viewer, ntk) -> None:
    """Run while a run goes is refused with a message; the first run completes."""
    worker = ntk.run()
    assert ntk.run() is None
    assert not ntk._run.enabled
    assert any("already in progress" in m for m in _messages())
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert "noisy [NTK]" in viewer.layers and ntk._run.enabled


def _run_removing_the_source(qtbot, viewer, ntk):
    """Start a run that removes the ``noisy`` source layer at its first yield; wait for its end."""
    worker = ntk.run()

    def remove(item):
        if "noisy" in viewer.layers:
            viewer.layers.remove("noisy")

    worker.yielded.connect(remove)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    return worker


def test_removing_the_source_stops_the_run(qtbot, viewer, ntk) -> None:
    """Removing the source layer mid-run stops the worker; nothing is added afterwards."""
    worker = _run_removing_the_source(qtbot, viewer, ntk)
    assert worker.abort_requested
    assert [layer.name for layer in viewer.layers] == ["clean"]


def test_output_layer_owns_its_data(qtbot, viewer, ntk) -> None:
    """The output layer draws from its own contiguous buffer, shared with neither the source nor the run."""
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    data = viewer.layers["noisy [NTK]"].data
    assert data.flags.owndata and data.flags.c_contiguous
    assert not np.shares_memory(data, ntk._out) and not np.shares_memory(data, viewer.layers["noisy"].data)


def test_removing_the_source_after_a_run_and_during_a_second_run(qtbot, viewer, ntk) -> None:
    """Removing the source right after a finished run, and during a run after it, raises nothing."""
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    viewer.layers.remove("noisy")
    qtbot.wait(200)  # let the canvas redraw the output after the removal
    viewer.add_image(viewer.layers["clean"].data.copy(), name="noisy")
    ntk._image.value = viewer.layers["noisy"]
    worker = _run_removing_the_source(qtbot, viewer, ntk)
    qtbot.wait(200)
    assert worker.abort_requested and ntk.worker is None and ntk._run.enabled
    assert "noisy [NTK]" in viewer.layers


def test_closing_the_viewer_stops_the_run(qtbot, viewer, ntk) -> None:
    """Closing the viewer mid-run stops the worker without an error."""
    worker = ntk.run()
    errors = []
    worker.errored.connect(errors.append)
    worker.yielded.connect(lambda _: viewer.close())
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert worker.abort_requested and not errors


def test_rgba_and_stack_layers(qtbot, viewer, open_widget, small, camera_pair) -> None:
    """RGBA keeps its alpha; a (2, H, W) stack is filtered plane by plane with its scale kept."""
    clean, noisy = camera_pair
    rgba = np.stack([noisy, noisy[::-1], noisy.T, np.full_like(noisy, 0.5)], axis=-1)
    stack = np.stack([noisy, noisy[:, ::-1]])
    viewer.add_image(rgba, name="rgba", rgb=True)
    viewer.add_image(stack, name="stack", scale=(4.0, 1.0, 1.0))
    widget = small(open_widget("NTK Filter"))
    for name in ("rgba", "stack"):
        widget._image.value = viewer.layers[name]
        worker = widget.run()
        with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
            pass
    out_rgba, out_stack = viewer.layers["rgba [NTK]"], viewer.layers["stack [NTK]"]
    assert out_rgba.rgb and out_rgba.data.shape == rgba.shape
    np.testing.assert_array_equal(out_rgba.data[..., 3], 0.5)
    assert out_stack.data.shape == stack.shape
    np.testing.assert_array_equal(out_stack.scale, (4.0, 1.0, 1.0))
    assert [p["index"] for p in out_stack.metadata["planes"]] == [[0], [1]]
    plane0, plane1 = widget._results[(0,)].image, widget._results[(1,)].image
    np.testing.assert_array_equal(out_stack.data[0], plane0)
    np.testing.assert_array_equal(out_stack.data[1], plane1)
    assert not np.allclose(plane0, plane1)
    np.testing.assert_array_equal(viewer.layers["stack"].data, stack)


def test_labels_only_or_empty_viewer_gives_a_message(viewer, open_widget) -> None:
    """No image layer: a clear notification and no worker, for an empty viewer and for Labels."""
    widget = open_widget("NTK Filter")
    assert widget.run() is None
    assert "empty" in _messages()[-1]
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="masks")
    assert widget.run() is None
    assert "Labels" in _messages()[-1]


class _RecordingArray:
    """Array-like that records which planes dask reads from it (its chunks are single planes)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.planes_read: list[int] = []

    def __getitem__(self, key):
        first = key[0]
        self.planes_read.extend(range(*first.indices(self.shape[0])) if isinstance(first, slice) else [int(first)])
        return self.data[key]


def test_dask_stack_is_read_plane_by_plane_tiled_and_streamed(qtbot, viewer, open_widget, small) -> None:
    """A lazy (dask) stack with planes above the tile size: planes are read one at a time, tiled with
    per-tile progress, each shown as soon as it is done, and equal to the engine's tiled result."""
    da = pytest.importorskip("dask.array")
    from napari_ntk_denoise import Progress, denoise_tiled

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:80, :80] / 80
    clean = np.stack([0.3 + 0.4 * xx + 0.2 * np.sin((3 + z) * yy) for z in range(5)]).astype(np.float32)
    stack = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    source = _RecordingArray(stack)
    viewer.add_image(da.from_array(source, chunks=(1, 80, 80)), name="lazy")
    widget = small(open_widget("NTK Filter"))
    widget._image.value = viewer.layers["lazy"]
    widget._tile.value = 64
    source.planes_read.clear()
    seen: dict[str, list] = {"tiles": [], "done": []}

    def record(item):
        if isinstance(item.event, Progress) and item.event.stage == "tiles":
            seen["tiles"].append((item.index, item.event.done, item.event.total))
        elif type(item.event).__name__ == "PlaneDone":
            out = viewer.layers["lazy [NTK]"].data
            seen["done"].append((item.index, set(source.planes_read), out[item.index].copy()))

    worker = widget.run()
    worker.yielded.connect(record)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert [index for index, _, _ in seen["done"]] == [(z,) for z in range(5)]
    assert 4 not in seen["done"][0][1]  # the last plane was not read when the first was shown
    assert sorted(set(source.planes_read)) == list(range(5))
    assert {(i, total) for i, _, total in seen["tiles"]} == {((z,), 4) for z in range(5)}
    out = viewer.layers["lazy [NTK]"].data
    for (index, _, shown) in seen["done"]:
        np.testing.assert_array_equal(shown, out[index])  # streamed as final
    expected, res = denoise_tiled(stack[3], None, tile=64, **widget._params())
    np.testing.assert_allclose(out[3], expected, atol=1e-6)
    meta = viewer.layers["lazy [NTK]"].metadata
    assert meta["planes"][3]["n_tiles"] == 4 and meta["planes"][3]["t"] == res.t
    assert meta["planes"][3]["stop_warnings"] == res.stop_warnings
    kept = denoise_tiled(stack[3], None, tile=64, keep_filters=True, **widget._params())[1]
    spans = [res.offsets() for res in widget._results.values()]
    assert widget._t.enabled
    assert (widget._t.min, widget._t.max) == (min(lo for lo, _ in spans), max(hi for _, hi in spans))
    assert all(isinstance(res.result, TiledResult) for res in widget._results.values())
    widget._t.value = widget._t.min  # every tile moves from its own SURE step
    np.testing.assert_allclose(viewer.layers["lazy [NTK]"].data[3], kept.render_offset(widget._t.min), atol=1e-6)
    assert viewer.layers["lazy [NTK]"].metadata["planes"][3]["t_shown"] == kept.step_at(widget._t.min)
    assert widget._t_label.value.startswith(f"tiled plane: smoothing step per tile {kept.step_at(widget._t.min)}")


def test_auto_tile_is_chosen_on_the_middle_plane(qtbot, viewer, open_widget, small, monkeypatch) -> None:
    """With the tile size at *auto*, the side is :func:`choose_tile`'s on the middle plane, and
    every plane is denoised in tiles of it."""
    rng = np.random.default_rng(3)
    stack = rng.random((3, 80, 80)).astype(np.float32)
    viewer.add_image(stack, name="stack")
    widget = small(open_widget("NTK Filter"))
    widget._image.value = viewer.layers["stack"]
    assert widget._tile.value == 0 and widget._tile.native.specialValueText() == "auto"
    seen = []

    def choose(image, channel_axis=None, device=None, **options):
        seen.append(image)
        return 64

    monkeypatch.setattr(_ntk_widget, "fixed_tile", lambda *args, **options: None)  # 80 fits in one tile
    monkeypatch.setattr(_ntk_widget, "choose_tile", choose)
    with qtbot.waitSignal(widget.run().finished, timeout=TIMEOUT):
        pass
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], stack[1])
    planes = viewer.layers["stack [NTK]"].metadata["planes"]
    assert all(planes[z]["tile"] == 64 and planes[z]["n_tiles"] == 4 for z in range(3))


def test_poisson_gaussian_model_estimates_and_inverts(qtbot, viewer, open_widget, small) -> None:
    """Poisson-Gaussian data: parameters estimated, the GAT inverted for streamed, final and slider images."""
    from napari_ntk_denoise.microscopy.vst import gat_inverse

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:40, :40] / 40
    clean = np.stack([5 + 60 * (0.3 + 0.5 * xx + 0.2 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.1))] * 2)
    noisy = (2.0 * rng.poisson(clean / 2.0) + 3.0 * rng.standard_normal(clean.shape)).astype(np.float32)
    viewer.add_image(noisy, name="counts")
    widget = small(open_widget("NTK Filter"))
    widget._image.value = viewer.layers["counts"]
    widget._noise_model.value = "poisson-gaussian"
    assert widget._gain.native.isVisibleTo(widget.native) and not widget._sigma.native.isVisibleTo(widget.native)
    widget._gain.value = 2.0  # the read noise left at auto: refused with a message
    assert widget.run() is None and "both" in _messages()[-1]
    widget._gain.value = 0.0
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    out = viewer.layers["counts [NTK]"]
    est = out.metadata["planes"][0]["poisson_gaussian"]
    assert est["gain"] == pytest.approx(2.0, rel=0.3)
    assert np.mean((out.data - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2)
    assert out.data.mean() == pytest.approx(clean.mean(), rel=0.02)
    plane = widget._results[(1,)]
    widget._t.value = widget._t.min
    np.testing.assert_allclose(out.data[1], gat_inverse(plane.result.render(plane.result.t_grid[0]), plane.noise),
                               rtol=1e-5)


def test_volume_patches_filter_each_z_stack(qtbot, viewer, open_widget, small) -> None:
    """3-D patches: a (T, Z, Y, X) layer is filtered volume by volume, as denoise_ntk(volume=True)."""
    from napari_ntk_denoise import denoise_ntk

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:24, :24] / 24
    clean = np.stack([np.stack([0.3 + 0.4 * xx + 0.2 * (yy > 0.5)] * 6)] * 2).astype(np.float32)
    noisy = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    viewer.add_image(noisy[0, 0], name="plane")
    viewer.add_image(noisy, name="tzyx")
    widget = small(open_widget("NTK Filter"))
    widget._volume.value = True
    widget._image.value = viewer.layers["plane"]
    assert widget.run() is None and "Z axis" in _messages()[-1]
    widget._image.value = viewer.layers["tzyx"]
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    out = viewer.layers["tzyx [NTK]"]
    assert [p["index"] for p in out.metadata["planes"]] == [[0], [1]]
    assert out.metadata["planes"][1]["params"]["volume"]
    expected, res = denoise_ntk(noisy[1], None, **{k: v for k, v in widget._params().items() if k != "stream_steps"})
    np.testing.assert_allclose(out.data[1], expected, atol=1e-6)
    assert widget._t.enabled and widget._results[(1,)].result.filter.shape == (6, 24, 24)
    assert np.mean((out.data - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2)


def _two_noise_levels() -> np.ndarray:
    """A (2, 48, 48) stack of the cameraman, plane 0 with noise 0.03 and plane 1 with 0.1 (different stops)."""
    from skimage import data, img_as_float32, transform

    clean = transform.resize(img_as_float32(data.camera()), (48, 48), anti_aliasing=True).astype(np.float32)
    rng = np.random.default_rng(4)
    return np.stack([clean + rng.normal(0, s, clean.shape) for s in (0.03, 0.1)]).astype(np.float32)


@pytest.fixture
def stack_run(qtbot, viewer, open_widget):
    """NTK Filter run over a two-plane stack whose planes have different noise levels (kernel size 5)."""
    viewer.add_image(_two_noise_levels(), name="zstack")
    widget = open_widget("NTK Filter")
    controls = widget._filter_controls
    controls.kernel_size.value, controls.fraction.value, controls.rank.value = 5, 0.1, 32
    widget._guided.value = False
    widget._image.value = viewer.layers["zstack"]
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    return widget


def test_each_plane_keeps_its_own_stop_shown_for_the_plane_on_screen(viewer, stack_run) -> None:
    """Planes with different noise get different SURE steps; the label and plot follow the dims slider."""
    (t0, plane0), (t1, plane1) = [(stack_run._results[(z,)].result.t, stack_run._results[(z,)]) for z in (0, 1)]
    assert t0 > t1  # less noise: less smoothing, a later stop
    meta = viewer.layers["zstack [NTK]"].metadata
    assert [p["t"] for p in meta["planes"]] == [p["t_shown"] for p in meta["planes"]] == [t0, t1]
    for z, (t, plane) in enumerate([(t0, plane0), (t1, plane1)]):
        viewer.dims.set_current_step(0, z)
        assert stack_run._t_label.value.startswith(f"smoothing step t = {t}   (chosen by SURE: {t};")
        assert stack_run._plot.marker == t
        np.testing.assert_array_equal(stack_run._plot.curves["SURE estimate"][0], plane.result.t_grid)


def test_t_slider_moves_every_plane_from_its_own_stop(viewer, stack_run) -> None:
    """The slider is an offset on the t grid: each plane re-renders at its own SURE step plus the offset."""
    out = viewer.layers["zstack [NTK]"]
    planes = [stack_run._results[(z,)] for z in (0, 1)]
    chosen = [int(np.searchsorted(p.result.t_grid, p.result.t)) for p in planes]
    n = len(planes[0].result.t_grid)
    assert (stack_run._t.min, stack_run._t.value, stack_run._t.max) == (-max(chosen), 0, n - 1 - min(chosen))
    stack_run._t.value = 3
    shown = [int(p.result.t_grid[c + 3]) for p, c in zip(planes, chosen)]
    for z, (plane, t) in enumerate(zip(planes, shown)):
        np.testing.assert_allclose(out.data[z], plane.result.render(t), rtol=1e-6)
    assert [p["t_shown"] for p in out.metadata["planes"]] == shown and out.metadata["t_offset"] == 3
    viewer.dims.set_current_step(0, 1)
    label = stack_run._t_label.value
    assert label.startswith(f"smoothing step t = {shown[1]}   (chosen by SURE: {planes[1].result.t};")
    assert stack_run._plot.marker == shown[1]
    stack_run._t.value = stack_run._t.min  # every plane at the grid's first step (the earlier stop held there)
    assert [p["t_shown"] for p in out.metadata["planes"]] == [1, 1]
    stack_run._t.value = 0
    for z, plane in enumerate(planes):
        np.testing.assert_allclose(out.data[z], plane.image, rtol=1e-5, atol=1e-6)


def test_planes_without_eigenimages_stay_at_their_stop(qtbot, viewer, ntk, monkeypatch) -> None:
    """Eigenimages over the memory budget: the slider is off and the label says why."""
    monkeypatch.setattr(_ntk_widget, "RENDER_BUDGET", 0)
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    res = ntk._results[()].result
    assert not ntk._t.enabled and not ntk._results[()].renderable
    assert ntk._t_label.value.startswith(f"smoothing step t = {res.t} ") and "not kept" in ntk._t_label.value


def test_doubtful_stop_is_marked_per_plane(qtbot, viewer, open_widget, small, camera_pair, monkeypatch) -> None:
    """A plane whose result has stop_warnings gets an orange label with the reason, an orange marker and
    its warnings in the layer metadata; a result without the key (older engine) reads as sound."""
    reason = "SURE goes negative: the noise level is over-estimated"
    calls = []

    def engine(*args, **kwargs):
        res = yield from iter_denoise_ntk(*args, **kwargs)
        calls.append(res)
        if len(calls) == 2:
            res.params["stop_warnings"] = [reason]
        else:
            res.params.pop("stop_warnings", None)
        return res

    monkeypatch.setattr(_ntk_widget, "iter_denoise_ntk", engine)
    _, noisy = camera_pair
    viewer.add_image(np.stack([noisy, noisy[:, ::-1]]), name="stack")
    widget = small(open_widget("NTK Filter"))
    widget._image.value = viewer.layers["stack"]
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    meta = viewer.layers["stack [NTK]"].metadata
    assert [p["stop_warnings"] for p in meta["planes"]] == [[], [reason]] and meta["doubtful_planes"] == [[1]]
    assert "doubtful on 1 of 2 planes" in _messages()[-1]
    viewer.dims.set_current_step(0, 1)
    t1 = widget._results[(1,)].result.t
    label = widget._t_label.value
    assert label.startswith(f"smoothing step t = {t1} ") and label.endswith(f"(doubtful: {reason})")
    assert _ntk_widget.DOUBT_COLOUR in widget._t_label.native.styleSheet()
    assert widget._plot.marker_colour == _ntk_widget.DOUBT_COLOUR and "doubtful" in widget._plot.marker_label
    viewer.dims.set_current_step(0, 0)
    assert "doubtful" not in widget._t_label.value and widget._t_label.native.styleSheet() == ""
    assert widget._plot.marker_colour != _ntk_widget.DOUBT_COLOUR


def test_output_inherits_colormap_and_contrast_limits(qtbot, viewer, ntk) -> None:
    """The output layer starts with the source's colormap and contrast limits."""
    source = viewer.layers["noisy"]
    source.colormap, source.contrast_limits = "magma", (0.1, 0.8)
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    out = viewer.layers["noisy [NTK]"]
    assert out.colormap.name == "magma" and tuple(out.contrast_limits) == pytest.approx((0.1, 0.8))
