"""Closed-form NTK denoising: the public, streaming pipeline (paper sections 3-4, METHOD.md).

``iter_denoise_ntk`` is a generator that yields :class:`~napari_ntk_denoise.events.Progress` and
:class:`~napari_ntk_denoise.events.TwicingStep` events and returns an :class:`NTKResult`; the
widget, the CLI and the tests all drive it; :func:`denoise_ntk` simply drains it.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from ._input import ImageLayout, check_memory, prepare_image, resolve_device
from .events import Progress, TwicingStep, drain, forward_progress
from .kernels import CNNKernel
from .noise_estimation import blurred_noise
from .nystrom import LowRankFilter, estimate_bytes, iter_nystrom, sample_anchors
from .stopping import (
    DoubtfulStopWarning, PilotTerms, SureCurve, clip_bounds, clipped_noise_scale, estimate_noise_sigma, mc_sure_curve, mse_curve,
    pilot_blend, psnr, stop_doubts, t_grid,
)
from .twicing import twicing_factors, twicing_output, twicing_schedule

__all__ = ["NTKResult", "StageResult", "PilotBlend", "iter_denoise_ntk", "denoise_ntk", "iter_filter",
           "low_rank_filter"]

#: perturbation of Monte-Carlo SURE, relative to sigma (METHOD.md section 3)
SURE_EPS = 0.01
DEFAULT_RANK = 256
#: the guided filter's pilot is its first stage at this fraction of the first stage's chosen step,
#: by kernel type.  A smoother NNGP pilot than the best first estimate carries less of the first
#: filter's noise into the guided kernel.  With SURE for clipped data, auto-stopped guided means:
#: McMaster 28.60 / 28.63 / 28.59 dB at 0.5 / 0.7 / 1, Set12 26.80 / 26.79 at 0.5 / 0.7 (before it,
#: Set12 01-07 gave 26.18 / 26.23 / 26.22 / 26.16 / 26.07 at 0.3 / 0.45 / 0.6 / 1 / 1.6); the NTK
#: pilot does not gain (Set12 26.44 either way, McMaster 28.21 at 0.5 against 28.40 at 1)
PILOT_STEP = {"nngp": 0.7, "ntk": 1.0}

Stop = Literal["sure", "oracle"] | int


@dataclass
class PilotBlend:
    """The guided stage's output averaged with its pilot: ``u(t) = a(t) p + (1 - a(t)) z(t)``.

    Attributes
    ----------
    pilot : torch.Tensor or None
        The pilot ``p``, ``(d, C)``: the mean of two first-stage estimates, the first stage's output
        and that of the same filter on a second anchor draw, each at its ``params["t_pilot"]``
        step (``None`` once dropped to save memory).
    t : numpy.ndarray
        Steps of the grid.
    weight : numpy.ndarray
        ``a(t)`` over the grid, chosen by Monte-Carlo SURE (by the MSE with ``stop="oracle"``).
    divergence : float or None
        Monte-Carlo divergence of ``y -> p`` (with ``stop="sure"``).
    """

    pilot: torch.Tensor | None
    t: np.ndarray
    weight: np.ndarray
    divergence: float | None = None

    def weight_at(self, t: float) -> float:
        """``a(t)``, interpolated between grid steps."""
        return float(np.interp(t, self.t, self.weight))


@dataclass
class StageResult:
    """One filtering stage (stage 2 is the guided filter).

    Attributes
    ----------
    filter : LowRankFilter
        The stage's filter.
    coeffs : torch.Tensor
        ``Q^T y``, shape ``(k, C)``.
    t : int
        Chosen step.
    sure : SureCurve or None
        Monte-Carlo SURE over the step grid (``stop="sure"``).
    mse : numpy.ndarray or None
        Exact MSE against the reference over the step grid (when a reference was given).
    blend : PilotBlend or None
        The guided stage's average with its pilot; ``sure``, ``mse`` and ``t`` are then those of
        the average.
    """

    filter: LowRankFilter
    coeffs: torch.Tensor
    t: int
    sure: SureCurve | None = None
    mse: np.ndarray | None = None
    blend: PilotBlend | None = None

    def output(self, t: float) -> torch.Tensor:
        """``z(t)`` as ``(d, C)`` (averaged with the pilot when the stage has a :class:`PilotBlend`)."""
        z = twicing_output(self.filter.basis, self.coeffs, twicing_factors(self.filter.normalized_eigenvalues, t))
        if self.blend is None:
            return z
        return torch.lerp(z, self.blend.pilot.to(z.dtype), self.blend.weight_at(t))


@dataclass
class NTKResult:
    """Outcome of :func:`iter_denoise_ntk`.

    Attributes
    ----------
    image : numpy.ndarray
        Denoised image at the chosen step, in the input's layout.
    t : int
        Chosen step of the final stage.
    sigma : float
        Noise level used (data units).
    sigma_estimated : bool
        Whether ``sigma`` was estimated from the image.
    t_grid : numpy.ndarray
        Steps over which the curves are evaluated.
    stages : list of StageResult
        One entry, or two with ``guided=True``.
    timings : dict
        Seconds per phase.
    params : dict
        The call's parameters.
    """

    image: np.ndarray
    t: int
    sigma: float
    sigma_estimated: bool
    t_grid: np.ndarray
    stages: list[StageResult]
    layout: ImageLayout
    data_range: float
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def filter(self) -> LowRankFilter | None:
        """Filter of the final stage (``None`` for a constant image, which needs none)."""
        return self.stages[-1].filter if self.stages else None

    @property
    def sure(self) -> np.ndarray | None:
        """SURE (MSE estimate per value) of the final stage over :attr:`t_grid`."""
        s = self.stages[-1].sure if self.stages else None
        return None if s is None else s.sure

    @property
    def psnr(self) -> np.ndarray | None:
        """PSNR (dB, unclipped output) of the final stage over :attr:`t_grid`, with a reference."""
        m = self.stages[-1].mse if self.stages else None
        return None if m is None else 10 * np.log10(self.data_range**2 / np.maximum(m, 1e-300))

    def render(self, t: float, stage: int = -1) -> np.ndarray:
        """``z(t)`` of a stage in the input's layout, from stored coefficients (no recomputation);
        a constant image at any step."""
        if not self.stages:
            return self.image.copy()
        st = self.stages[stage]
        z = st.output(t).reshape(*st.filter.shape, -1).cpu().numpy()
        return self.layout.restore(z)

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly summary for ``layer.metadata`` and logs."""
        meta: dict[str, Any] = {
            "method": "ntk-nystrom-twicing",
            "t": self.t,
            "sigma": self.sigma,
            "sigma_estimated": self.sigma_estimated,
            "rank": self.filter.rank if self.stages else 0,
            "timings": dict(self.timings),
            "params": dict(self.params),
        }
        if len(self.stages) == 2:
            meta["t_stage1"] = self.stages[0].t
        if self.stages and self.stages[-1].blend is not None:
            meta["pilot_weight"] = self.stages[-1].blend.weight_at(self.t)
        return meta


