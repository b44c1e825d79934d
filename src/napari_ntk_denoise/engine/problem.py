"""One denoising problem, prepared before any heavy work: the checked image, its noise level, the
Monte-Carlo SURE probe and perturbed image, the anchors and the optional reference, on the
compute device."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._input import ImageLayout, check_memory, prepare_image, resolve_device
from .config import FilterConfig
from .kernels import CNNKernel
from .noise import blurred_noise
from .nystrom import estimate_bytes, sample_anchors
from .stopping import clip_bounds, clipped_noise_scale, estimate_noise_sigma, t_grid

__all__ = ["PROBE_BAND", "PROBE_PERIOD", "SURE_EPS", "Problem", "Setup", "prepare_problem", "setup", "sure_probe"]

#: perturbation of Monte-Carlo SURE, relative to sigma
SURE_EPS = 0.01
#: Monte-Carlo SURE probes rows in bands: ``PROBE_BAND`` of every ``PROBE_PERIOD`` rows (Y)
PROBE_BAND, PROBE_PERIOD = 8, 64


@dataclass
class Setup:
    """Checked inputs of a run: the image as ``(*spatial, C)``, its layout, the kernel, the
    anchors and the rank (built before any heavy work)."""

    y: np.ndarray
    layout: ImageLayout
    kernel: CNNKernel
    anchors: np.ndarray
    rank: int
    device: torch.device
    config: FilterConfig

    def kernel_input(self) -> torch.Tensor:
        """The first stage's kernel input: ``y`` as ``(C, *spatial)``, or i.i.d. N(0, 1) noise."""
        if self.config.input == "image":
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(self.y, -1, 0))).to(self.device, torch.float32)
        g = torch.Generator().manual_seed(self.config.seed + 7919)
        return torch.randn(self.config.noise_channels, *self.y.shape[:-1], generator=g).to(self.device, torch.float32)


def setup(image: Any, channel_axis: int | None, config: FilterConfig, device: str | None, passes: int) -> Setup:
    """Check ``image`` against ``config`` and the memory of ``device`` for ``passes`` pipeline
    passes held at once; draw the anchors.

    Raises
    ------
    ValueError
        An image the architecture cannot filter.
    MemoryError
        Too little memory for the request.
    """
    kern = config.architecture
    y, layout = prepare_image(image, channel_axis, spatial=kern.ndim)
    kern.check_image(y.shape[:-1])
    d = math.prod(y.shape[:-1])
    m = config.nystrom.anchors_for(d)
    rank = int(min(config.nystrom.rank, m))
    dev = resolve_device(device)
    channels = y.shape[-1] if config.input == "image" else config.noise_channels
    need = estimate_bytes(d, channels, m, rank, kern, device=dev) * passes
    size = "x".join(map(str, y.shape[:-1]))
    check_memory(need, dev, f"an NTK filter of a {size} {'volume' if kern.ndim == 3 else 'image'} with {m} anchors "
                 f"and rank {rank}", "use a smaller anchor fraction or rank, or denoise in tiles")
    return Setup(y, layout, kern, sample_anchors(y.shape[:-1], m, config.seed), rank, dev, config)


@functools.lru_cache(maxsize=1)
def sure_probe(seed: int, shape: tuple[int, ...], channels: int, device: str) -> torch.Tensor:
    """Monte-Carlo SURE probe ``b`` of shape ``(d, C)`` on ``device`` (read only), ``E[b b^T] = I``.

    On images of at least ``4 PROBE_PERIOD`` rows, ``b`` is N(0, P/B) on bands of ``B = PROBE_BAND``
    rows out of every ``P = PROBE_PERIOD`` (random phase) and zero elsewhere: still an unbiased
    divergence probe (Hutchinson's estimator needs only ``E[b b^T] = I``), but the perturbed kernel
    differs from the unperturbed one only on rows and anchors whose patches meet a band, so the
    perturbed pass costs about half as much (``tests/test_denoise.py`` checks that it stops where
    a dense probe does).  Smaller images get a dense N(0, 1) probe.  Drawn on the CPU, so every
    device sees the same probe; the last one is kept (planes of a stack and tiles of a plane
    usually share a shape).
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


@dataclass
class Problem:
    """The data every stage of a run reads, flattened to ``(d, C)`` on the device.

    ``y_eps = y + eps b`` is the perturbed image of Monte-Carlo SURE, with the probe ``b``
    weighted by the noise's smaller spread near clipping bounds (``noise_var`` is then the mean
    noise variance).
    """

    setup: Setup
    sigma: float
    sigma_estimated: bool
    yt: torch.Tensor
    probe: torch.Tensor
    eps: float
    y_eps: torch.Tensor
    bounds: tuple[float | None, float | None]
    noise_var: float | None
    reference: torch.Tensor | None
    reference_image: np.ndarray | None
    data_range: float
    ts: np.ndarray

    @property
    def size(self) -> int:
        """Values of the image, ``d C``."""
        return self.yt.numel()

    def image_input(self, img: torch.Tensor) -> torch.Tensor:
        """An image ``(d, C)`` as a kernel input ``(C, *spatial)``."""
        y = self.setup.y
        return img.T.reshape(y.shape[-1], *y.shape[:-1]).contiguous()

    def restore(self, z: torch.Tensor) -> np.ndarray:
        """An output ``(d, C)`` in the input's layout, on the CPU."""
        return self.setup.layout.restore(z.reshape(*self.setup.y.shape).cpu().numpy())


def _sigma(st: Setup, sigma: float | None) -> float:
    if sigma is None:
        sigma = estimate_noise_sigma(st.layout.restore(st.y), st.layout.channel_axis)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
    if st.config.stop == "sure" and sigma == 0:
        raise ValueError("stop='sure' needs sigma > 0")
    return float(sigma)


def prepare_problem(st: Setup, sigma: float | None, ref: np.ndarray | None) -> Problem:
    """The problem of a checked, non-constant image: ``sigma`` estimated (wavelet MAD) when
    ``None``, the SURE probe (coloured like the noise with ``noise_blur``), the reference."""
    y, dev, cfg = st.y, st.device, st.config
    s = _sigma(st, sigma)
    d, n_ch = math.prod(y.shape[:-1]), y.shape[-1]
    data_range = float(ref.max() - ref.min()) if ref is not None else float(y.max() - y.min())
    data_range = 1.0 if ref is not None and ref.max() <= 1 and ref.min() >= 0 else data_range
    yt = torch.from_numpy(y.reshape(d, n_ch)).to(dev, torch.float32)
    probe = sure_probe(cfg.seed, tuple(y.shape[:-1]), n_ch, str(dev))
    if cfg.noise_blur > 0:
        probe = _coloured(probe, tuple(y.shape[:-1]), cfg.noise_blur)
    bounds = clip_bounds(y) if cfg.stop == "sure" else (None, None)
    noise_var = None
    if bounds != (None, None):  # less noise near the bounds: the probe weighted by sigma_i / sigma
        scale = clipped_noise_scale(yt.T.reshape(n_ch, *y.shape[:-1]), s, *bounds).reshape(n_ch, d).T
        probe = probe * scale
        noise_var = s**2 * float((scale.double() ** 2).mean())
    eps = SURE_EPS * s
    reft = None if ref is None else torch.from_numpy(ref.reshape(d, n_ch)).to(dev, torch.float32)
    return Problem(st, s, sigma is None, yt, probe, eps, yt + eps * probe, bounds, noise_var, reft, ref, data_range,
                   t_grid())
