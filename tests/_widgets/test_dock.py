"""What every dock owes a user: words on every control, a size that fits a screen, progress in view,
input problems told before a run starts, and no output layer before there is a result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from magicgui.widgets import Container, Label
from magicgui.widgets.bases import ButtonWidget, ValueWidget
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QSplitter

from napari_ntk_denoise import Progress, TwicingStep
from napari_ntk_denoise._widgets._dock import PLOT_MIN_HEIGHT
from napari_ntk_denoise.dip import DIPStep
from napari_ntk_denoise.microscopy.vst import PoissonGaussian

WIDGETS = ["NTK Filter", "DIP Training", "Eigenimage Inspector"]
TIMEOUT = 120_000  # ms
#: A 1080-pixel screen less the task bar.
SCREEN_HEIGHT = 1040


def _last_message() -> str:
    return str(notification_manager.records[-1].message)


@pytest.mark.parametrize("name", WIDGETS)
def test_every_control_has_a_tooltip(open_widget: Any, name: str) -> None:
    """Each input, button and section title says in words what it does."""
    widget = open_widget(name)
    controls = [w for w in widget.controls() if isinstance(w, ValueWidget | ButtonWidget) and not isinstance(w, Label)]
    assert len(controls) >= 6
    missing = [w.label or w.text for w in controls if not w.tooltip]
    assert not missing, f"controls without a tooltip in {name}: {missing}"
    assert all(section.collapsible.toolTip() for section in widget.sections())


def test_three_docks_fit_a_1080_pixel_screen(viewer: Any, open_widget: Any) -> None:
    """With all three widgets docked, the window's smallest height stays under a 1080-pixel screen."""
    widgets = [open_widget(name) for name in WIDGETS]
    for widget in widgets:
        assert widget.native.minimumSizeHint().height() < SCREEN_HEIGHT / 3, widget
    window = viewer.window._qt_window
    window.show()
    assert window.minimumSizeHint().height() <= SCREEN_HEIGHT
    for widget in widgets:  # the settings fold away at first
        assert widget.sections() and not any(s.expanded for s in widget.sections())


def test_controls_grow_when_a_label_gains_lines(qtbot: Any, viewer: Any, open_widget: Any) -> None:
    """A result label that wraps onto more lines takes room from the plot instead of being clipped."""
    widget = open_widget("Eigenimage Inspector")
    window = viewer.window._qt_window
    window.resize(1400, 950)
    window.show()
    qtbot.waitExposed(window)
    splitter = widget.native.findChild(QSplitter)
    before = splitter.sizes()
    widget._info.value = " ".join(["a long result message that wraps"] * 12)
    scroll = splitter.widget(0)
    qtbot.waitUntil(lambda: splitter.sizes()[0] > before[0] and scroll.verticalScrollBar().maximum() == 0,
                    timeout=2000)  # the whole form shows
    assert min(splitter.sizes()[1:]) >= PLOT_MIN_HEIGHT


def test_progress_line_follows_the_run(qtbot: Any, viewer: Any, open_widget: Any, small: Any, camera_pair: Any) -> None:
    """The NTK dock's own bar and text move with the stages, with the time elapsed, then say done."""
    viewer.add_image(camera_pair[1], name="noisy")
    widget = small(open_widget("NTK Filter"))
    widget._guided.value = True
    texts: list[tuple[str, float]] = []

    def record(item: Any) -> None:
        if isinstance(item.event, Progress):
            texts.append((widget._progress.text, widget._progress.fraction))

    worker = widget.run()
    worker.yielded.connect(record)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert len({t for t, _ in texts}) >= 3 and all("elapsed" in t for t, _ in texts)
    assert any("guided" in t for t, _ in texts) and any("kernel (1/2)" in t for t, _ in texts)
    fractions = [f for _, f in texts]
    assert fractions == sorted(fractions) and fractions[-1] > 0.6  # one bar over the two filter runs
    assert widget._progress.text.startswith("Done after")


