"""The NTK filter's options, defined and validated once.

:class:`FilterConfig` groups them as the method does: the CNN whose kernel is the filter
(:class:`~napari_ntk_denoise.engine.kernels.CNNKernel`), the Nyström approximation
(:class:`NystromConfig`), the stopping rule, the guided filter (:class:`GuidedConfig`) and the
kernel's input.  The public functions take the options by their flat names (``depth=3,
rank=128, guided=True``); :meth:`FilterConfig.from_options` turns those into one checked object,
which the pipeline, tiling, stacks, the CLI and the widgets share (defaults, memory passes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .kernels import CNNKernel

__all__ = ["FilterConfig", "GuidedConfig", "NystromConfig", "Stop", "OPTION_NAMES"]

Stop = Literal["sure", "oracle"] | int
Kind = Literal["ntk", "nngp"]

#: the guided filter's pilot is its first stage at this fraction of the first stage's chosen step,
#: by kernel type: a smoother NNGP pilot carries less of the first filter's noise into the guided
#: kernel (``bench-ntk --datasets``, see benchmarks/results/README.md)
PILOT_STEP = {"nngp": 0.7, "ntk": 1.0}


@dataclass(frozen=True)
class NystromConfig:
    """Nyström approximation: ``fraction`` of the pixels as anchors (``n_anchors`` overrides it)
    and at most ``rank`` eigenimages; with ``adaptive``, the first stage takes every other anchor
    and a lower rank where the kernel's spectrum allows
    (:func:`~napari_ntk_denoise.engine.nystrom.light_set`)."""

    fraction: float = 0.02
    n_anchors: int | None = None
    rank: int = 256
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.n_anchors is None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.n_anchors is not None and (int(self.n_anchors) != self.n_anchors or self.n_anchors < 1):
            raise ValueError(f"n_anchors must be a positive integer, got {self.n_anchors}")
        if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank}")

    def anchors_for(self, d: int) -> int:
        """Number of anchors among ``d`` pixels."""
        if self.n_anchors is not None:
            if self.n_anchors > d:
                raise ValueError(f"n_anchors must be in [1, {d}], got {self.n_anchors}")
            return int(self.n_anchors)
        return max(1, min(d, int(round(self.fraction * d))))


@dataclass(frozen=True)
class GuidedConfig:
    """The guided filter: a second stage whose kernel is computed from a first estimate (the
    pilot), with ``kernel`` for both of its stages (``None``: the first stage's).

    The pilot is the first stage's estimate, or with ``pilot_draws=2`` its mean with that of a
    second draw of anchors, ``pilot_share`` as many as the first stage's (which averages out part
    of the Nyström error at the cost of one more run); the guided stage has ``stage_share`` as many.  The guided kernel,
    computed from a smooth pilot, needs fewer anchors than the first (``bench-ntk --datasets``
    measures the shares against the full anchor sets), but never fewer than twice the rank, below
    which the Nyström eigenimages lose their accuracy.
    """

    enabled: bool = True
    kernel: Kind | None = "nngp"
    pilot_share: float = 0.5
    stage_share: float = 0.5
    pilot_draws: int = 1

    def __post_init__(self) -> None:
        if self.kernel not in (None, "ntk", "nngp"):
            raise ValueError(f"guided_kernel must be 'ntk', 'nngp' or None, got {self.kernel!r}")
        if self.pilot_draws not in (1, 2) or isinstance(self.pilot_draws, bool):
            raise ValueError(f"guided_pilot_draws must be 1 or 2, got {self.pilot_draws!r}")
        for name in ("pilot_share", "stage_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"guided_{name} must be in (0, 1], got {getattr(self, name)}")

    def anchors(self, m: int, share: float, rank: int) -> int:
        """Anchors of a guided run: ``share`` of the first stage's ``m``, but at least ``2 rank``
        (and at most ``m``)."""
        return max(1, min(m, max(int(m * share), 2 * rank)))


def _check_stop(stop: Stop) -> None:
    if isinstance(stop, str):
        if stop not in ("sure", "oracle"):
            raise ValueError(f"stop must be 'sure', 'oracle' or a positive integer, got {stop!r}")
    elif isinstance(stop, bool) or int(stop) != stop or stop < 0:
        raise ValueError(f"stop must be 'sure', 'oracle' or a non-negative integer, got {stop!r}")


@dataclass(frozen=True)
class FilterConfig:
    """Every option of the NTK filter (see :func:`~napari_ntk_denoise.engine.denoise.iter_denoise_ntk`).

    Attributes
    ----------
    architecture : CNNKernel
        The CNN whose kernel is the filter; flat options ``depth``, ``kernel_size``, ``kernel``
        (its ``kind``), ``volume`` (3-D patches) and ``kernel_size_z``.
    nystrom : NystromConfig
        Flat options ``fraction``, ``n_anchors``, ``rank``, ``adaptive``.
    stop : {"sure", "oracle"} or int
        Monte-Carlo SURE, the PSNR-optimal step given a reference, or a fixed number of steps.
    guided : GuidedConfig
        Flat options ``guided`` (on or off), ``guided_kernel``, ``guided_pilot_share``,
        ``guided_stage_share`` and ``guided_pilot_draws``.
    input : {"image", "noise"}
        Kernel computed from the noisy image, or from i.i.d. noise (the deep image prior's input).
    noise_channels : int
        Channels of the noise input.
    noise_blur : float
        Standard deviation (pixels) of the Gaussian blur that makes the noise spatially correlated.
    seed : int
        Seeds the anchors, the SURE probe and the noise input.
    """

    architecture: CNNKernel = field(default_factory=CNNKernel)
    nystrom: NystromConfig = field(default_factory=NystromConfig)
    stop: Stop = "sure"
    guided: GuidedConfig = field(default_factory=GuidedConfig)
    input: Literal["image", "noise"] = "image"
    noise_channels: int = 32
    noise_blur: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_stop(self.stop)
        if self.input not in ("image", "noise"):
            raise ValueError(f"input must be 'image' or 'noise', got {self.input!r}")
        if int(self.noise_channels) < 1:
            raise ValueError(f"noise_channels must be >= 1, got {self.noise_channels}")
        if not self.noise_blur >= 0:
            raise ValueError(f"noise_blur must be >= 0, got {self.noise_blur}")

    @classmethod
    def from_options(cls, **options: Any) -> FilterConfig:
        """The configuration from flat option names (any of :data:`OPTION_NAMES`).

        Raises
        ------
        TypeError
            An unknown option.
        ValueError
            An invalid value.
        """
        unknown = set(options) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; the NTK filter's options are {list(OPTION_NAMES)}")
        opts = {**DEFAULT_OPTIONS, **options}
        arch = CNNKernel(depth=opts["depth"], kernel_size=opts["kernel_size"], kind=opts["kernel"],
                         ndim=3 if opts["volume"] else 2, kernel_size_z=opts["kernel_size_z"])
        return cls(architecture=arch,
                   nystrom=NystromConfig(opts["fraction"], opts["n_anchors"], opts["rank"], bool(opts["adaptive"])),
                   stop=opts["stop"], guided=GuidedConfig(bool(opts["guided"]), opts["guided_kernel"],
                                                           float(opts["guided_pilot_share"]),
                                                           float(opts["guided_stage_share"]),
                                                           opts["guided_pilot_draws"]),
                   input=opts["input"], noise_channels=int(opts["noise_channels"]),
                   noise_blur=float(opts["noise_blur"]), seed=int(opts["seed"]))

    def options(self) -> dict[str, Any]:
        """The flat options, such that ``from_options(**c.options()) == c``."""
        a = self.architecture
        return dict(depth=a.depth, kernel_size=a.kernel_size, kernel=a.kind, volume=a.ndim == 3,
                    kernel_size_z=a.kernel_size_z, fraction=self.nystrom.fraction, n_anchors=self.nystrom.n_anchors,
                    rank=self.nystrom.rank, adaptive=self.nystrom.adaptive, stop=self.stop, guided=self.guided.enabled,
                    guided_kernel=self.guided.kernel, guided_pilot_share=self.guided.pilot_share,
                    guided_stage_share=self.guided.stage_share, guided_pilot_draws=self.guided.pilot_draws,
                    input=self.input, noise_channels=self.noise_channels,
                    noise_blur=self.noise_blur, seed=self.seed)

    def replace(self, **options: Any) -> FilterConfig:
        """A copy with some flat options changed."""
        return FilterConfig.from_options(**{**self.options(), **options})

    @property
    def stage_kernel(self) -> CNNKernel:
        """The kernel of every stage: the guided kernel type when the filter is guided."""
        if self.guided.enabled and self.guided.kernel is not None:
            return dataclasses.replace(self.architecture, kind=self.guided.kernel)
        return self.architecture

    @property
    def light_first_stage(self) -> bool:
        """Whether the first stage may take the adaptive (light) Nyström set: kernels of the image only."""
        return self.nystrom.adaptive and self.input == "image"

    @property
    def runs(self) -> int:
        """Nyström pipeline runs: one, or when guided the pilot's draws and the guided stage."""
        return 1 + self.guided.pilot_draws if self.guided.enabled else 1

    @property
    def memory_passes(self) -> int:
        """Pipeline passes held in memory at once, for the memory guard: the filter and its
        perturbed twin with MC-SURE, and the first stage's filter, kept while the guided
        stage runs."""
        return 1 + (self.stop == "sure") + self.guided.enabled


#: every flat option with its default
DEFAULT_OPTIONS: dict[str, Any] = FilterConfig().options()
OPTION_NAMES = tuple(DEFAULT_OPTIONS)
