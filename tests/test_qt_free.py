"""Importing the engine (every module outside ``_widgets``) must not import Qt or napari."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import napari_ntk_denoise as pkg

def engine_modules(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.endswith("._widgets"):
            continue
        module = importlib.import_module(info.name)
        yield info.name
        if info.ispkg:
            yield from engine_modules(module)

names = list(engine_modules(pkg))
gui = sorted({m.split(".")[0] for m in sys.modules} & {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari",
                                                       "magicgui", "superqt", "vispy"})
assert len(names) >= 3 and not gui, (names, gui)
"""


def test_engine_imports_no_qt() -> None:
    """Run in a fresh interpreter, so that no other test has imported Qt already."""
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
