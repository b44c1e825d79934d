"""The npe2 manifest: valid, importable, and its sample data open in a viewer."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from napari_ntk_denoise.io.samples import SIGMA

PLUGIN = "napari-ntk-denoise"
ROOT = Path(__file__).resolve().parents[2]


def test_npe2_validate_with_imports() -> None:
    """``npe2 validate napari-ntk-denoise --imports`` passes (finds the installed manifest)."""
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN, "--imports"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_root_manifest_is_the_installed_manifest() -> None:
    """The manifest a reader finds at the repository root is the one npe2 loads from the package."""
    packaged = resources.files("napari_ntk_denoise") / "napari.yaml"
    assert (ROOT / "napari.yaml").read_bytes() == packaged.read_bytes(), "copy the package's napari.yaml to the root"


@pytest.mark.parametrize(
    ("key", "shape", "rgb"),
    [("camera", (512, 512), False), ("astronaut", (512, 512, 3), True), ("fluorescence", (256, 256), False)],
)
def test_sample_data_opens(viewer, key: str, shape: tuple[int, ...], rgb: bool) -> None:
    """Each sample opens a noisy image over its hidden clean reference."""
    viewer.open_sample(PLUGIN, key)
    assert [layer.name for layer in viewer.layers] == [f"{key} (clean)", f"{key} (noisy)"]
    clean, noisy = viewer.layers
    assert clean.data.shape == noisy.data.shape == shape
    assert clean.rgb is noisy.rgb is rgb
    assert not clean.visible and noisy.visible
    assert noisy.data.dtype == np.float32 and 0 <= noisy.data.min() and noisy.data.max() <= 1
    assert noisy.metadata["noise"]["sigma"] == SIGMA
    # clipping at 0 and 1 shrinks the spread a little
    assert 0.8 * SIGMA < (noisy.data - clean.data).std() < 1.02 * SIGMA
