"""Eigenimage Inspector widget: filter in a worker, eigenimages, eigenvalue plot, pixel clicks, reuse."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks

TIMEOUT = 120_000  # ms


@pytest.fixture
def inspector(viewer, open_widget, small, camera_pair):
    """Inspector opened from the manifest over a noisy image placed with a scale and offset."""
    _clean, noisy = camera_pair
    viewer.add_image(noisy, name="noisy", scale=(2.0, 3.0), translate=(10.0, 20.0))
    widget = small(open_widget("Eigenimage Inspector"))
    widget._image.value = viewer.layers["noisy"]
    widget._n_show.value = 8
    return widget


def _click(viewer, world: tuple[float, float]) -> None:
    """Dispatch a mouse press at a world position through the viewer's callbacks, as the canvas does."""
    mouse_press_callbacks(viewer, SimpleNamespace(type="mouse_press", position=world, modifiers=[], handled=False))


def test_filter_eigenimages_plot_and_clicks(qtbot, viewer, inspector) -> None:
    """A run shows eigenimages and the eigenvalue decay; each click updates one weights layer."""
    worker = inspector.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    filt = inspector.filter
    eigen = viewer.layers["noisy [eigenimages]"]
    assert eigen.data.shape == (8, 32, 32)
    np.testing.assert_array_equal(eigen.data, filt.eigenimages(8))
    np.testing.assert_array_equal(eigen.scale, (1.0, 2.0, 3.0))
    np.testing.assert_array_equal(eigen.translate, (0.0, 10.0, 20.0))
    assert eigen.metadata["rank"] == filt.rank and not eigen.metadata["reused"]
    assert eigen.metadata["timings"]["filter"] > 0
    x, lam = inspector._plot.curves["eigenvalues"]
    assert x[0] == 1 and lam[0] == pytest.approx(1.0) and np.all(np.diff(lam) <= 1e-12)
    assert inspector._plot.log_y

    _click(viewer, (10.0 + 2 * 5, 20.0 + 3 * 7))  # pixel (5, 7)
    weights = viewer.layers["noisy [filter weights]"]
    np.testing.assert_allclose(weights.data, filt.weights((5, 7)))
    assert weights.metadata["pixel"] == [5, 7]
    marker = viewer.layers["noisy [clicked pixel]"]
    np.testing.assert_array_equal(marker.data, [[5, 7]])
    np.testing.assert_array_equal(marker.scale, (2.0, 3.0))  # drawn on the pixel clicked
    n_layers, first = len(viewer.layers), weights.data.copy()
    _click(viewer, (10.0 + 2 * 20, 20.0 + 3 * 25))  # pixel (20, 25)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["noisy [filter weights]"].metadata["pixel"] == [20, 25]
    np.testing.assert_array_equal(marker.data, [[20, 25]])  # the same marker moved
    np.testing.assert_allclose(viewer.layers["noisy [filter weights]"].data, filt.weights((20, 25)))
    assert not np.allclose(viewer.layers["noisy [filter weights]"].data, first)
    _click(viewer, (-100.0, -100.0))  # outside the image: ignored
    assert viewer.layers["noisy [filter weights]"].metadata["pixel"] == [20, 25]


def test_reuses_the_filter_of_an_ntk_run(qtbot, viewer, open_widget, small, inspector) -> None:
    """The NTK Filter's filter (same layer and kernel parameters) is shown without recomputing."""
    ntk = small(open_widget("NTK Filter"))
    ntk._image.value = viewer.layers["noisy"]
    worker = ntk.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert inspector.run() is None  # no worker: reused
    assert inspector.filter is ntk._results[()].result.filter
    assert viewer.layers["noisy [eigenimages]"].metadata["reused"]
    inspector._filter_controls.kernel.value = "nngp"  # another kernel: computed anew
    worker = inspector.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert inspector.filter is not ntk._results[()].result.filter