def test_dip_progress_names_iterations_and_speed(qtbot: Any, viewer: Any, open_widget: Any, camera_pair: Any) -> None:
    """The DIP dock shows the iteration, iterations per second, and an upper bound of the time left."""
    viewer.add_image(camera_pair[1], name="noisy")
    widget = open_widget("DIP Training")
    widget._arch.value, widget._width.value, widget._iterations.value = "unet", 8, 300
    texts: list[str] = []
    worker = widget.run()
    worker.yielded.connect(lambda item: texts.append(widget._progress.text))
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert any("iteration" in t and "it/s" in t for t in texts)
    assert widget._progress.text.startswith("Done after")


@pytest.mark.parametrize("name", WIDGETS)
def test_unusable_image_is_refused_with_one_message(viewer: Any, open_widget: Any, name: str) -> None:
    """A tiny image with NaN: both problems in one message, shown before any worker starts."""
    image = np.ones((6, 40), np.float32)
    image[2, 3] = np.nan
    viewer.add_image(image, name="bad")
    widget = open_widget(name)
    assert widget.run() is None and widget.worker is None
    message = _last_message()
    assert "'bad'" in message and "NaN" in message and "6 x 40" in message
    assert widget._progress.text.startswith("Not started")


def test_noise_level_is_auto_for_an_unusable_image(viewer: Any, open_widget: Any, camera_pair: Any) -> None:
    """σ shows 'auto' (0) for an image with NaN, not a raw number, also after another image was chosen."""
    good = viewer.add_image(camera_pair[1], name="noisy")
    bad = viewer.add_image(np.full((32, 32), np.nan, np.float32), name="nan")
    widget = open_widget("NTK Filter")
    widget._image.value = good
    assert widget._sigma.value > 0
    widget._image.value = bad
    assert widget._sigma.value == 0 and widget._sigma.native.text() == "auto"


def test_no_output_layer_before_a_result(qtbot: Any, viewer: Any, open_widget: Any, small: Any) -> None:
    """The Poisson-Gaussian estimate adds no layer; the first streamed step does."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:40, :40] / 40
    clean = np.stack([5 + 60 * (0.3 + 0.5 * xx + 0.2 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.1))] * 2)
    counts = (2.0 * rng.poisson(clean / 2.0) + 3.0 * rng.standard_normal(clean.shape)).astype(np.float32)
    viewer.add_image(counts, name="counts")
    widget = small(open_widget("NTK Filter"))
    widget._noise_model.value = "poisson-gaussian"
    layers_at: dict[str, int] = {}

    def record(item: Any) -> None:
        kind = "estimate" if isinstance(item.event, PoissonGaussian) else type(item.event).__name__
        layers_at.setdefault(kind, len(viewer.layers))

    worker = widget.run()
    worker.yielded.connect(record)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert layers_at["estimate"] == 1 and layers_at[TwicingStep.__name__] == 2
    assert "estimated gain" in widget._t_label.value or "smoothing step t" in widget._t_label.value


def test_dip_output_appears_with_the_first_non_constant_output(
    qtbot: Any, viewer: Any, open_widget: Any, camera_pair: Any
) -> None:
    """The vanilla CNN starts at zero: no black layer at iteration 0, a layer from iteration 1."""
    viewer.add_image(camera_pair[1], name="noisy")
    widget = open_widget("DIP Training")
    widget._arch.value, widget._input.value, widget._width.value, widget._iterations.value = "vanilla", "image", 8, 4
    seen: list[tuple[int, int]] = []
    worker = widget.run()
    worker.yielded.connect(lambda item: isinstance(item.event, DIPStep)
                           and seen.append((item.event.iteration, len(viewer.layers))))
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert seen[0] == (0, 1) and seen[1] == (1, 2)
    assert "mean max |Δw|" not in widget._weights_plot.shown_curves() or np.isfinite(
        widget._weights_plot.curves["mean max |Δw|"][1]).any()


def test_sections_hold_the_advanced_settings(open_widget: Any) -> None:
    """The NTK dock's settings section holds the kernel and Nyström controls, folded at first."""
    widget = open_widget("NTK Filter")
    (settings, _stacks) = widget.sections()
    labels = {w.label for w in settings if not isinstance(w, Container)}
    assert {"network depth", "patch size (px)", "kernel", "sampled pixels", "eigenimages kept", "device"} <= labels
    settings.collapsible.expand(animate=False)
    assert settings.expanded
