"""The napari dock widgets (all Qt code of the package lives in this subpackage)."""

from ._ntk_widget import NTKFilterWidget

__all__ = ["NTKFilterWidget"]