def _kernel_input(y: np.ndarray, kind: str, noise_channels: int, seed: int, dev: torch.device) -> torch.Tensor:
    """Image fed to the kernel: ``y`` itself (C, *spatial) or i.i.d. N(0, 1) noise (DIP input)."""
    if kind == "image":
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(y, -1, 0))).to(dev, torch.float32)
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(noise_channels, *y.shape[:-1], generator=g, dtype=torch.float32).to(dev, torch.float32)


#: Monte-Carlo SURE probes rows in bands: ``PROBE_BAND`` of every ``PROBE_PERIOD`` rows (Y)
PROBE_BAND, PROBE_PERIOD = 8, 64


@functools.lru_cache(maxsize=1)
def _probe(seed: int, shape: tuple[int, ...], channels: int, device: str) -> torch.Tensor:
    """Monte-Carlo SURE probe ``b`` of shape ``(d, C)`` on ``device`` (read only), ``E[b b^T] = I``.

    On images of at least ``4 PROBE_PERIOD`` rows, ``b`` is N(0, P/B) on bands of ``B = PROBE_BAND``
    rows out of every ``P = PROBE_PERIOD`` (random phase) and zero elsewhere: still an unbiased
    divergence probe (Hutchinson's estimator needs only ``E[b b^T] = I``), but the perturbed kernel
    differs from the unperturbed one only on rows and anchors whose patches meet a band, so the
    perturbed pass costs about half as much.  Measured on 256^2 crops: the chosen step moves by at
    most one grid point against a dense probe (PSNR within 0.03 dB).  Smaller images get a dense
    N(0, 1) probe.  Drawn on the CPU, so every device sees the same probe; the last one is kept
    (planes of a stack and tiles of a plane usually share a shape).
    """
    gen = torch.Generator().manual_seed(seed + 104729)
    b = torch.randn(math.prod(shape), channels, generator=gen)
    rows = shape[-2]
    if rows >= 4 * PROBE_PERIOD:
        phase = int(torch.randint(PROBE_PERIOD, (1,), generator=gen))
        band = (torch.arange(rows) - phase) % PROBE_PERIOD < PROBE_BAND
        mask = band[:, None].expand(*shape[:-2], rows, shape[-1]).reshape(-1, 1)
        b = b * mask * math.sqrt(PROBE_PERIOD / PROBE_BAND)
    return b.to(device)


