"""The options of a deep-image-prior run, validated once: :class:`DIPConfig`.

The trainer, the command line and the widget read their defaults and bounds from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

from .architectures import ARCHITECTURES, KERNEL_SIZE, STYLES, Architecture, Style

__all__ = [
    "ADAM_BETAS", "ADAM_LR", "CRITERIA", "DIPConfig", "DIP_LR", "MAX_ITERATIONS", "MAX_WIDTH", "PATIENCE",
    "default_style", "resolve_criterion",
]

Optimizer = Literal["adam", "gd"]
InputMode = Literal["image", "noise"]
Criterion = Literal["auto", "psnr", "sure", "holdout", "variance", "last"]
CRITERIA: tuple[str, ...] = ("auto", "psnr", "sure", "holdout", "variance", "last")
StyleChoice = Literal["auto", "ntk", "dip"]

#: Adam's (beta_1, beta_2), the paper's "standard hyperparameters" (section 6)
ADAM_BETAS = (0.9, 0.99)
#: default Adam learning rate of the NTK-style networks
ADAM_LR = 1e-3
#: default Adam learning rate of the DIP-style networks (that of Ulyanov et al.)
DIP_LR = 1e-2
#: iterations without a better output after which the command line and the widget stop
PATIENCE = 500
MAX_WIDTH = 4096
MAX_ITERATIONS = 1_000_000


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or int(value) != value or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive(name: str, value: float | None, what: str = "a positive finite number") -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def default_style(arch: Architecture, optimizer: Optimizer) -> Style:
    """Network design trained by default: ``"dip"`` for Adam on an encoder-decoder, else ``"ntk"``.

    The vanilla CNN exists for its NTK regime, and gradient descent is what the NTK analysis
    describes, so both keep the bias-free ReLU networks of the paper; Adam on a U-Net,
    autoencoder or skip network is the deep image prior, trained as Ulyanov et al. do.
    """
    return "dip" if optimizer == "adam" and arch != "vanilla" else "ntk"


def resolve_criterion(criterion: Criterion, reference: bool, input: InputMode, style: str) -> str:
    """The criterion that ``"auto"`` stands for; any other value is returned as it is.

    PSNR with a reference; else MC-SURE for image input to a network in the NTK style, whose
    output moves smoothly with its input; else the held-out pixels (noise input, and image input
    to the DIP-style networks, whose fixed-weight divergence misses how training fits the noise).
    """
    if criterion != "auto":
        return criterion
    return "psnr" if reference else "sure" if input == "image" and style == "ntk" else "holdout"


@dataclass(frozen=True)
class DIPConfig:
    """Options of one deep-image-prior run, checked when built.

    Attributes
    ----------
    arch : {"vanilla", "unet", "ae", "skip"}
        Architecture (:func:`~napari_ntk_denoise.dip.architectures.build_network`).
    optimizer : {"adam", "gd"}
        Adam with :data:`ADAM_BETAS`, or gradient descent without momentum.
    input : {"image", "noise"}
        Network input: the noisy image or noise (the DIP).
    width : int
        Hidden channels, 1 to :data:`MAX_WIDTH`.
    lr : float, optional
        Learning rate; by default :data:`DIP_LR` (Adam, DIP style), :data:`ADAM_LR` (Adam, NTK
        style), or ``1 / lambda_max`` of the empirical NTK at initialisation (gradient descent).
    iterations : int
        Most optimiser steps, 1 to :data:`MAX_ITERATIONS`.
    every : int
        Iterations between recorded steps (and criterion evaluations); iterations 1, 2, 4, ...
        before the first ``every`` are recorded too, so that the first outputs come at once.
    criterion : {"auto", "psnr", "sure", "holdout", "variance", "last"}
        Which output to keep (:mod:`~napari_ntk_denoise.dip.stopping`); ``"auto"`` is
        :func:`resolve_criterion`.  Ties keep the earlier iteration.
    patience : int, optional
        Stop once the criterion has not improved for this many iterations (never by default).
    style : {"auto", "ntk", "dip"}
        Design of the encoder-decoders (:class:`~napari_ntk_denoise.dip.architectures.EncoderDecoder`);
        ``"auto"`` is :func:`default_style`; the vanilla CNN is always ``"ntk"``.
    noise_channels : int
        Channels of the noise input (32 as in the DIP).
    kernel_size : int, optional
        Convolution size (11 for vanilla, 3 for the others by default).
    depth : int
        Weight layers of the vanilla CNN.
    eigenimages : int
        Leading eigenpairs of the last hidden layer's pre-activation covariance carried by each
        recorded step (paper Fig. 5), 0 to ``width``.
    seed : int
        Seeds the weights, the noise input and its jitter, the probes and the held-out pixels.
    time_limit : float, optional
        Seconds of training after which the run stops, keeping the best output so far.
    """

    arch: Architecture = "ae"
    optimizer: Optimizer = "adam"
    input: InputMode = "image"
    width: int = 64
    lr: float | None = None
    iterations: int = 3000
    every: int = 100
    criterion: Criterion = "auto"
    patience: int | None = None
    style: StyleChoice = "auto"
    noise_channels: int = 32
    kernel_size: int | None = None
    depth: int = 2
    eigenimages: int = 0
    seed: int = 0
    time_limit: float | None = None

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, ARCHITECTURES)
        _check_choice("optimizer", self.optimizer, ("adam", "gd"))
        _check_choice("input", self.input, ("image", "noise"))
        _check_choice("criterion", self.criterion, CRITERIA)
        _check_choice("style", self.style, ("auto", *STYLES))
        for name, high in (("width", MAX_WIDTH), ("iterations", MAX_ITERATIONS), ("every", MAX_ITERATIONS),
                           ("noise_channels", MAX_WIDTH)):
            _check_range(name, getattr(self, name), 1, high)
        _check_range("eigenimages", self.eigenimages, 0, self.width)
        if self.patience is not None:
            _check_range("patience", self.patience, 1, MAX_ITERATIONS)
        _check_positive("time_limit", self.time_limit, "a positive number of seconds")
        _check_positive("lr", self.lr)

    def resolve(self, reference: bool) -> "DIPConfig":
        """This configuration with ``style``, ``criterion`` and ``kernel_size`` made explicit.

        Raises
        ------
        ValueError
            A criterion the run cannot evaluate: ``"psnr"`` without a reference, ``"sure"``
            with noise input.
        """
        style = "ntk" if self.arch == "vanilla" else default_style(self.arch, self.optimizer) \
            if self.style == "auto" else self.style
        criterion = resolve_criterion(self.criterion, reference, self.input, style)
        if criterion == "psnr" and not reference:
            raise ValueError("criterion 'psnr' needs a reference image")
        if criterion == "sure" and self.input != "image":
            raise ValueError("criterion 'sure' needs input='image' (noise input has no MC-SURE; use 'holdout')")
        kernel_size = KERNEL_SIZE[self.arch] if self.kernel_size is None else self.kernel_size
        return replace(self, style=style, criterion=criterion, kernel_size=int(kernel_size))

    def settings(self) -> dict:
        """The run's parameters as recorded in ``DIPResult.params`` (a resolved configuration)."""
        keys = ("arch", "optimizer", "input", "style", "width", "kernel_size", "iterations", "every", "seed",
                "criterion", "patience", "time_limit")
        opts = asdict(self)
        out = {"method": "deep image prior", **{k: opts[k] for k in keys}}
        for k in ("width", "kernel_size", "iterations", "every", "seed"):
            out[k] = int(out[k])
        if self.arch == "vanilla":
            out["depth"] = int(self.depth)
        if self.input == "noise":
            out["noise_channels"] = int(self.noise_channels)
        return out
