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
from collections.abc import Callable, Generator
from typing import Any, Literal

import numpy as np
import torch
from skimage.restoration import estimate_sigma

from .architectures import ARCHITECTURES, KERNEL_SIZE, Architecture, build_network, min_image_size
from ..events import drain
from .device import empty_cache, resolve_device, retry_on_cpu
from .diagnostics import effective_weights, ntk_top_eigenvalue, preactivation_eigenimages, weight_change
from .events import DIPProgress, DIPResult, DIPStep

__all__ = ["ADAM_BETAS", "ADAM_LR", "MAX_ITERATIONS", "MAX_WIDTH", "SURE_EPSILON", "iter_dip", "train_dip"]

Optimizer = Literal["adam", "gd"]
InputMode = Literal["image", "noise"]
Criterion = Literal["auto", "psnr", "sure", "last"]

#: Adam's (beta_1, beta_2), the paper's "standard hyperparameters" (section 6)
ADAM_BETAS = (0.9, 0.99)
#: default Adam learning rate (see :func:`iter_dip`, Notes)
ADAM_LR = 1e-3
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
    ) -> None:
        self.net, self.x, self.y, self.reference, self.probe = net, x, y, reference, probe
        self.epsilon = epsilon
        self.translate = translate
        self.z0: torch.Tensor | None = None  # computed by place(), on the device that trains
        self.w0 = [w.detach().clone() for w in effective_weights(net)]
        self.best: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._make_optimizer: Callable[[], torch.optim.Optimizer] | None = None
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
        self.net.to(device)
        for name in ("x", "y", "reference", "probe", "z0", "best"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        self.w0 = [w.to(device) for w in self.w0]
        if self.optimizer is not None:
            state = self.optimizer.state_dict()
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state)  # casts the state to the parameters' device

    def output(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z, pre = self.net(x, return_preactivations=True)
        return (z - self.z0 if self.z0 is not None else z), pre

    def advance(self, update: bool, record: bool, eigenimages: int) -> dict | None:
        """Compute ``z(w^t)``; record it (if asked) and take one optimiser step (if asked)."""
        with torch.set_grad_enabled(update):
            z, pre = self.output(self.x)
            residual = z - self.y
        snap = self._snapshot(z.detach(), residual.detach(), pre[-2].detach(), eigenimages) if record else None
        if update:
            self.optimizer.zero_grad(set_to_none=True)
            (0.5 * residual.square().sum()).backward()
            self.optimizer.step()
        return snap

    @torch.no_grad()
    def _snapshot(self, z: torch.Tensor, residual: torch.Tensor, last_hidden: torch.Tensor, k: int) -> dict:
        snap = {"z": z, "residual2": float(residual.double().square().sum()), "n": z.numel()}
        if self.reference is not None:
            snap["error2"] = float((z - self.reference).double().square().sum())
        if self.probe is not None:
            z_eps, _ = self.output(self.x + self.epsilon * self.probe)
            snap["div"] = float((self.probe * (z_eps - z)).double().sum()) / self.epsilon
        snap["dw"] = weight_change(self.w0, effective_weights(self.net))
        if k:
            snap["eig"] = preactivation_eigenimages(last_hidden, k)
        return snap

    def release(self) -> None:
        """Drop every tensor and return the accelerator's cached memory."""
        for name in ("net", "x", "y", "reference", "probe", "z0", "best", "optimizer", "w0", "_make_optimizer"):
            setattr(self, name, None)
        empty_cache()


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
    data_range: float | None = None,
    noise_channels: int = 32,
    kernel_size: int | None = None,
    depth: int = 2,
    eigenimages: int = 0,
    device: str | torch.device = "auto",
    seed: int = 0,
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
        Network input: the noisy image (with ``z~ = z - z^0``) or i.i.d. noise (DIP).
    width : int
        Hidden channels ``c``, 1 to 4096.
    lr : float, optional
        Learning rate; default per optimiser, see Notes.
    iterations : int
        Optimiser steps, 1 to 10^6.
    every : int
        Iterations between :class:`DIPStep` events (and criterion evaluations).
    reference : numpy.ndarray, optional
        Clean image (same shape as ``image``): enables PSNR and the oracle criterion.
    sigma : float, optional
        Noise standard deviation in data units, for MC-SURE; estimated with
        :func:`skimage.restoration.estimate_sigma` when omitted (``params["sigma_estimated"]``).
    criterion : {"auto", "psnr", "sure", "last"}
        Which output to keep: ``"auto"`` is ``"psnr"`` with a reference, else ``"sure"`` for
        image input, else ``"last"``.
    data_range : float, optional
        Peak of the PSNR; default 1 if the reference lies in [0, 1], else its max minus min.
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
        Seeds the weights, the noise input and the probes: runs on the CPU repeat exactly.

    Returns
    -------
    generator
        Yields :class:`DIPProgress` and :class:`DIPStep`; returns :class:`DIPResult`.

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
    *Scale.*  Training runs on ``y / max|y|`` so that the defaults do not depend on the data's
    units; outputs, losses, sigma, SURE and PSNR are reported in data units.

    *Learning rates.*  Adam: ``ADAM_LR = 1e-3``.  The DIP code's 0.01 relies on its batch
    normalisation; these bias- and normalisation-free networks (paper section 6) stall with it.
    Measured at sigma 25: autoencoder, width 32, McMaster 2 centre 128 x 128: 17.8 dB after 300
    iterations at 0.01 against 24.0 dB at 0.001 (26.3 dB after 1200, as with 0.003; noise input
    26.4 dB at 0.001 against 25.6 dB at 0.003); vanilla CNN (NTK parameterisation, whose
    effective weights move by ``lr sigma_w / sqrt(fan_in)`` per step), two 64 x 64 colour crops:
    best 26.6 / 29.5 dB at 0.001 against 25.0 / 26.6 dB at 0.01.

    Gradient descent: ``1 / lambda_max`` of the empirical NTK Gram matrix ``Theta^0`` at
    initialisation (eq. 10; power iteration,
    :func:`~napari_ntk_denoise.dip.diagnostics.ntk_top_eigenvalue`), so that ``eta Theta^0`` has
    largest eigenvalue 1, the normalisation of the analytic twicing filter (eq. 9).  For the
    standard-parameterised encoder-decoders ``Theta^0`` grows linearly with the width (measured:
    about 2e4-7e5 at c = 8, 1e7-2e7 at c = 512 on a 32 x 32 image), so this step is ``O(1/c)``
    as the NTK analysis requires (section 4, footnote 6); for the NTK-parameterised vanilla CNN
    the ``1/sqrt(fan_in)`` factors carry that ``1/c`` and the step is ``O(1)`` in the width.

    *MC-SURE* (image input; Ramani, Blu & Unser, IEEE TIP 2008):
    ``SURE = ||y - z||^2 - n sigma^2 + 2 sigma^2 div`` with
    ``div ~ b^T (f(y + eps b) - f(y)) / eps``, ``b ~ N(0, I)`` fixed for the run,
    ``eps = 0.01 sigma``, where ``f`` is the network at the *current* weights, evaluated (not
    retrained) on the perturbed input.  This ignores how the weights depend on ``y`` through the
    training target; the alternative, a second training run on ``y + eps b`` in lockstep, is
    exact for gradient descent but its finite difference is dominated by the chaotic
    divergence of the two Adam trajectories.  Measured: for the vanilla CNN with gradient
    descent, the iteration of least SURE is within 0.3 dB of the oracle's, while the SURE level
    is biased low (it misses that part of the divergence).  Noise input has no input path, hence
    no SURE; nor has image input when sigma is not given and cannot be estimated (PyWavelets,
    which ``estimate_sigma`` needs, missing) unless ``criterion="sure"``, which then raises.
    """
    _check_choice("arch", arch, ARCHITECTURES)
    _check_choice("optimizer", optimizer, ("adam", "gd"))
    _check_choice("input", input, ("image", "noise"))
    _check_choice("criterion", criterion, ("auto", "psnr", "sure", "last"))
    _check_range("width", width, 1, MAX_WIDTH)
    _check_range("iterations", iterations, 1, MAX_ITERATIONS)
    _check_range("every", every, 1, MAX_ITERATIONS)
    _check_range("noise_channels", noise_channels, 1, MAX_WIDTH)
    _check_range("eigenimages", eigenimages, 0, width)
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
    if criterion == "auto":
        criterion = "psnr" if ref is not None else "sure" if input == "image" else "last"
    if criterion == "psnr" and ref is None:
        raise ValueError("criterion 'psnr' needs a reference image")
    if criterion == "sure" and input != "image":
        raise ValueError("criterion 'sure' needs input='image' (noise input has no MC-SURE)")
    dev = resolve_device(device)
    settings = {
        "method": "deep image prior", "arch": arch, "optimizer": optimizer, "input": input,
        "width": int(width), "kernel_size": int(KERNEL_SIZE[arch] if kernel_size is None else kernel_size),
        "iterations": int(iterations), "every": int(every), "seed": int(seed), "criterion": criterion,
    }
    if arch == "vanilla":
        settings["depth"] = int(depth)
    if input == "noise":
        settings["noise_channels"] = int(noise_channels)
    out_dtype = np.float64 if np.asarray(image).dtype == np.float64 else np.float32
    t_start = time.perf_counter()
    run, scale, sigma, data_range = _prepare(y, ref, dev, settings, sigma=sigma, data_range=data_range, depth=depth)
    return _train(
        run, settings, lr=lr, scale=scale, sigma=sigma, data_range=data_range, eigenimages=eigenimages,
        layout=(channel_axis, out_dtype), t_start=t_start,
    )


def _to_image(z: torch.Tensor, scale: float, layout: tuple[int | None, type]) -> np.ndarray:
    channel_axis, dtype = layout
    arr = (z[0].double() * scale).cpu().numpy().astype(dtype)
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
) -> tuple[_Run, float, float | None, float | None]:
    """Seeded network, input, probe and scaled tensors of a run (on the CPU); its scale, sigma, peak."""
    channels, h, w = y.shape
    scale = float(np.abs(y).max()) or 1.0
    seeds = np.random.SeedSequence(settings["seed"]).generate_state(3)
    weights_gen, input_gen, probe_gen = (torch.Generator().manual_seed(int(s)) for s in seeds)
    image_input = settings["input"] == "image"
    y_t = torch.from_numpy(y / scale).float()[None]
    x = y_t if image_input else torch.randn(1, settings["noise_channels"], h, w, generator=input_gen)
    net = build_network(
        settings["arch"], x.shape[1], channels, settings["width"], kernel_size=settings["kernel_size"],
        depth=depth, generator=weights_gen,
    )
    probe, epsilon = None, 0.0
    if image_input:
        estimated = sigma is None
        sigma = _estimate_sigma(y, required=settings["criterion"] == "sure") if estimated else sigma
        if sigma is not None:
            settings.update(sigma=float(sigma), sigma_estimated=estimated)
            probe = torch.randn(y_t.shape, generator=probe_gen)
            epsilon = SURE_EPSILON * max(sigma / scale, 1e-3)
    ref_t = None
    if ref is not None:
        if data_range is None:
            data_range = 1.0 if ref.min() >= 0 and ref.max() <= 1 else float(ref.max() - ref.min()) or 1.0
        settings["data_range"] = float(data_range)
        ref_t = torch.from_numpy(ref / scale).float()[None]
    run = _Run(net, x, y_t, ref_t, probe, epsilon, translate=image_input, device=device)
    return run, scale, sigma, data_range


def _train(
    run: _Run,
    settings: dict,
    *,
    lr: float | None,
    scale: float,
    sigma: float | None,
    data_range: float | None,
    eigenimages: int,
    layout: tuple[int | None, type],
    t_start: float,
) -> Generator[DIPProgress | DIPStep, None, DIPResult]:
    iterations, every, criterion = settings["iterations"], settings["every"], settings["criterion"]
    snap: dict | None = None
    try:
        retry_on_cpu(run, run.place)
        settings["lr_default"] = lr is None
        if lr is None and settings["optimizer"] == "adam":
            lr = ADAM_LR
        elif lr is None:
            power_gen = torch.Generator().manual_seed(settings["seed"])
            lr = 1.0 / retry_on_cpu(run, lambda: ntk_top_eigenvalue(run.net, run.x, generator=power_gen))
        settings["lr"] = float(lr)
        if settings["optimizer"] == "adam":
            run.start(lambda: torch.optim.Adam(run.net.parameters(), lr=lr, betas=ADAM_BETAS))
        else:
            run.start(lambda: torch.optim.SGD(run.net.parameters(), lr=lr, momentum=0.0))
        t_train = time.perf_counter()
        curves: dict[str, list[float]] = {k: [] for k in ("iteration", "loss", "psnr", "sure", "dw_l2", "dw_max")}
        best_value, best_iteration = math.inf, 0
        for t in range(iterations + 1):
            record = t % every == 0 or t == iterations
            snap = retry_on_cpu(run, lambda: run.advance(update=t < iterations, record=record, eigenimages=eigenimages))
            if not record:
                yield DIPProgress(t, iterations)
                continue
            n = snap["n"]
            loss = snap["residual2"] / n * scale**2
            psnr = sure = None
            if "error2" in snap:
                mse = snap["error2"] / n * scale**2
                psnr = 10 * math.log10(data_range**2 / mse) if mse > 0 else math.inf
            if "div" in snap:
                s2 = (sigma / scale) ** 2
                sure = (snap["residual2"] - n * s2 + 2 * s2 * snap["div"]) / n * scale**2
            value = {"psnr": None if psnr is None else -psnr, "sure": sure, "last": -t}[criterion]
            if value <= best_value:
                best_value, best_iteration = value, t
                run.best = snap["z"].clone()
            dw_l2, dw_max = snap["dw"]
            for key, v in zip(curves, (t, loss, psnr, sure, dw_l2, dw_max)):
                curves[key].append(math.nan if v is None else v)
            eig = snap.get("eig")
            yield DIPStep(
                iteration=t,
                image=_to_image(snap["z"], scale, layout),
                loss=loss, psnr=psnr, sure=sure, weight_change_l2=dw_l2, weight_change_max=dw_max,
                best_iteration=best_iteration,
                eigenvalues=None if eig is None else eig[0].cpu().numpy(),
                eigenimages=None if eig is None else eig[1].cpu().numpy(),
            )
        t_end = time.perf_counter()
        settings.update(best_iteration=best_iteration, device=str(run.device))
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items()}
        return DIPResult(
            image=_to_image(run.best, scale, layout),
            best_iteration=best_iteration,
            criterion=criterion,
            iterations=arrays["iteration"].astype(np.int64),
            loss=arrays["loss"],
            psnr=arrays["psnr"] if "data_range" in settings else None,
            sure=arrays["sure"] if run.probe is not None else None,
            weight_change_l2=arrays["dw_l2"],
            weight_change_max=arrays["dw_max"],
            timings={
                "setup_s": t_train - t_start,
                "train_s": t_end - t_train,
                "iterations_per_s": iterations / (t_end - t_train),
            },
            params=settings,
        )
    finally:
        snap = None
        run.release()


def train_dip(image: np.ndarray, **kwargs: Any) -> DIPResult:
    """Run :func:`iter_dip` (same arguments) to the end and return its :class:`DIPResult`."""
    return drain(iter_dip(image, **kwargs))