def _coloured(probe: torch.Tensor, shape: tuple[int, ...], blur: float) -> torch.Tensor:
    """The probe ``(d, C)`` blurred along Y and X by a Gaussian of std ``blur`` and rescaled to
    unit variance per value: ``E[b b^T]`` is then the correlation of noise blurred alike."""
    b = probe.cpu().numpy().reshape(*shape, -1)
    out = blurred_noise(b, blur, sizes=[0.0] * (len(shape) - 2) + [blur, blur, 0.0])
    return torch.from_numpy(out.reshape(probe.shape)).to(probe)


def _pilot_step(t: int, ts: np.ndarray, fraction: float) -> int:
    """The guided filter's pilot step: the grid step nearest to ``fraction * t`` (0 for ``t = 0``),
    so that the first stage's Monte-Carlo divergence is known there."""
    if t == 0:
        return 0
    return int(ts[int(np.argmin(np.abs(np.log(ts) - np.log(fraction * t))))])


def _n_anchors(d: int, fraction: float, n_anchors: int | None) -> int:
    if n_anchors is not None:
        if not 1 <= int(n_anchors) <= d:
            raise ValueError(f"n_anchors must be in [1, {d}], got {n_anchors}")
        return int(n_anchors)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(d, int(round(fraction * d))))


@dataclass
class _Setup:
    """Checked inputs of a run (built before any heavy work)."""

    y: np.ndarray
    layout: ImageLayout
    kernel: CNNKernel
    anchors: np.ndarray
    rank: int
    device: torch.device
    input: str
    noise_channels: int
    seed: int


def _setup(
    image, channel_axis, depth, kernel_size, kernel, input, fraction, n_anchors, rank, device, seed, noise_channels,
    passes, volume=False, kernel_size_z=None,
) -> _Setup:
    kern = CNNKernel(depth=depth, kernel_size=kernel_size, kind=kernel, ndim=3 if volume else 2,
                     kernel_size_z=kernel_size_z)
    y, layout = prepare_image(image, channel_axis, spatial=kern.ndim)
    kern.check_image(y.shape[:-1])
    if input not in ("image", "noise"):
        raise ValueError(f"input must be 'image' or 'noise', got {input!r}")
    if int(noise_channels) < 1:
        raise ValueError(f"noise_channels must be >= 1, got {noise_channels}")
    d = math.prod(y.shape[:-1])
    m = _n_anchors(d, fraction, n_anchors)
    if int(rank) != rank or not 1 <= rank:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    rank = int(min(rank, m))
    dev = resolve_device(device)
    channels = y.shape[2] if input == "image" else noise_channels
    need = estimate_bytes(d, channels, m, rank, kern, device=dev) * passes
    size = "x".join(map(str, y.shape[:-1]))
    check_memory(need, dev, f"an NTK filter of a {size} {'volume' if volume else 'image'} with {m} anchors and rank {rank}",
                 "use a smaller anchor fraction or rank, or denoise in tiles")
    anchors = sample_anchors(y.shape[:-1], m, seed)
    return _Setup(y, layout, kern, anchors, rank, dev, input, int(noise_channels), seed)


