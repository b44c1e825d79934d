"""One training run's tensors, built from a configuration: :func:`prepare_run` and :class:`TrainingRun`.

Everything is built on the CPU from the run's seed, so that seeded runs start alike on any device,
and moved to the training device by :meth:`TrainingRun.place`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from skimage.restoration import estimate_sigma

from .architectures import build_network
from .config import ADAM_BETAS, ADAM_LR, DIP_LR, DIPConfig
from .device import empty_cache, retry_on_cpu
from .diagnostics import effective_weights, ntk_top_eigenvalue, preactivation_eigenimages, weight_change
from .stopping import OutputAverage

__all__ = ["HOLDOUT_FRACTION", "INPUT_JITTER", "NOISE_INPUT_SPAN", "SURE_EPSILON", "TrainingRun", "Units",
           "blind_spots", "prepare_run", "start_optimizer"]

#: standard deviation of the jitter added to a DIP-style network's noise input at every step
INPUT_JITTER = 1 / 30
#: a DIP-style noise input is uniform on [0, NOISE_INPUT_SPAN) (Ulyanov et al.)
NOISE_INPUT_SPAN = 0.1
#: fraction of the pixels held out of the loss to validate on, for ``criterion="holdout"``
HOLDOUT_FRACTION = 0.05
#: MC-SURE perturbation size, in units of sigma (Ramani et al. 2008)
SURE_EPSILON = 0.01


class TrainingRun:
    """Tensors of one training run (network, optimiser, input, target, probes) and their device.

    Built by :func:`prepare_run` on the CPU and moved to ``device`` by :meth:`place`;
    :func:`~napari_ntk_denoise.dip.device.retry_on_cpu` moves it back.
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
        """Create the optimiser (again after a move to another device, with its state)."""
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
        """The (translated) output at input ``x`` and the pre-activations."""
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


class Units(NamedTuple):
    """Data units of the network's values: ``data = offset + scale * network``."""

    offset: float
    scale: float

    @classmethod
    def of(cls, y: np.ndarray, style: str) -> "Units":
        """Units of a network of ``style`` trained on ``y``."""
        if style == "dip":  # onto [0, 1], the sigmoid's range
            low, high = float(y.min()), float(y.max())
            return cls(low, high - low or 1.0)
        return cls(0.0, float(np.abs(y).max()) or 1.0)

    def to_network(self, a: np.ndarray) -> torch.Tensor:
        """``(1, C, H, W)`` float32 tensor of a ``(C, H, W)`` array in data units."""
        return torch.from_numpy((a - self.offset) / self.scale).float()[None]


    def to_image(self, z: torch.Tensor, layout: tuple[int | None, type]) -> np.ndarray:
        """A network output as an image in data units, in the caller's ``(channel_axis, dtype)``."""
        channel_axis, dtype = layout
        arr = (z[0].double() * self.scale + self.offset).cpu().numpy().astype(dtype)
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


def prepare_run(
    y: np.ndarray, ref: np.ndarray | None, device: torch.device, cfg: DIPConfig, settings: dict, *,
    sigma: float | None, data_range: float | None,
) -> tuple[TrainingRun, Units, float | None, float | None]:
    """Seeded network, input, probe and scaled tensors of a run (on the CPU); its units, sigma, peak.

    ``cfg`` is resolved (:meth:`DIPConfig.resolve`); the noise level (estimated when not given)
    and the data range used go into ``settings``.
    """
    channels, h, w = y.shape
    dip_style = cfg.style == "dip"
    units = Units.of(y, cfg.style)
    seeds = np.random.SeedSequence(cfg.seed).generate_state(5)
    weights_gen, input_gen, probe_gen, holdout_gen = (torch.Generator().manual_seed(int(s)) for s in seeds[:4])
    image_input = cfg.input == "image"
    y_t = units.to_network(y)
    if image_input:
        x = y_t
    elif dip_style:
        x = NOISE_INPUT_SPAN * torch.rand(1, cfg.noise_channels, h, w, generator=input_gen)
    else:
        x = torch.randn(1, cfg.noise_channels, h, w, generator=input_gen)
    net = build_network(cfg.arch, x.shape[1], channels, cfg.width, kernel_size=cfg.kernel_size, depth=cfg.depth,
                        style=cfg.style, generator=weights_gen)
    probe, epsilon = None, 0.0
    if image_input:
        estimated = sigma is None
        sigma = _estimate_sigma(y, required=cfg.criterion == "sure") if estimated else sigma
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
    if cfg.criterion == "holdout":
        holdout = (torch.rand(1, 1, h, w, generator=holdout_gen) < HOLDOUT_FRACTION).float()
        holdout.view(-1)[0] = 1.0  # at least one pixel
        if image_input:
            x = blind_spots(y_t, holdout)
    run = TrainingRun(
        net, x, y_t, ref_t, probe, epsilon, translate=image_input and not dip_style, device=device,
        jitter=INPUT_JITTER if dip_style and not image_input else 0.0, show_average=dip_style, seed=int(seeds[4]),
        holdout=holdout,
    )
    return run, units, sigma, data_range


def blind_spots(y: torch.Tensor, holdout: torch.Tensor) -> torch.Tensor:
    """``y`` with each held-out pixel replaced by the mean of its kept 3 x 3 neighbours, so that
    neither the input nor the loss holds the noise of a held-out pixel."""
    keep = 1 - holdout
    ones = torch.ones(1, 1, 3, 3, dtype=y.dtype)
    def box(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(t, (1, 1, 1, 1), mode="replicate"), ones)
    fill = torch.cat([box(c * keep) for c in y.split(1, dim=1)], dim=1) / box(keep).clamp_min(1.0)
    return y * keep + fill * holdout


def start_optimizer(run: TrainingRun, cfg: DIPConfig, lr: float | None) -> float:
    """Start ``run``'s optimiser at ``lr`` (the configuration's default when None); returns the rate."""
    if lr is None and cfg.optimizer == "adam":
        lr = DIP_LR if cfg.style == "dip" else ADAM_LR
    elif lr is None:
        power_gen = torch.Generator().manual_seed(cfg.seed)
        lr = 1.0 / retry_on_cpu(run, lambda: ntk_top_eigenvalue(run.net, run.x, generator=power_gen))
    if cfg.optimizer == "adam":
        run.start(lambda: torch.optim.Adam(run.net.parameters(), lr=lr, betas=ADAM_BETAS))
    else:
        run.start(lambda: torch.optim.SGD(run.net.parameters(), lr=lr, momentum=0.0))
    return lr
