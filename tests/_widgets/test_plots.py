"""The docked curve plot: a legend entry only for a curve with a point to draw."""

from __future__ import annotations

import numpy as np

from napari_ntk_denoise._widgets._plots import CurvePlot


def test_legend_lists_only_curves_that_can_be_drawn(qtbot) -> None:
    plot = CurvePlot("test", log_y=True)
    qtbot.addWidget(plot)
    plot.set_curve("drawn", [1, 2, 3], [1.0, 0.5, 0.2])
    plot.set_curve("all missing", [1, 2, 3], [np.nan] * 3)
    plot.set_curve("zero on a log axis", [1, 2, 3], [0.0] * 3)
    assert list(plot.shown_curves()) == ["drawn"]
    plot.resize(300, 200)
    image = plot.grab().toImage()  # painting with hidden curves and a marker does not fail
    plot.set_marker(2, "best 2")
    assert plot.grab().toImage().size() == image.size()