def iter_filter(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    depth: int = 2,
    kernel_size: int = 11,
    kernel: Literal["ntk", "nngp"] = "ntk",
    input: Literal["image", "noise"] = "image",
    fraction: float = 0.02,
    n_anchors: int | None = None,
    rank: int = DEFAULT_RANK,
    device: str | None = None,
    seed: int = 0,
    noise_channels: int = 32,
    volume: bool = False,
    kernel_size_z: int | None = None,
) -> Generator[Progress, None, LowRankFilter]:
    """Compute the low-rank NTK filter of an image, streaming progress.

    Parameters are those of :func:`iter_denoise_ntk`.

    Yields
    ------
    Progress

    Returns
    -------
    LowRankFilter
    """
    st = _setup(image, channel_axis, depth, kernel_size, kernel, input, fraction, n_anchors, rank, device, seed,
                noise_channels, passes=1, volume=volume, kernel_size_z=kernel_size_z)
    x = _kernel_input(st.y, st.input, st.noise_channels, seed, st.device)
    result, _ = yield from iter_nystrom(st.kernel, x, st.anchors, st.rank, seed=seed)
    return result.filter


def low_rank_filter(image: np.ndarray, **kwargs: Any) -> LowRankFilter:
    """Non-streaming :func:`iter_filter`."""
    return drain(iter_filter(image, **kwargs))


