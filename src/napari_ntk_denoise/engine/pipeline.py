"""The stages of the NTK filter: fit a filter (kernel columns, eigenimages and the projections a
stopping rule needs), choose its step, and for the guided filter the pilot that guides the
second stage.

A stage projects named images onto its eigenimages: ``"y"`` (the noisy image), ``"probe"``
(Monte-Carlo SURE's), ``"reference"`` (with a clean image) and ``"guide"`` (the pilot, in the
guided stage); its perturbed twin (the filter of ``y + eps b``, when the kernel depends on
``y``) projects ``y + eps b`` and the probe.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .config import PILOT_STEP
from .events import Progress, forward_progress
from .kernels import CNNKernel
from .nystrom import NystromPass, iter_nystrom
from .problem import Problem
from .results import PilotBlend, StageResult
from .stopping import ORACLE, FixedStep, PilotTerms, SureCurve, mc_sure_curve, mse_curve, pilot_blend

__all__ = ["Guide", "PilotEstimate", "StageFit", "iter_stage", "pilot_estimate"]


@dataclass
class Guide:
    """The guided stage's kernel input ``p`` ``(d, C)``, its perturbed twin (MC-SURE) and the
    Monte-Carlo divergence of ``y -> p``."""

    p: torch.Tensor
    p_eps: torch.Tensor | None
    divergence: float | None


@dataclass
class PilotEstimate:
    """One first-stage estimate at the pilot step ``t``, with its perturbed twin and divergence."""

    t: int
    z: torch.Tensor
    z_eps: torch.Tensor | None
    divergence: float | None

    @staticmethod
    def mean(*draws: PilotEstimate) -> Guide:
        """The pilot: the mean of the draws' estimates (more draws, less Nyström noise in the guide)."""
        first, n = draws[0], len(draws)
        return Guide(sum(d.z for d in draws) / n, None if first.z_eps is None else sum(d.z_eps for d in draws) / n,
                     None if first.divergence is None else sum(d.divergence for d in draws) / n)


@dataclass
class StageFit:
    """A fitted stage: its result, and the pilot estimate when one was asked for."""

    result: StageResult
    pilot: PilotEstimate | None


def _fit(
    prob: Problem, kern: CNNKernel, anchors: np.ndarray, guide: Guide | None, stage: str, part: tuple[int, int],
    keep_basis_eps: bool,
) -> Generator[Progress, None, tuple[NystromPass, NystromPass | None, dict[str, torch.Tensor]]]:
    """Kernel columns and eigenimages of one stage and of its perturbed twin; the named projections."""
    st, cfg = prob.setup, prob.setup.config
    named = {"y": prob.yt, "probe": prob.probe}
    if prob.reference is not None:
        named["reference"] = prob.reference
    if guide is not None:
        named["guide"] = guide.p
    x = st.kernel_input() if guide is None else prob.image_input(guide.p)
    paired = cfg.stop == "sure" and not (cfg.input == "noise" and guide is None)  # does the kernel depend on y?
    x_eps = prob.image_input(prob.y_eps if guide is None else guide.p_eps) if paired else None
    main, pert = yield from forward_progress(iter_nystrom(  # fractions of the whole run, not of this stage
        kern, x, anchors, st.rank, project=list(named.values()), stage=stage, seed=cfg.seed, x_eps=x_eps,
        project_eps=[prob.y_eps, prob.probe], keep_basis_eps=keep_basis_eps,
        light=cfg.light_first_stage and guide is None,
    ), "", part=part)
    return main, pert, dict(zip(named, main.projections))


def _blend(prob: Problem, guide: Guide, lam: np.ndarray, proj: dict, curve: SureCurve | None,
           mse: np.ndarray | None) -> tuple[PilotBlend, SureCurve | None, np.ndarray | None]:
    """The guided output averaged with its pilot, the weight ``a(t)`` by SURE (or the MSE)."""
    p64, ref = guide.p.double(), prob.reference
    pilot = PilotTerms(coeffs=proj["guide"], norm2=float((p64**2).sum()), y_dot=float((prob.yt.double() * p64).sum()),
                       divergence=guide.divergence, ref_dot=None if ref is None else float((ref.double() * p64).sum()))
    weights, curve, mse = pilot_blend(prob.ts, lam, proj["y"], pilot, curve, mse, proj.get("reference"), prob.sigma,
                                      prob.size)
    return PilotBlend(pilot=guide.p, t=prob.ts, weight=weights, divergence=pilot.divergence), curve, mse


