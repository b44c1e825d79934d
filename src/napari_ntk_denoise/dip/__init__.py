"""Deep-image-prior training (paper sections 5-6): architectures, streamed trainer, diagnostics.

Qt-free; numpy at the public edge, torch inside.
"""

from .architectures import ARCHITECTURES, Autoencoder, EncoderDecoder, SkipNet, UNet, build_network, min_image_size
from .config import DIPConfig, default_style, resolve_criterion
from .device import resolve_device
from .diagnostics import effective_weights, ntk_top_eigenvalue, preactivation_eigenimages, weight_change
from .events import DIPProgress, DIPResult, DIPStep
from .stopping import DIPCollapseWarning, OutputAverage
from .trainer import iter_dip, train_dip

__all__ = [
    "ARCHITECTURES",
    "Autoencoder",
    "DIPCollapseWarning",
    "DIPConfig",
    "DIPProgress",
    "DIPResult",
    "DIPStep",
    "EncoderDecoder",
    "SkipNet",
    "UNet",
    "build_network",
    "default_style",
    "effective_weights",
    "iter_dip",
    "min_image_size",
    "ntk_top_eigenvalue",
    "OutputAverage",
    "preactivation_eigenimages",
    "resolve_criterion",
    "resolve_device",
    "train_dip",
    "weight_change",
]