def iter_denoise_ntk(
    image: np.ndarray,
    sigma: float | None = None,
    *,
    channel_axis: int | None = None,
    depth: int = 2,
    kernel_size: int = 11,
    kernel: Literal["ntk", "nngp"] = "ntk",
    input: Literal["image", "noise"] = "image",
    fraction: float = 0.02,
    n_anchors: int | None = None,
    rank: int = DEFAULT_RANK,
    stop: Stop = "sure",
    guided: bool = False,
    guided_kernel: Literal["ntk", "nngp"] | None = "nngp",
    reference: np.ndarray | None = None,
    device: str | None = None,
    seed: int = 0,
    noise_channels: int = 32,
    stream_steps: int = 12,
    volume: bool = False,
    kernel_size_z: int | None = None,
    noise_blur: float = 0.0,
) -> Generator[Progress | TwicingStep, None, NTKResult]:
    """Denoise with the analytic NTK filter of a CNN, streaming progress and twicing steps.

    Parameters
    ----------
    image : numpy.ndarray
        Noisy image, 2-D or 3-D with ``channel_axis`` (with ``volume``: a 3-D ``(Z, Y, X)`` volume,
        4-D with ``channel_axis``); never modified.
    sigma : float, optional
        Noise standard deviation in the image's units; estimated (wavelet MAD) when omitted.
    channel_axis : int, optional
        Colour axis; all channels share one filter (the NTK of shared hidden layers is
        ``K (x) I_C``) and patches include every channel.
    depth, kernel_size, kernel : int, int, {"ntk", "nngp"}
        Architecture of the vanilla CNN whose kernel is the filter (see :class:`CNNKernel`).
    input : {"image", "noise"}
        Kernel computed from the noisy image, or from i.i.d. noise (the deep image prior's input).
    fraction : float
        Fraction of pixels used as Nyström anchors (default 2 %); ``n_anchors`` overrides it.
    n_anchors : int, optional
        Number of anchors.
    rank : int
        Maximal number of eigenimages.
    stop : {"sure", "oracle"} or int
        Monte-Carlo SURE (one more pipeline run on ``y + eps b``; on clipped data with the noise's
        smaller spread near the bounds, see :func:`~napari_ntk_denoise.stopping.clipped_noise_scale`
        and ``params["clip_bounds"]``), the PSNR-optimal step given a
        ``reference`` (the paper's protocol), or a fixed number of twicing steps.
    guided : bool
        Two stages: a first estimate (the pilot ``p``: the mean of the first stage's output and that
        of a second run on another anchor draw, each at its chosen step, with the NNGP kernel at
        0.7 of it, see :data:`PILOT_STEP`), then the kernel recomputed from ``p`` and the noisy image
        twiced again; the output is ``a p + (1 - a) z(t)``, the pilot weight ``a`` chosen for
        every ``t`` by the same Monte-Carlo SURE (by the MSE with ``stop="oracle"``; ``a = 0``
        with a fixed step), whose perturbed run goes through both stages.
    guided_kernel : {"nngp", "ntk"} or None
        Kernel type of both guided stages (``None``: ``kernel``).  The output-layer (NNGP) kernel
        by default: it makes the better pilot and the better second filter.
    reference : numpy.ndarray, optional
        Clean image in the same layout: PSNR curves, and required by ``stop="oracle"``.
    device : str, optional
        ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when available.
    seed : int
        Seeds the anchors, the SURE probe and the noise input.
    noise_channels : int
        Channels of the noise input.
    stream_steps : int
        Number of intermediate twicing outputs yielded per stage (0: none).
    volume : bool
        Treat the image as a Z stack and compute the kernel from 3-D patches (the NTK of a CNN with
        ``r_z x r x r`` convolutions); one filter for the whole volume.
    kernel_size_z : int, optional
        Convolution size ``r_z`` along Z with ``volume`` (default ``kernel_size``).
    noise_blur : float
        Spatially correlated noise: white noise blurred by a Gaussian of this standard deviation
        (pixels, along Y and X; ``sigma`` is then the noise's own standard deviation).  SURE's
        Monte-Carlo probe is coloured alike, so that it estimates the risk under that noise.

    Yields
    ------
    Progress or TwicingStep

    Returns
    -------
    NTKResult

    Notes
    -----
    Cost is dominated by the kernel columns: ``O(d m r^2 C + d m k)`` per pipeline run, with
    ``d`` pixels, ``m`` anchors, ``k = rank``; memory ``O(d k + m^2)``.  ``stop="sure"`` doubles the
    runs, ``guided=True`` triples them (two first-stage anchor draws, then the guided stage).

    References
    ----------
    J. Tachella, J. Tang, M. Davies, "The Neural Tangent Link Between CNN Denoisers and Non-Local
    Filters", CVPR 2021.  S. Ramani, T. Blu, M. Unser, "Monte-Carlo SURE", IEEE TIP 17(9), 2008.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(stop, str):
        if stop not in ("sure", "oracle"):
            raise ValueError(f"stop must be 'sure', 'oracle' or a positive integer, got {stop!r}")
    elif isinstance(stop, bool) or int(stop) != stop or stop < 0:
        raise ValueError(f"stop must be 'sure', 'oracle' or a non-negative integer, got {stop!r}")
    if stop == "oracle" and reference is None:
        raise ValueError("stop='oracle' needs a reference image")
    if guided_kernel not in (None, "ntk", "nngp"):
        raise ValueError(f"guided_kernel must be 'ntk', 'nngp' or None, got {guided_kernel!r}")
    st = _setup(image, channel_axis, depth, kernel_size, kernel, input, fraction, n_anchors, rank, device, seed,
                noise_channels, passes=1 + (stop == "sure"), volume=volume, kernel_size_z=kernel_size_z)
    y, dev = st.y, st.device
    ref = None
    if reference is not None:
        ref, _ = prepare_image(reference, channel_axis, name="reference", spatial=st.kernel.ndim)
        if ref.shape != y.shape:
            raise ValueError(f"reference shape {ref.shape} differs from the image's {y.shape}")
    if sigma is not None and not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
    if np.ptp(y) == 0:  # a constant image is its own denoised result: no filter, no step
        return NTKResult(image=st.layout.restore(y.copy()), t=0, sigma=float(sigma or 0.0), sigma_estimated=False,
                         t_grid=t_grid(), stages=[], layout=st.layout, data_range=0.0,
                         params=dict(stop=stop, constant=True, stop_warnings=[]))
    sigma_estimated = sigma is None
    if sigma is None:
        sigma = estimate_noise_sigma(st.layout.restore(y), st.layout.channel_axis)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
    if stop == "sure" and sigma == 0:
        raise ValueError("stop='sure' needs sigma > 0")
    d, n_ch = math.prod(y.shape[:-1]), y.shape[-1]
    data_range = float(ref.max() - ref.min()) if ref is not None else float(y.max() - y.min())
    data_range = 1.0 if ref is not None and ref.max() <= 1 and ref.min() >= 0 else data_range
    timings["setup"] = time.perf_counter() - t0

    yt = torch.from_numpy(y.reshape(d, n_ch)).to(dev, torch.float32)
    eps = SURE_EPS * sigma
    probe = _probe(seed, tuple(y.shape[:-1]), n_ch, str(dev))
    if noise_blur > 0:
        probe = _coloured(probe, tuple(y.shape[:-1]), noise_blur)
    bounds = clip_bounds(y) if stop == "sure" else (None, None)
    noise_var = None
    if bounds != (None, None):  # less noise near the bounds: the probe weighted by sigma_i / sigma
        scale = clipped_noise_scale(yt.T.reshape(n_ch, *y.shape[:-1]), sigma, *bounds).reshape(n_ch, d).T
        probe = probe * scale
        noise_var = sigma**2 * float((scale.double() ** 2).mean())
    y_eps = yt + eps * probe
    reft = None if ref is None else torch.from_numpy(ref.reshape(d, n_ch)).to(dev, torch.float32)
    ts = t_grid()
    y_norm2 = float((yt.double() ** 2).sum())
    stages: list[StageResult] = []
    guide = guide_eps = guide_div = None

    def kernel_image(img: torch.Tensor | None) -> torch.Tensor:
        """Kernel input: stage 1's (``None``), or an image ``(d, C)`` already on the device."""
        if img is None:
            return _kernel_input(y, st.input, st.noise_channels, seed, dev)
        return img.T.reshape(n_ch, *y.shape[:-1]).contiguous()

    kern = replace(st.kernel, kind=guided_kernel or kernel) if guided else st.kernel
    # (stage, anchors, label, timing): with guided=True a second first-stage run on another anchor draw for the pilot
    runs = [(1, st.anchors, "", "stage1")]
    if guided:
        runs += [(1, sample_anchors(y.shape[:-1], len(st.anchors), seed + 1), "pilot ", "pilot"),
                 (2, st.anchors, "guided ", "stage2")]
    pilots: list[tuple[int, torch.Tensor, torch.Tensor | None, float | None]] = []  # (t, p, p_eps, div p)
    doubts: list[str] = []
    for run, (stage, anchors, label, phase) in enumerate(runs, 1):
        tk = time.perf_counter()
        x = kernel_image(guide)
        project = [yt, probe] + ([reft] if reft is not None else []) + ([guide] if stage == 2 else [])
        paired = stop == "sure" and not (st.input == "noise" and stage == 1)
        x_eps = kernel_image(y_eps if guide_eps is None else guide_eps) if paired else None
        main, pert = yield from forward_progress(iter_nystrom(  # fractions of the whole run, not of this stage
            kern, x, anchors, st.rank, project=project, stage=f"{label}kernel ({run}/{len(runs)})",
            seed=seed, x_eps=x_eps, project_eps=[y_eps, probe], keep_basis_eps=guided and stage == 1,
        ), "", part=(run - 1, len(runs)))
        timings[f"{phase}_kernel"] = time.perf_counter() - tk
        filt = main.filter
        coeffs, probe_c = main.projections[0], main.projections[1]
        lam = filt.normalized_eigenvalues
        curve = mse = None
        if reft is not None:
            mse = mse_curve(ts, lam, coeffs, main.projections[2], float((reft.double() ** 2).sum()), d * n_ch)
        if stop == "sure":
            if pert is None:  # noise input: the filter does not depend on y, the perturbed run shares it
                pert = main
                coeffs_eps = coeffs + eps * probe_c
            else:
                coeffs_eps = pert.projections[0]
            curve = mc_sure_curve(ts, lam, coeffs, probe_c, pert.filter.normalized_eigenvalues, coeffs_eps,
                                  pert.projections[1], y_norm2, sigma, eps, d * n_ch, noise_var)
        blend = None
        if stage == 2 and stop in ("sure", "oracle"):  # averaged with the pilot, a(t) by SURE (or the MSE)
            p64 = guide.double()
            pilot = PilotTerms(
                coeffs=main.projections[-1], norm2=float((p64**2).sum()), y_dot=float((yt.double() * p64).sum()),
                divergence=guide_div,
                ref_dot=None if reft is None else float((reft.double() * p64).sum()))
            weights, curve, mse = pilot_blend(ts, lam, coeffs, pilot, curve, mse,
                                              None if reft is None else main.projections[2], sigma, d * n_ch)
            blend = PilotBlend(pilot=guide, t=ts, weight=weights, divergence=pilot.divergence)
        if stop == "sure":
            t_best = curve.best_t
        elif stop == "oracle":
            t_best = int(ts[int(np.argmin(mse))])
        else:
            t_best = int(stop)
        result = StageResult(filter=filt, coeffs=coeffs, t=t_best, sure=curve, mse=mse, blend=blend)
        if phase != "pilot" and curve is not None:
            doubts += [f"{label}{d}" for d in stop_doubts(curve, sigma**2 if noise_var is None else noise_var)]
        if phase != "pilot":
            stages.append(result)
            for t in twicing_schedule(t_best, stream_steps):
                img = result.output(t).reshape(*y.shape).cpu().numpy()
                yield TwicingStep(stage=stage, t=t, image=st.layout.restore(img))
        if guided and stage == 1:
            t_pilot = _pilot_step(t_best, ts, PILOT_STEP[kern.kind])
            p_eps = None
            if pert is not None:  # the perturbed pilot, also when both runs share the filter (noise input)
                pf = pert.filter
                p_eps = twicing_output(pf.basis, coeffs_eps, twicing_factors(pf.normalized_eigenvalues, t_pilot))
            div = None if curve is None else float(curve.divergence[np.searchsorted(ts, t_pilot)])
            pilots.append((t_pilot, result.output(t_pilot), p_eps, div))
            del main, pert, result
            if len(pilots) == 2:  # the pilot: the mean of both draws' estimates (less Nystrom noise in the guide)
                _, (pa, pb), (ea, eb), (da, db) = zip(*pilots)
                guide = (pa + pb) / 2
                guide_eps = None if ea is None else (ea + eb) / 2
                guide_div = None if da is None else (da + db) / 2

    final = stages[-1]
    image_out = st.layout.restore(final.output(final.t).reshape(*y.shape).cpu().numpy())
    timings["total"] = time.perf_counter() - t0
    params = dict(sigma=sigma, channel_axis=channel_axis, depth=depth, kernel_size=kernel_size, kernel=kernel,
                  input=input, fraction=fraction, n_anchors=len(st.anchors), rank=st.rank, stop=stop, guided=guided,
                  device=str(dev), seed=seed, clip_bounds=list(bounds), stop_warnings=doubts)
    if guided:
        params.update(guided_kernel=kern.kind, t_pilot=[p[0] for p in pilots])
    if volume:
        params.update(volume=True, kernel_size_z=st.kernel.sizes[0])
    if noise_blur > 0:
        params.update(noise_blur=noise_blur)
    res = NTKResult(image=image_out, t=final.t, sigma=float(sigma), sigma_estimated=sigma_estimated, t_grid=ts,
                    stages=stages, layout=st.layout, data_range=data_range, timings=timings, params=params)
    if ref is not None:
        clipped = np.clip(image_out, 0, 1) if data_range == 1.0 else image_out
        res.params["psnr"] = psnr(clipped, st.layout.restore(ref), data_range)
    for doubt in doubts:
        warnings.warn(f"doubtful stop at t = {final.t}: {doubt}", DoubtfulStopWarning, stacklevel=2)
    return res


def denoise_ntk(image: np.ndarray, sigma: float | None = None, **kwargs: Any) -> tuple[np.ndarray, NTKResult]:
    """Denoise ``image`` with the analytic NTK filter; non-streaming :func:`iter_denoise_ntk`.

    Returns
    -------
    denoised : numpy.ndarray
        Same layout as ``image``; float32 (float64 for float64 input).
    result : NTKResult
        Chosen step, sigma, curves, filter and timings.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = np.tile(np.linspace(0, 1, 32), (32, 1))
    >>> noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    >>> out, res = denoise_ntk(noisy, sigma=0.1, kernel_size=5, fraction=0.1)
    >>> bool(np.mean((out - clean) ** 2) < np.mean((noisy - clean) ** 2))
    True
    """
    kwargs.setdefault("stream_steps", 0)  # nobody looks at intermediate steps here
    result = drain(iter_denoise_ntk(image, sigma, **kwargs))
    return result.image, result
