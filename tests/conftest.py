"""Shared fixtures: small deterministic test images and the shared data folder; GUI tests skipped
without a display (Qt aborts the whole process when it cannot open one)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_DISPLAY = (
    "GUI tests (marker gui) skipped: no display (DISPLAY/WAYLAND_DISPLAY unset) and no Xvfb; install it "
    "(as root: `bash tools/install_xvfb.sh`, which `make test` runs; otherwise `apt-get install xvfb` and the "
    "X/GL libraries that script lists) and rerun `make test`, which then runs them under xvfb-run"
)
#: number of GUI tests skipped for want of a display
_SKIPPED = pytest.StashKey[int]()


def _no_display() -> bool:
    """True on Linux without an X or Wayland display and without an explicit Qt platform."""
    return sys.platform.startswith("linux") and not any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the GUI tests (marked by ``tests/_widgets/conftest.py``) where Qt would find no display."""
    if not _no_display():
        return
    skip = pytest.mark.skip(reason=NO_DISPLAY)
    gui = [item for item in items if item.get_closest_marker("gui")]
    for item in gui:
        item.add_marker(skip)
    config.stash[_SKIPPED] = len(gui)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """One line saying why the GUI tests were skipped and how to run them."""
    if config.stash.get(_SKIPPED, 0):
        terminalreporter.write_line(f"{config.stash[_SKIPPED]} {NO_DISPLAY}", yellow=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def smooth_image(shape=(24, 24), channels: int | None = None, seed: int = 0) -> np.ndarray:
    """Piecewise-smooth test image in [0, 1]: a gradient, a disc and a bar."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    img = 0.2 + 0.4 * xx + 0.3 * ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.08) + 0.2 * (np.abs(yy - 0.7) < 0.08)
    if channels is None:
        return img
    tint = np.linspace(0.8, 1.2, channels)
    return np.clip(img[..., None] * tint, 0, 1)


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared test data not found at {DATA} (the ../shared/data folder beside the repository)")
    return DATA


#: glibc's mallopt and malloc_trim (engine._heap) act only there
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def resident_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def freed_block_returns(nbytes: int = 256 * 2**20) -> int:
    """Bytes of a touched and freed ``nbytes`` block that leave the resident set at once."""
    import torch

    block = torch.empty(nbytes // 4, dtype=torch.float32)
    block.fill_(1.0)  # every page resident
    held = resident_bytes()
    del block
    return held - resident_bytes()
