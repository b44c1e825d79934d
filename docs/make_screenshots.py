"""Screenshots of the three widgets with real results, for the README (``docs/images/*.png``).

Run from the repository root, with a display (or under Xvfb)::

    xvfb-run -a python docs/make_screenshots.py

Each widget is opened from the plugin's manifest, run on a crop of a sample image (the full
512 x 512 samples take minutes on a laptop CPU), and the whole window is saved once the worker
has finished.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari._qt import qt_main_window
from qtpy.QtWidgets import QApplication

from napari_ntk_denoise.io._sample_data import noisy_astronaut, noisy_camera
from napari_ntk_denoise.io.samples import SIGMA

PLUGIN = "napari-ntk-denoise"
OUT = Path(__file__).resolve().parent / "images"


def _wait(widget: Any, timeout: float = 1800.0) -> None:
    """Process Qt events until the widget's worker has finished."""
    app, t0 = QApplication.instance(), time.perf_counter()
    app.processEvents()
    while widget.worker is not None:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{type(widget).__name__} still running after {timeout} s")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(5):
        app.processEvents()


def _viewer_with(sample: Callable[[], list], corner: tuple[int, int], size: int) -> napari.Viewer:
    """A viewer holding a ``size x size`` crop of a sample: hidden clean reference, noisy image."""
    viewer = napari.Viewer(title="napari-ntk-denoise")
    viewer.window.resize(1500, 950)
    r, c = corner
    for data, kwargs, _ in sample():
        viewer.add_image(np.ascontiguousarray(data[r : r + size, c : c + size]), **kwargs)
    return viewer


def _tile(viewer: napari.Viewer, columns: int = 2, gap: int = 8) -> None:
    """Place the visible layers side by side, bottom layer first, each points layer over the layer
    below it (napari's grid mode would give the inspector's pixel marker a square of its own)."""
    cells: list[list[Any]] = []
    for layer in viewer.layers:
        if layer.visible and isinstance(layer, napari.layers.Points) and cells:
            cells[-1].append(layer)
        elif layer.visible:
            cells.append([layer])
    shapes = [cell[0].data.shape[:-1] if getattr(cell[0], "rgb", False) else cell[0].data.shape for cell in cells]
    h, w = (max(shape[-k] for shape in shapes) + gap for k in (2, 1))
    for i, cell in enumerate(cells):
        offset = ((i // columns) * h, (i % columns) * w)
        for layer in cell:
            layer.translate = (0,) * (layer.ndim - 2) + offset


def _save(viewer: napari.Viewer, name: str, columns: int = 2) -> None:
    """Show the visible layers side by side and save the whole window."""
    _tile(viewer, columns)
    viewer.reset_view()
    QApplication.instance().processEvents()
    path = OUT / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")
    viewer.close()


def ntk_filter(size: int) -> None:
    """NTK Filter on the noisy camera, with the clean image as reference for the PSNR curve."""
    viewer = _viewer_with(noisy_camera, (40, 160), size)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "NTK Filter")
    widget._image.value = viewer.layers["camera (noisy)"]
    widget._reference.value = viewer.layers["camera (clean)"]
    widget.run()
    _wait(widget)
    _save(viewer, "ntk_filter")


def eigenimage_inspector(size: int) -> None:
    """Inspector on the noisy camera: eigenimages, eigenvalue decay and one pixel's weights."""
    viewer = _viewer_with(noisy_camera, (40, 160), size)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Eigenimage Inspector")
    widget._image.value = viewer.layers["camera (noisy)"]
    widget.run()
    _wait(widget)
    h, w = widget.filter.shape
    widget.show_weights((h // 3, w // 2))
    viewer.dims.set_current_step(0, 3)  # the fourth eigenimage
    _save(viewer, "eigenimage_inspector")


def dip_training(size: int, iterations: int) -> None:
    """DIP Training with its defaults (autoencoder, Adam, noise input, no reference: the held-out
    stop) on a crop of the noisy astronaut, beside the NTK filter's output on the same crop; prints
    both PSNRs against the hidden clean crop."""
    from napari_ntk_denoise import denoise_ntk
    from napari_ntk_denoise.engine.stopping import psnr

    viewer = _viewer_with(noisy_astronaut, (100, 180), size)
    noisy, clean = (viewer.layers[f"astronaut ({k})"].data for k in ("noisy", "clean"))
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "DIP Training")
    widget._image.value = viewer.layers["astronaut (noisy)"]
    widget._iterations.value = iterations
    widget.run()
    _wait(widget)
    dip = viewer.layers["astronaut (noisy) [DIP]"]
    ntk, _ = denoise_ntk(noisy, SIGMA, channel_axis=-1)
    viewer.add_image(np.clip(ntk, 0, 1), name="astronaut (noisy) [NTK filter]", rgb=True, contrast_limits=(0, 1))
    print(f"DIP: {psnr(np.clip(dip.data, 0, 1), clean, 1.0):.2f} dB at iteration {dip.metadata['best_iteration']} "
          f"(by {dip.metadata['criterion']}); NTK filter: {psnr(np.clip(ntk, 0, 1), clean, 1.0):.2f} dB; "
          f"noisy: {psnr(noisy, clean, 1.0):.2f} dB")
    widget._image.value = viewer.layers["astronaut (noisy)"]  # the new layer took the selection
    widget._plots.setCurrentIndex(0)  # loss and held-out residual, the marker at the kept iteration
    _save(viewer, "dip_training", columns=3)


def main() -> None:
    """Write the screenshots chosen on the command line (all by default)."""
    qt_main_window.SHOW_QT_WARNING = False  # no PyQt5 deprecation toast over the canvas (as in napari's tests)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="side of the crop of the samples")
    parser.add_argument("--iterations", type=int, default=3000, help="most DIP iterations (the widget's default)")
    parser.add_argument("--dip-size", type=int, default=128, help="side of the astronaut crop of the DIP shot")
    parser.add_argument("widgets", nargs="*", default=["ntk", "inspector", "dip"], help="which screenshots")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    shots = {"ntk": lambda: ntk_filter(args.size), "inspector": lambda: eigenimage_inspector(args.size),
             "dip": lambda: dip_training(args.dip_size, args.iterations)}
    for name in args.widgets:
        shots[name]()


if __name__ == "__main__":
    main()
