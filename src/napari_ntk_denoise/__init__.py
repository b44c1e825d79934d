"""napari-ntk-denoise: closed-form neural-tangent-kernel denoising and deep-image-prior training.

The engine (everything importable from this package) needs no Qt or napari; the widgets live in
:mod:`napari_ntk_denoise._widgets`.
"""

from .denoise import NTKResult, StageResult, denoise_ntk, iter_denoise_ntk, iter_filter, low_rank_filter
from .events import Progress, TwicingStep
from .kernels import CNNKernel
from .networks import VanillaCNN, empirical_ntk
from .nystrom import LowRankFilter, iter_nystrom, sample_anchors

__version__ = "0.1.0"

__all__ = [
    "CNNKernel",
    "LowRankFilter",
    "NTKResult",
    "Progress",
    "StageResult",
    "TwicingStep",
    "VanillaCNN",
    "denoise_ntk",
    "empirical_ntk",
    "iter_denoise_ntk",
    "iter_filter",
    "iter_nystrom",
    "low_rank_filter",
    "sample_anchors",
]
