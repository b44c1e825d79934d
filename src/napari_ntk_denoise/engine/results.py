"""Results of the NTK filter: each stage's filter, curves and chosen step, and the whole run's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._input import ImageLayout
from .nystrom import LowRankFilter
from .stopping import SureCurve

__all__ = ["NTKResult", "PilotBlend", "StageResult"]


@dataclass
class PilotBlend:
    """The guided stage's output averaged with its pilot: ``u(t) = a(t) p + (1 - a(t)) z(t)``.

    Attributes
    ----------
    pilot : torch.Tensor or None
        The pilot ``p``, ``(d, C)``: the first stage's output at its ``params["t_pilot"]`` step,
        or its mean with that of the same filter on a second anchor draw (``None`` once dropped
        to save memory).
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
    perturbed_pixels : int or None
        Pixels whose kernel rows the Monte-Carlo SURE pass computed on the perturbed input (the
        rest share the unperturbed rows); None without a perturbed pass of its own.
    """

    filter: LowRankFilter
    coeffs: torch.Tensor
    t: int
    sure: SureCurve | None = None
    mse: np.ndarray | None = None
    blend: PilotBlend | None = None
    perturbed_pixels: int | None = None

    def output(self, t: float) -> torch.Tensor:
        """``z(t)`` as ``(d, C)`` (averaged with the pilot when the stage has a :class:`PilotBlend`)."""
        z = self.filter.output(self.coeffs, t)
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

    def offsets(self) -> tuple[int, int]:
        """Lowest and highest offsets from the chosen step, in grid steps, that stay on :attr:`t_grid`
        (none for a constant image, which has no step to move)."""
        if not self.stages:
            return 0, 0
        chosen = self._chosen_index()
        return -chosen, len(self.t_grid) - 1 - chosen

    def step_at(self, offset: int) -> int:
        """The step ``offset`` grid steps from the chosen one (stopping at the grid's ends)."""
        if offset == 0 or not self.stages:
            return self.t
        return int(self.t_grid[int(np.clip(self._chosen_index() + offset, 0, len(self.t_grid) - 1))])

    def _chosen_index(self) -> int:
        return int(np.searchsorted(self.t_grid, self.t))

    def render_offset(self, offset: int) -> np.ndarray:
        """:meth:`render` at :meth:`step_at` ``offset``."""
        return self.render(self.step_at(offset))

    def without_eigenimages(self, keep_final: bool = False) -> NTKResult:
        """A copy without the ``d x k`` eigenimages and pilot images (curves, steps, weights and
        metadata kept); with ``keep_final`` the final stage keeps them, in host memory, which is
        all :meth:`render` needs."""
        def bare(st: StageResult) -> StageResult:
            return dataclasses.replace(st, filter=st.filter.without_eigenimages(),
                                       blend=st.blend and dataclasses.replace(st.blend, pilot=None))

        def on_host(st: StageResult) -> StageResult:
            return dataclasses.replace(st, filter=st.filter.on_host(),
                                       coeffs=st.coeffs.cpu(),
                                       blend=st.blend and dataclasses.replace(st.blend, pilot=st.blend.pilot.cpu()))

        final = [on_host(st) if keep_final else bare(st) for st in self.stages[-1:]]
        return dataclasses.replace(self, stages=[bare(st) for st in self.stages[:-1]] + final)

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
