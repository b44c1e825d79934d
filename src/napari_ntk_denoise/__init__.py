"""napari-ntk-denoise: closed-form neural-tangent-kernel denoising and deep-image-prior training.

The engine (everything importable from this package) needs no Qt or napari; the widgets live in
:mod:`napari_ntk_denoise._widgets`.
"""

from .engine.denoise import (
    NTKResult,
    PilotBlend,
    StageResult,
    denoise_ntk,
    iter_denoise_ntk,
    iter_filter,
    low_rank_filter,
)
from .engine.events import Progress, TwicingStep
from .engine.kernels import CNNKernel
from .engine.networks import VanillaCNN, empirical_ntk
from .engine.nystrom import LowRankFilter, iter_nystrom, sample_anchors
from .microscopy.noise_estimation import NoiseReport, estimate_poisson_gaussian, noise_report, stabilised_sigma
from .microscopy.stacks import denoise_stack, iter_denoise_stack
from .microscopy.tiling import TiledResult, denoise_tiled, iter_denoise_tiled
from .microscopy.vst import PoissonGaussian, gat_forward, gat_inverse

__version__ = "0.1.0"

__all__ = [
    "CNNKernel",
    "LowRankFilter",
    "NTKResult",
    "NoiseReport",
    "PilotBlend",
    "PoissonGaussian",
    "Progress",
    "StageResult",
    "TiledResult",
    "TwicingStep",
    "VanillaCNN",
    "denoise_ntk",
    "denoise_stack",
    "denoise_tiled",
    "empirical_ntk",
    "estimate_poisson_gaussian",
    "gat_forward",
    "gat_inverse",
    "iter_denoise_ntk",
    "iter_denoise_stack",
    "iter_denoise_tiled",
    "iter_filter",
    "iter_nystrom",
    "low_rank_filter",
    "noise_report",
    "sample_anchors",
    "stabilised_sigma",
]
