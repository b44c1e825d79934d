"""The napari dock widgets (all Qt code of the package lives in this subpackage)."""

from ._dip_widget import DIPTrainingWidget
from ._inspector_widget import EigenimageInspectorWidget
from ._ntk_widget import NTKFilterWidget

__all__ = ["DIPTrainingWidget", "EigenimageInspectorWidget", "NTKFilterWidget"]
