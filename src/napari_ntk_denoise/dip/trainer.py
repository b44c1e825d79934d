"""Deep-image-prior training, streamed: :func:`iter_dip` yields events, :func:`train_dip` drains it.

A network ``z(w)`` is fitted to one noisy image ``y`` by minimising ``1/2 ||z(w) - y||^2`` (paper
section 3.1) with Adam or plain gradient descent, from one of two inputs:

* ``input="image"``: the noisy image itself, with the output translated by its initial value,
  ``z~(w) = z(w) - z(w^0)``, so that ``z~^0 = 0`` as in twicing (paper section 6, eq. 9);
* ``input="noise"``: i.i.d. ``N(0, 1)`` noise with ``noise_channels`` channels (the DIP of
  Ulyanov et al.; paper section 5.1).

In the NTK regime (wide network, gradient descent, NTK parameterisation) image-input training is
the twicing ``z^{t+1} = z^t + eta Theta (y - z^t)`` of the analytic filter (eq. 9); with Adam the
filter adapts (eqs. 18-20).  Early stopping keeps the best output by PSNR against a reference
(oracle, as in the paper's experiments), else by Monte-Carlo SURE, else the last one.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Generator
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from skimage.restoration import estimate_sigma

from .architectures import ARCHITECTURES, KERNEL_SIZE, STYLES, Architecture, Style, build_network, min_image_size
from ..events import drain
from .device import empty_cache, resolve_device, retry_on_cpu
from .diagnostics import effective_weights, ntk_top_eigenvalue, preactivation_eigenimages, weight_change
from .events import DIPProgress, DIPResult, DIPStep
from .stopping import DIPCollapseWarning, OutputAverage, collapse_reason

__all__ = [
    "ADAM_BETAS", "ADAM_LR", "DIP_LR", "MAX_ITERATIONS", "MAX_WIDTH", "PATIENCE", "SURE_EPSILON", "default_style",
    "iter_dip", "resolve_criterion", "train_dip",
]

Optimizer = Literal["adam", "gd"]
InputMode = Literal["image", "noise"]
Criterion = Literal["auto", "psnr", "sure", "holdout", "variance", "last"]
CRITERIA: tuple[str, ...] = ("auto", "psnr", "sure", "holdout", "variance", "last")
StyleChoice = Literal["auto", "ntk", "dip"]

#: Adam's (beta_1, beta_2), the paper's "standard hyperparameters" (section 6)
ADAM_BETAS = (0.9, 0.99)
#: default Adam learning rate of the NTK-style networks (see :func:`iter_dip`, Notes)
ADAM_LR = 1e-3
#: default Adam learning rate of the DIP-style networks (that of Ulyanov et al.)
DIP_LR = 1e-2
#: standard deviation of the jitter added to a DIP-style network's noise input at every step
INPUT_JITTER = 1 / 30
#: a DIP-style noise input is uniform on [0, NOISE_INPUT_SPAN) (Ulyanov et al.)
NOISE_INPUT_SPAN = 0.1
#: iterations without a better output after which the command line and the widget stop
PATIENCE = 500
#: fraction of the pixels held out of the loss to validate on, for ``criterion="holdout"``
HOLDOUT_FRACTION = 0.05
MAX_WIDTH = 4096
MAX_ITERATIONS = 1_000_000
#: MC-SURE perturbation size, in units of sigma (Ramani et al. 2008)
SURE_EPSILON = 0.01


def _as_chw(image: np.ndarray, channel_axis: int | None, name: str) -> np.ndarray:
    """``(C, H, W)`` float64 copy of a 2-D image or of an image with a channel axis."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if channel_axis is None:
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (H, W), or pass channel_axis; got shape {arr.shape}")
        arr = arr[None]
    else:
        if arr.ndim != 3:
            raise ValueError(f"{name} with a channel axis must be 3-D, got shape {arr.shape}")
        arr = np.moveaxis(arr, channel_axis, 0)
    out = arr.astype(np.float64)  # a copy: the caller's array is never touched
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return out


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or int(value) != value or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class _Run:
    """Tensors of one training run (network, optimiser, input, target, probes) and their device.

    Everything is built on the CPU (so that seeded runs start alike on any device) and moved to
    ``device`` by :meth:`place`; :func:`~napari_ntk_denoise.dip.device.retry_on_cpu` moves it back.
    Every iteration also updates an exponential moving average of the outputs and the moving
    variance of the outputs about it (:class:`~napari_ntk_denoise.dip.stopping.OutputAverage`).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        reference: torch.Tensor | None,
        probe: torch.Tensor | None,
        epsilon: float,
        translate: bool,
        device: torch.device,
        jitter: float = 0.0,
        show_average: bool = False,
        seed: int = 0,
        holdout: torch.Tensor | None = None,
    ) -> None:
        self.net, self.x, self.y, self.reference, self.probe = net, x, y, reference, probe
        self.holdout = holdout  # 1 at the pixels left out of the loss, or None
        self.epsilon = epsilon
        self.translate = translate
        self.jitter, self.show_average, self.seed = jitter, show_average, seed
        self.z0: torch.Tensor | None = None  # computed by place(), on the device that trains
        self.w0 = [w.detach().clone() for w in effective_weights(net)]
        self.best: torch.Tensor | None = None
        self.average = OutputAverage()
        self.optimizer: torch.optim.Optimizer | None = None
        self._make_optimizer: Callable[[], torch.optim.Optimizer] | None = None
        self._noise: torch.Generator | None = None
        self.device = device

    def place(self) -> None:
        """Move everything to :attr:`device` (a no-op once there); with ``translate``, record the
        initial output there, so that the first output is exactly zero on any device."""
        self.to(self.device)
        if self.translate and self.z0 is None:
            with torch.no_grad():
                self.z0 = self.net(self.x)

    def start(self, make_optimizer: Callable[[], torch.optim.Optimizer]) -> None:
        self._make_optimizer = make_optimizer
        self.optimizer = make_optimizer()

    def to(self, device: torch.device) -> None:
        """Move everything, the optimiser's state included, to ``device``."""
        self.device = device
        # channels-last: the convolutions' fastest layout (oneDNN on CPUs, cuDNN on GPUs)
        self.net.to(device, memory_format=torch.channels_last)
        for name in ("x", "y", "reference", "probe", "z0", "best", "holdout"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device, memory_format=torch.channels_last))
        self.w0 = [w.to(device) for w in self.w0]
        self.average.to(device)
        if self.jitter:  # input jitter drawn where the network runs
            self._noise = torch.Generator(device=device).manual_seed(self.seed + self.average.count)
        if self.optimizer is not None:
            state = self.optimizer.state_dict()
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state)  # casts the state to the parameters' device

    def output(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z, pre = self.net(x, return_preactivations=True)
        return (z - self.z0 if self.z0 is not None else z), pre

    def advance(self, update: bool, record: bool, eigenimages: int) -> dict | None:
        """Compute ``z(w^t)``; record it (if asked) and take one optimiser step (if asked).

        The loss is that of the output at the jittered input (the input-noise regularisation of
        the DIP); the recorded output is the moving average when ``show_average``.
        """
        x = self.x
        if update and self.jitter:
            x = x + self.jitter * torch.randn(x.shape, generator=self._noise, device=x.device, dtype=x.dtype)
        with torch.set_grad_enabled(update):
            z, pre = self.output(x)
            residual = z - self.y
        self.average.add(z.detach())
        snap = self._snapshot(z.detach(), pre[-2].detach(), eigenimages) if record else None
        if update:
            self.optimizer.zero_grad(set_to_none=True)
            if self.holdout is not None:
                residual = residual * (1 - self.holdout)
            (0.5 * residual.square().sum()).backward()
            self.optimizer.step()
        return snap

    @torch.no_grad()
    def _snapshot(self, z: torch.Tensor, last_hidden: torch.Tensor, k: int) -> dict:
        shown = self.average.mean if self.show_average else z
        snap = {"z": shown, "residual2": float((shown - self.y).double().square().sum()), "n": z.numel(),
                "variance": self.average.variance, "spread": float(shown.double().std())}
        if self.reference is not None:
            snap["error2"] = float((shown - self.reference).double().square().sum())
        if self.holdout is not None:
            snap["heldout2"] = float(((shown - self.y) * self.holdout).double().square().sum())
            snap["n_heldout"] = float(self.holdout.sum()) * z.shape[1]
        if self.probe is not None:
            z_eps, _ = self.output(self.x + self.epsilon * self.probe)
            snap["div"] = float((self.probe * (z_eps - z)).double().sum()) / self.epsilon
        snap["dw"] = weight_change(self.w0, effective_weights(self.net))
        if k:
            snap["eig"] = preactivation_eigenimages(last_hidden, k)
        return snap

    def release(self) -> None:
        """Drop every tensor and return the accelerator's cached memory."""
        for name in ("net", "x", "y", "reference", "probe", "z0", "best", "optimizer", "w0", "_make_optimizer",
                     "average", "_noise", "holdout"):
            setattr(self, name, None)
        empty_cache()


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


def iter_dip(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    arch: Architecture = "ae",
    optimizer: Optimizer = "adam",
    input: InputMode = "image",
    width: int = 64,
    lr: float | None = None,
    iterations: int = 3000,
    every: int = 100,
    reference: np.ndarray | None = None,
    sigma: float | None = None,
    criterion: Criterion = "auto",
    patience: int | None = None,
    data_range: float | None = None,
    style: StyleChoice = "auto",
    noise_channels: int = 32,
    kernel_size: int | None = None,
    depth: int = 2,
    eigenimages: int = 0,
    device: str | torch.device = "auto",
    seed: int = 0,
    time_limit: float | None = None,
) -> Generator[DIPProgress | DIPStep, None, DIPResult]:
    """Train a deep image prior on one image, streaming progress; returns a :class:`DIPResult`.

    Arguments are checked when this function is called; training runs as the returned generator
    is iterated.  It yields one event per iteration: a :class:`DIPStep` at iteration 0, every
    ``every`` iterations and at the last one, a :class:`DIPProgress` otherwise.  ``close()`` on
    the generator stops training at once (within one iteration) and frees its tensors, GPU memory
    included.  The generator's return value (``StopIteration.value``) is the :class:`DIPResult`.

    Parameters
    ----------
    image : numpy.ndarray
        Noisy image ``y``, 2-D ``(H, W)`` or with a channel axis; never modified.
    channel_axis : int, optional
        Axis of the channels (e.g. ``-1`` for RGB), or None for a 2-D image.
    arch : {"vanilla", "unet", "ae", "skip"}
        Architecture (:func:`~napari_ntk_denoise.dip.architectures.build_network`).
    optimizer : {"adam", "gd"}
        Adam with ``betas = (0.9, 0.99)``, or gradient descent without momentum.
    input : {"image", "noise"}
        Network input: the noisy image or noise (the DIP).
    width : int
        Hidden channels ``c``, 1 to 4096.
    lr : float, optional
        Learning rate; default per network style and optimiser, see Notes.
    iterations : int
        Most optimiser steps, 1 to 10^6.
    every : int
        Iterations between :class:`DIPStep` events (and criterion evaluations); iterations 1, 2,
        4, ... before the first ``every`` are recorded too, so that the first outputs come at once.
    reference : numpy.ndarray, optional
        Clean image (same shape as ``image``): enables PSNR and the oracle criterion.
    sigma : float, optional
        Noise standard deviation in data units, for MC-SURE; estimated with
        :func:`skimage.restoration.estimate_sigma` when omitted (``params["sigma_estimated"]``).
    criterion : {"auto", "psnr", "sure", "holdout", "variance", "last"}
        Which output to keep: the best PSNR (oracle); the least MC-SURE (image input); the least
        residual on :data:`HOLDOUT_FRACTION` of the pixels, chosen at random and left out of the
        loss, and with image input replaced in the input by the mean of their neighbours (their
        noise is never seen, so the residual there is the error plus the noise variance); the
        least moving variance of the outputs (:mod:`~napari_ntk_denoise.dip.stopping`); or the
        last.  ``"auto"``: see :func:`resolve_criterion`.  Ties keep the earlier iteration.
    patience : int, optional
        Stop once the criterion has not improved for this many iterations (never by default).
    data_range : float, optional
        Peak of the PSNR; default 1 if the reference lies in [0, 1], else its max minus min.
    style : {"auto", "ntk", "dip"}
        Design of the encoder-decoders (:class:`~napari_ntk_denoise.dip.architectures.EncoderDecoder`);
        ``"auto"`` is :func:`default_style`.
    noise_channels : int
        Channels of the noise input (32 as in the DIP).
    kernel_size : int, optional
        Convolution size (11 for vanilla, 3 for the others by default).
    depth : int
        Weight layers of the vanilla CNN.
    eigenimages : int
        If positive, each :class:`DIPStep` carries that many leading eigenpairs of the
        last-hidden-layer pre-activation covariance (paper Fig. 5).
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``...; an
        out-of-memory error on an accelerator moves the run to the CPU with a ``RuntimeWarning``
        (the iteration that failed is repeated there).
    seed : int
        Seeds the weights, the noise input and its jitter, and the probes: runs on the CPU repeat
        exactly.
    time_limit : float, optional
        Stop after this many seconds of training (the best output so far is kept); no limit by default.

    Returns
    -------
    generator
        Yields :class:`DIPProgress` and :class:`DIPStep`; returns :class:`DIPResult`.  A run whose
        output turns constant stops with a
        :class:`~napari_ntk_denoise.dip.stopping.DIPCollapseWarning` (``params["collapsed"]``).

    Raises
    ------
    ValueError
        Non-finite values, wrong shapes, an image smaller than the architecture allows
        (:func:`~napari_ntk_denoise.dip.architectures.min_image_size`; nothing is padded), or
        width, iterations or other options out of range.
    TypeError
        A non-numeric image.
    ImportError
        ``criterion="sure"`` (or ``"auto"`` without reference, image input), no ``sigma``, and
        no PyWavelets for :func:`skimage.restoration.estimate_sigma`.

    Notes
    -----
    *Two designs* (``docs/dip.md``).  ``"ntk"``: the networks of the paper's analysis, trained on
    ``y / max|y|``; with image input the output is translated by its initial value,
    ``z~ = z - z(w^0)``, so that ``z~^0 = 0`` and gradient descent is twicing (paper eq. 9);
    noise input is i.i.d. ``N(0, 1)``.  ``"dip"``: the DIP of Ulyanov et al., trained on ``y``
    mapped affinely onto ``[0, 1]`` for its sigmoid output; noise input uniform on
    ``[0, 0.1)`` and jittered at every step (std ``1/30``); the shown output is the moving
    average of the outputs; with image input the U-Net and skip networks drop their
    full-resolution skip.  Outputs, losses, sigma, SURE and PSNR are reported in data units.

    *Learning rates.*  Adam: :data:`DIP_LR` for the DIP style, :data:`ADAM_LR` for the NTK style.
    Gradient descent: ``1 / lambda_max`` of the empirical NTK Gram matrix at initialisation
    (eq. 10; :func:`~napari_ntk_denoise.dip.diagnostics.ntk_top_eigenvalue`), so that
    ``eta Theta^0`` has largest eigenvalue 1, the normalisation of the analytic twicing filter.

    *MC-SURE* (image input; Ramani, Blu & Unser, IEEE TIP 2008):
    ``SURE = ||y - z||^2 - n sigma^2 + 2 sigma^2 div`` with
    ``div ~ b^T (f(y + eps b) - f(y)) / eps``, ``b ~ N(0, I)`` fixed for the run,
    ``eps = 0.01 sigma``, where ``f`` is the network at the current weights evaluated (not
    retrained) on the perturbed input; this leaves out how the weights depend on ``y``.
    """
    _check_choice("arch", arch, ARCHITECTURES)
    _check_choice("optimizer", optimizer, ("adam", "gd"))
    _check_choice("input", input, ("image", "noise"))
    _check_choice("criterion", criterion, CRITERIA)
    _check_choice("style", style, ("auto", *STYLES))
    _check_range("width", width, 1, MAX_WIDTH)
    _check_range("iterations", iterations, 1, MAX_ITERATIONS)
    _check_range("every", every, 1, MAX_ITERATIONS)
    _check_range("noise_channels", noise_channels, 1, MAX_WIDTH)
    _check_range("eigenimages", eigenimages, 0, width)
    if patience is not None:
        _check_range("patience", patience, 1, MAX_ITERATIONS)
    if time_limit is not None and not (math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a non-negative finite number, got {sigma!r}")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    y = _as_chw(image, channel_axis, "image")
    h, w = y.shape[1:]
    smallest = min_image_size(arch, kernel_size)
    if min(h, w) < smallest:
        raise ValueError(
            f"image of {h} x {w} pixels is too small for arch {arch!r}: it needs at least "
            f"{smallest} pixels along each axis (the encoder-decoders downsample three times)"
        )
    ref = None
    if reference is not None:
        ref = _as_chw(reference, channel_axis, "reference")
        if ref.shape != y.shape:
            raise ValueError(f"reference shape {np.shape(reference)} differs from image shape {np.shape(image)}")
    style = "ntk" if arch == "vanilla" else default_style(arch, optimizer) if style == "auto" else style
    criterion = resolve_criterion(criterion, ref is not None, input, style)
    if criterion == "psnr" and ref is None:
        raise ValueError("criterion 'psnr' needs a reference image")
    if criterion == "sure" and input != "image":
        raise ValueError("criterion 'sure' needs input='image' (noise input has no MC-SURE; use 'holdout')")
    dev = resolve_device(device)
    settings = {
        "method": "deep image prior", "arch": arch, "optimizer": optimizer, "input": input,
        "style": style,
        "width": int(width), "kernel_size": int(KERNEL_SIZE[arch] if kernel_size is None else kernel_size),
        "iterations": int(iterations), "every": int(every), "seed": int(seed), "criterion": criterion,
        "patience": patience, "time_limit": time_limit,
    }
    if arch == "vanilla":
        settings["depth"] = int(depth)
    if input == "noise":
        settings["noise_channels"] = int(noise_channels)
    out_dtype = np.float64 if np.asarray(image).dtype == np.float64 else np.float32
    t_start = time.perf_counter()
    run, units, sigma, data_range = _prepare(y, ref, dev, settings, sigma=sigma, data_range=data_range, depth=depth)
    return _train(
        run, settings, lr=lr, units=units, sigma=sigma, data_range=data_range, eigenimages=eigenimages,
        layout=(channel_axis, out_dtype), t_start=t_start,
    )


class _Units(NamedTuple):
    """Data units of the network's values: ``data = offset + scale * network``."""

    offset: float
    scale: float

    @classmethod
    def of(cls, y: np.ndarray, style: str) -> "_Units":
        if style == "dip":  # onto [0, 1], the sigmoid's range
            low, high = float(y.min()), float(y.max())
            return cls(low, high - low or 1.0)
        return cls(0.0, float(np.abs(y).max()) or 1.0)

    def to_network(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - self.offset) / self.scale).float()[None]


def _to_image(z: torch.Tensor, units: _Units, layout: tuple[int | None, type]) -> np.ndarray:
    channel_axis, dtype = layout
    arr = (z[0].double() * units.scale + units.offset).cpu().numpy().astype(dtype)
    return arr[0] if channel_axis is None else np.moveaxis(arr, 0, channel_axis)


def _estimate_sigma(y: np.ndarray, required: bool) -> float | None:
    """Noise level of a ``(C, H, W)`` image by :func:`skimage.restoration.estimate_sigma`.

    Returns None when PyWavelets, which it needs, is missing, unless ``required``.
    """
    try:
        return float(estimate_sigma(np.moveaxis(y, 0, -1), channel_axis=-1, average_sigmas=True))
    except ImportError as err:
        if required:
            raise ImportError(f"sigma was not given and cannot be estimated ({err}); pass sigma") from err
        return None


def _prepare(
    y: np.ndarray,
    ref: np.ndarray | None,
    device: torch.device,
    settings: dict,
    *,
    sigma: float | None,
    data_range: float | None,
    depth: int,
) -> tuple[_Run, _Units, float | None, float | None]:
    """Seeded network, input, probe and scaled tensors of a run (on the CPU); its units, sigma, peak."""
    channels, h, w = y.shape
    dip_style = settings["style"] == "dip"
    units = _Units.of(y, settings["style"])
    seeds = np.random.SeedSequence(settings["seed"]).generate_state(5)
    weights_gen, input_gen, probe_gen, holdout_gen = (torch.Generator().manual_seed(int(s)) for s in seeds[:4])
    image_input = settings["input"] == "image"
    y_t = units.to_network(y)
    if image_input:
        x = y_t
    elif dip_style:
        x = NOISE_INPUT_SPAN * torch.rand(1, settings["noise_channels"], h, w, generator=input_gen)
    else:
        x = torch.randn(1, settings["noise_channels"], h, w, generator=input_gen)
    net = build_network(
        settings["arch"], x.shape[1], channels, settings["width"], kernel_size=settings["kernel_size"],
        depth=depth, style=settings["style"], full_resolution_skip=not image_input, generator=weights_gen,
    )
    probe, epsilon = None, 0.0
    if image_input:
        estimated = sigma is None
        sigma = _estimate_sigma(y, required=settings["criterion"] == "sure") if estimated else sigma
        if sigma is not None:
            settings.update(sigma=float(sigma), sigma_estimated=estimated)
            probe = torch.randn(y_t.shape, generator=probe_gen)
            epsilon = SURE_EPSILON * max(sigma / units.scale, 1e-3)
    ref_t = None
    if ref is not None:
        if data_range is None:
            data_range = 1.0 if ref.min() >= 0 and ref.max() <= 1 else float(ref.max() - ref.min()) or 1.0
        settings["data_range"] = float(data_range)
        ref_t = units.to_network(ref)
    holdout = None
    if settings["criterion"] == "holdout":
        holdout = (torch.rand(1, 1, h, w, generator=holdout_gen) < HOLDOUT_FRACTION).float()
        holdout.view(-1)[0] = 1.0  # at least one pixel
        if image_input:
            x = _blind_spots(y_t, holdout)
    run = _Run(
        net, x, y_t, ref_t, probe, epsilon, translate=image_input and not dip_style, device=device,
        jitter=INPUT_JITTER if dip_style and not image_input else 0.0, show_average=dip_style, seed=int(seeds[4]),
        holdout=holdout,
    )
    return run, units, sigma, data_range


def _blind_spots(y: torch.Tensor, holdout: torch.Tensor) -> torch.Tensor:
    """``y`` with each held-out pixel replaced by the mean of its kept 3 x 3 neighbours, so that
    neither the input nor the loss holds the noise of a held-out pixel."""
    keep = 1 - holdout
    ones = torch.ones(1, 1, 3, 3, dtype=y.dtype)
    def box(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(t, (1, 1, 1, 1), mode="replicate"), ones)
    fill = torch.cat([box(c * keep) for c in y.split(1, dim=1)], dim=1) / box(keep).clamp_min(1.0)
    return y * keep + fill * holdout


def _default_lr(run: _Run, settings: dict) -> float:
    if settings["optimizer"] == "adam":
        return DIP_LR if settings["style"] == "dip" else ADAM_LR
    power_gen = torch.Generator().manual_seed(settings["seed"])
    return 1.0 / retry_on_cpu(run, lambda: ntk_top_eigenvalue(run.net, run.x, generator=power_gen))


def _figures(snap: dict, units: _Units, sigma: float | None, data_range: float | None) -> dict[str, float | None]:
    """Loss, PSNR and SURE of a snapshot in data units, and its spread in network units."""
    n, scale = snap["n"], units.scale
    psnr = sure = None
    if "error2" in snap:
        mse = snap["error2"] / n * scale**2
        psnr = 10 * math.log10(data_range**2 / mse) if mse > 0 else math.inf
    if "div" in snap:
        s2 = (sigma / scale) ** 2
        sure = (snap["residual2"] - n * s2 + 2 * s2 * snap["div"]) / n * scale**2
    validation = snap["heldout2"] / snap["n_heldout"] * scale**2 if "heldout2" in snap else None
    return {"loss": snap["residual2"] / n * scale**2, "psnr": psnr, "sure": sure, "validation": validation,
            "variance": snap["variance"] * scale**2}


def _train(
    run: _Run,
    settings: dict,
    *,
    lr: float | None,
    units: _Units,
    sigma: float | None,
    data_range: float | None,
    eigenimages: int,
    layout: tuple[int | None, type],
    t_start: float,
) -> Generator[DIPProgress | DIPStep, None, DIPResult]:
    iterations, every, criterion = settings["iterations"], settings["every"], settings["criterion"]
    patience, time_limit = settings["patience"], settings["time_limit"]
    image_spread = float(run.y.double().std())
    snap: dict | None = None
    try:
        retry_on_cpu(run, run.place)
        settings["lr_default"] = lr is None
        lr = _default_lr(run, settings) if lr is None else lr
        settings["lr"] = float(lr)
        if settings["optimizer"] == "adam":
            run.start(lambda: torch.optim.Adam(run.net.parameters(), lr=lr, betas=ADAM_BETAS))
        else:
            run.start(lambda: torch.optim.SGD(run.net.parameters(), lr=lr, momentum=0.0))
        t_train = time.perf_counter()
        curves: dict[str, list[float]] = {
            k: [] for k in ("iteration", "loss", "psnr", "sure", "validation", "variance", "dw_l2", "dw_max")
        }
        best_value, best_iteration, stopped = math.inf, 0, None
        for t in range(iterations + 1):
            out_of_time = time_limit is not None and time.perf_counter() - t_train >= time_limit
            last = t == iterations or out_of_time
            record = last or t % every == 0 or (t < every and t & (t - 1) == 0)
            snap = retry_on_cpu(run, lambda: run.advance(update=not last, record=record, eigenimages=eigenimages))
            if not record:
                yield DIPProgress(t, iterations, time.perf_counter() - t_train, time_limit)
                continue
            fig = _figures(snap, units, sigma, data_range)
            value = {"psnr": None if fig["psnr"] is None else -fig["psnr"], "sure": fig["sure"],
                     "holdout": fig["validation"], "variance": fig["variance"], "last": -t}[criterion]
            if run.best is None or value < best_value:
                best_value, best_iteration = value, t
                run.best = snap["z"].clone()
            dw_l2, dw_max = snap["dw"]
            values = (t, fig["loss"], fig["psnr"], fig["sure"], fig["validation"], fig["variance"], dw_l2, dw_max)
            for key, v in zip(curves, values):
                curves[key].append(math.nan if v is None else v)
            eig = snap.get("eig")
            yield DIPStep(
                iteration=t,
                image=_to_image(snap["z"], units, layout),
                loss=fig["loss"], psnr=fig["psnr"], sure=fig["sure"], validation=fig["validation"],
                variance=fig["variance"],
                weight_change_l2=dw_l2, weight_change_max=dw_max, best_iteration=best_iteration,
                eigenvalues=None if eig is None else eig[0].cpu().numpy(),
                eigenimages=None if eig is None else eig[1].cpu().numpy(),
            )
            stopped = _stop_reason(snap["spread"], image_spread, t, best_iteration, patience)
            if out_of_time and not stopped:
                stopped = "time", f"time limit of {time_limit:g} s reached"
            if stopped:
                break
        t_end = time.perf_counter()
        settings.update(best_iteration=best_iteration, device=str(run.device), iterations_run=t,
                        stopped=stopped and stopped[1])
        if stopped and stopped[0] == "collapsed":
            settings["collapsed"] = stopped[1]
            warnings.warn(stopped[1], DIPCollapseWarning, stacklevel=2)
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items()}
        return DIPResult(
            image=_to_image(run.best, units, layout),
            best_iteration=best_iteration,
            criterion=criterion,
            iterations=arrays["iteration"].astype(np.int64),
            loss=arrays["loss"],
            psnr=arrays["psnr"] if "data_range" in settings else None,
            sure=arrays["sure"] if run.probe is not None else None,
            validation=arrays["validation"] if run.holdout is not None else None,
            variance=arrays["variance"],
            weight_change_l2=arrays["dw_l2"],
            weight_change_max=arrays["dw_max"],
            timings={
                "setup_s": t_train - t_start,
                "train_s": t_end - t_train,
                "iterations_per_s": max(t, 1) / (t_end - t_train),
            },
            params=settings,
        )
    finally:
        snap = None
        run.release()


def _stop_reason(
    spread: float, image_spread: float, t: int, best_iteration: int, patience: int | None
) -> tuple[str, str] | None:
    """``(kind, reason)`` to stop training at recorded iteration ``t``, or None to go on."""
    reason = collapse_reason(spread, image_spread, t)
    if reason:
        return "collapsed", reason
    if patience is not None and t - best_iteration >= patience:
        return "patience", f"no improvement for {t - best_iteration} iterations"
    return None


def train_dip(image: np.ndarray, **kwargs: Any) -> DIPResult:
    """Run :func:`iter_dip` (same arguments) to the end and return its :class:`DIPResult`."""
    return drain(iter_dip(image, **kwargs))