def _best_step(prob: Problem, curve: SureCurve | None, mse: np.ndarray | None) -> int:
    stop = prob.setup.config.stop
    if stop == "sure":
        return curve.best_t
    if stop == "oracle":
        return ORACLE.choose(prob.ts, mse)
    return FixedStep(stop).choose(prob.ts, None)


def iter_stage(
    prob: Problem, kern: CNNKernel, anchors: np.ndarray, *, guide: Guide | None = None, stage: str = "kernel",
    part: tuple[int, int] = (0, 1), pilot: bool = False,
) -> Generator[Progress, None, StageFit]:
    """Fit one stage and choose its step by the configured stopping rule.

    Parameters
    ----------
    prob : Problem
        The prepared problem.
    kern : CNNKernel
        The stage's kernel.
    anchors : numpy.ndarray
        Flat anchor indices.
    guide : Guide, optional
        The pilot of a guided stage: the kernel input, and the output averaged with it.
    stage : str
        Name of the stage in the progress events.
    part : tuple of int
        ``(index, count)`` of this stage among the run's, for the progress fractions.
    pilot : bool
        Also return the estimate at the pilot step (a guided filter's first stage).

    Yields
    ------
    Progress

    Returns
    -------
    StageFit
    """
    cfg, ts = prob.setup.config, prob.ts
    main, pert, proj = yield from _fit(prob, kern, anchors, guide, stage, part, keep_basis_eps=pilot)
    perturbed_pixels = None if pert is None else pert.perturbed_pixels
    lam = main.filter.normalized_eigenvalues
    curve = mse = coeffs_eps = None
    if prob.reference is not None:
        mse = mse_curve(ts, lam, proj["y"], proj["reference"], float((prob.reference.double() ** 2).sum()), prob.size)
    if cfg.stop == "sure":
        if pert is None:  # noise input: the filter does not depend on y, the perturbed run shares it
            pert, coeffs_eps = main, proj["y"] + prob.eps * proj["probe"]
        else:
            coeffs_eps = pert.projections[0]
        curve = mc_sure_curve(ts, lam, proj["y"], proj["probe"], pert.filter.normalized_eigenvalues, coeffs_eps,
                              pert.projections[1], float((prob.yt.double() ** 2).sum()), prob.sigma, prob.eps,
                              prob.size, prob.noise_var)
    blend = None
    if guide is not None and cfg.stop in ("sure", "oracle"):
        blend, curve, mse = _blend(prob, guide, lam, proj, curve, mse)
    result = StageResult(filter=main.filter, coeffs=proj["y"], t=_best_step(prob, curve, mse), sure=curve, mse=mse,
                         blend=blend, perturbed_pixels=perturbed_pixels)
    estimate = pilot_estimate(result, pert, coeffs_eps, curve, ts, PILOT_STEP[kern.kind]) if pilot else None
    return StageFit(result, estimate)


def pilot_estimate(result: StageResult, pert: NystromPass | None, coeffs_eps: torch.Tensor | None,
                   curve: SureCurve | None, ts: np.ndarray, fraction: float) -> PilotEstimate:
    """A first stage's output at the grid step nearest to ``fraction`` of its chosen step (0 for
    ``t = 0``, so that its Monte-Carlo divergence is known there), with the perturbed twin's
    output there (also when both share the filter, with noise input)."""
    t = 0 if result.t == 0 else int(ts[int(np.argmin(np.abs(np.log(ts) - np.log(fraction * result.t))))])
    z_eps = None
    if pert is not None:
        z_eps = pert.filter.output(coeffs_eps, t)
    div = None if curve is None else float(curve.divergence[np.searchsorted(ts, t)])
    return PilotEstimate(t, result.output(t), z_eps, div)

