"""Closed-form NTK denoising: the public, streaming pipeline (paper sections 3-4, docs/method.md).

``iter_denoise_ntk`` is a generator that yields :class:`~napari_ntk_denoise.engine.events.Progress` and
:class:`~napari_ntk_denoise.engine.events.TwicingStep` events and returns an :class:`NTKResult`; the
widget, the CLI and the tests all drive it; :func:`denoise_ntk` simply drains it.  A run is
``setup -> problem -> stage 1 [-> pilot -> guided stage] -> result``
(:mod:`~napari_ntk_denoise.engine.problem`, :mod:`~napari_ntk_denoise.engine.pipeline`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np

from ._heap import keeps_freed_memory
from ._input import prepare_image
from .config import FilterConfig
from .events import Progress, TwicingStep, drain
from .nystrom import LowRankFilter, iter_nystrom, sample_anchors
from .pipeline import Guide, PilotEstimate, iter_stage
from .problem import Problem, Setup, prepare_problem, setup
from .results import NTKResult, PilotBlend, StageResult
from .stopping import DoubtfulStopWarning, psnr, stop_doubts, t_grid
from .twicing import twicing_schedule

__all__ = ["NTKResult", "StageResult", "PilotBlend", "iter_denoise_ntk", "denoise_ntk", "iter_filter",
           "low_rank_filter"]


def iter_filter(
    image: np.ndarray, *, channel_axis: int | None = None, device: str | None = None, **options: Any
) -> Generator[Progress, None, LowRankFilter]:
    """Compute the low-rank NTK filter of an image, streaming progress.

    Parameters are those of :func:`iter_denoise_ntk` (the stopping and guided options are
    ignored): the filter of the one-stage denoiser, on the adaptive set where it applies.

    Yields
    ------
    Progress

    Returns
    -------
    LowRankFilter
    """
    cfg = FilterConfig.from_options(**options)
    st = setup(image, channel_axis, cfg, device, passes=1)
    result, _ = yield from iter_nystrom(st.kernel, st.kernel_input(), st.anchors, st.rank, seed=cfg.seed,
                                        light=cfg.light_first_stage)
    return result.filter


def low_rank_filter(image: np.ndarray, **kwargs: Any) -> LowRankFilter:
    """Non-streaming :func:`iter_filter`."""
    return drain(iter_filter(image, **kwargs))


@keeps_freed_memory
def iter_denoise_ntk(
    image: np.ndarray,
    sigma: float | None = None,
    *,
    channel_axis: int | None = None,
    reference: np.ndarray | None = None,
    device: str | None = None,
    stream_steps: int = 12,
    **options: Any,
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
    reference : numpy.ndarray, optional
        Clean image in the same layout: PSNR curves, and required by ``stop="oracle"``.
    device : str, optional
        ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when available.
    stream_steps : int
        Number of intermediate twicing outputs yielded per stage (0: none).
    **options
        The filter's options (:class:`~napari_ntk_denoise.engine.config.FilterConfig`, defaults in
        :data:`~napari_ntk_denoise.engine.config.DEFAULT_OPTIONS`):

        * ``depth``, ``kernel_size``, ``kernel`` (``"ntk"`` or ``"nngp"``): the vanilla CNN whose
          kernel is the filter (:class:`~napari_ntk_denoise.engine.kernels.CNNKernel`); ``volume`` and
          ``kernel_size_z``: 3-D patches ``r_z x r x r`` over a Z stack, one filter for the volume.
        * ``fraction`` of the pixels as Nyström anchors (``n_anchors`` overrides it); ``rank``:
          the most eigenimages kept.
        * ``stop``: ``"sure"`` (Monte-Carlo SURE: one more pipeline run on ``y + eps b``, with the
          noise's smaller spread near clipping bounds, ``params["clip_bounds"]``), ``"oracle"``
          (the PSNR-optimal step given a ``reference``, the paper's protocol) or a fixed step.
        * ``guided``: two stages, the kernel of the second computed from a pilot (the first
          stage's estimate at a fraction of its step,
          :data:`~napari_ntk_denoise.engine.config.PILOT_STEP`, averaged with a second anchor
          draw's with ``guided_pilot_draws=2``); the output is ``a p + (1 - a) z(t)``, the pilot
          weight ``a`` chosen for every ``t`` by the same stopping rule (``a = 0`` with a fixed
          step).  ``guided_kernel``: the kernel type of both guided stages.
        * ``input``: kernel from the noisy ``"image"`` or from i.i.d. ``"noise"`` (the deep image
          prior's input) with ``noise_channels``.
        * ``noise_blur``: spatially correlated noise, white noise blurred by a Gaussian of this
          standard deviation (pixels); SURE's probe is coloured alike.
        * ``seed``: the anchors, the SURE probe and the noise input.

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
    runs, ``guided=True`` doubles them again (the guided stage; a second pilot draw triples them).

    References
    ----------
    J. Tachella, J. Tang, M. Davies, "The Neural Tangent Link Between CNN Denoisers and Non-Local
    Filters", CVPR 2021.  S. Ramani, T. Blu, M. Unser, "Monte-Carlo SURE", IEEE TIP 17(9), 2008.
    """
    t0 = time.perf_counter()
    cfg = FilterConfig.from_options(**options)
    if cfg.stop == "oracle" and reference is None:
        raise ValueError("stop='oracle' needs a reference image")
    st = setup(image, channel_axis, cfg, device, passes=cfg.memory_passes)
    ref = _reference(reference, channel_axis, st)
    if sigma is not None and not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
    if np.ptp(st.y) == 0:  # a constant image is its own denoised result: no filter, no step
        return NTKResult(image=st.layout.restore(st.y.copy()), t=0, sigma=float(sigma or 0.0), sigma_estimated=False,
                         t_grid=t_grid(), stages=[], layout=st.layout, data_range=0.0,
                         params=dict(stop=cfg.stop, constant=True, stop_warnings=[]))
    prob = prepare_problem(st, sigma, ref)
    run = _Run(prob, {"setup": time.perf_counter() - t0}, stream_steps)
    guide = yield from run.first_stage()
    if guide is not None:
        yield from run.guided_stage(guide)
    res = run.result(channel_axis, t0)
    for doubt in res.params["stop_warnings"]:  # attributed to the caller of next(), past the decorator
        warnings.warn(f"doubtful stop at t = {res.t}: {doubt}", DoubtfulStopWarning, stacklevel=3)
    return res


def _reference(reference: np.ndarray | None, channel_axis: int | None, st: Setup) -> np.ndarray | None:
    if reference is None:
        return None
    ref, _ = prepare_image(reference, channel_axis, name="reference", spatial=st.kernel.ndim)
    if ref.shape != st.y.shape:
        raise ValueError(f"reference shape {ref.shape} differs from the image's {st.y.shape}")
    return ref


class _Run:
    """The stages of one run, the steps they stream, their stopping doubts and timings."""

    def __init__(self, prob: Problem, timings: dict[str, float], stream_steps: int) -> None:
        self.prob, self.timings, self.stream_steps = prob, timings, stream_steps
        self.cfg, self.kern = prob.setup.config, prob.setup.config.stage_kernel
        self.stages: list[StageResult] = []
        self.doubts: list[str] = []
        self.t_pilot: list[int] = []

    def stage(
        self, *, anchors: np.ndarray | None = None, guide: Guide | None = None, stage: str, part: tuple[int, int],
        label: str, phase: str, pilot: bool = False,
    ) -> Generator[Progress | TwicingStep, None, PilotEstimate | None]:
        """Fit a stage; keep, stream and check it unless it is only the pilot's second draw."""
        tk = time.perf_counter()
        anchors = self.prob.setup.anchors if anchors is None else anchors
        fit = yield from iter_stage(self.prob, self.kern, anchors, guide=guide, stage=stage, part=part, pilot=pilot)
        self.timings[f"{phase}_kernel"] = time.perf_counter() - tk
        if phase != "pilot":
            self._keep(fit.result, label)
            yield from self._stream(fit.result, stage=1 + (guide is not None))
        return fit.pilot

    def first_stage(self) -> Generator[Progress | TwicingStep, None, Guide | None]:
        """Stage 1, and with the guided filter the pilot of the guided stage (with a second draw)."""
        n = self.cfg.runs
        first = yield from self.stage(stage=f"kernel (1/{n})", part=(0, n), label="", phase="stage1",
                                      pilot=self.cfg.guided.enabled)
        if first is None:
            return None
        draws = [first]
        if self.cfg.guided.pilot_draws == 2:
            other = self._share_of_anchors(self.cfg.guided.pilot_share, self.cfg.seed + 1)
            draws.append((yield from self.stage(anchors=other, stage=f"pilot kernel (2/{n})", part=(1, n),
                                                label="pilot ", phase="pilot", pilot=True)))
        self.t_pilot = [d.t for d in draws]
        return PilotEstimate.mean(*draws)

    def guided_stage(self, guide: Guide) -> Generator[Progress | TwicingStep, None, None]:
        """The guided stage, on its share of the first stage's anchors."""
        anchors = self._share_of_anchors(self.cfg.guided.stage_share, self.cfg.seed)
        n = self.cfg.runs
        yield from self.stage(anchors=anchors, guide=guide, stage=f"guided kernel ({n}/{n})", part=(n - 1, n),
                              label="guided ", phase="stage2")

    def _share_of_anchors(self, share: float, seed: int) -> np.ndarray:
        """A draw of ``share`` of the first stage's anchors
        (:meth:`~napari_ntk_denoise.engine.config.GuidedConfig.anchors`)."""
        st = self.prob.setup
        return sample_anchors(st.y.shape[:-1], self.cfg.guided.anchors(len(st.anchors), share, st.rank), seed)

    def _keep(self, result: StageResult, label: str) -> None:
        self.stages.append(result)
        if result.sure is not None:
            noise_var = self.prob.sigma**2 if self.prob.noise_var is None else self.prob.noise_var
            self.doubts += [f"{label}{d}" for d in stop_doubts(result.sure, noise_var)]

    def _stream(self, result: StageResult, stage: int) -> Generator[TwicingStep, None, None]:
        for t in twicing_schedule(result.t, self.stream_steps):
            yield TwicingStep(stage=stage, t=t, image=self.prob.restore(result.output(t)))

    def result(self, channel_axis: int | None, t0: float) -> NTKResult:
        """The run's result: the last stage's output at its step, with the parameters and timings."""
        prob, cfg, final = self.prob, self.cfg, self.stages[-1]
        image_out = prob.restore(final.output(final.t))
        self.timings["total"] = time.perf_counter() - t0
        a = cfg.architecture
        first = self.stages[0].filter
        params = dict(sigma=prob.sigma, channel_axis=channel_axis, depth=a.depth, kernel_size=a.kernel_size,
                      kernel=a.kind, input=cfg.input, fraction=cfg.nystrom.fraction, n_anchors=len(prob.setup.anchors),
                      rank=prob.setup.rank, adaptive=cfg.nystrom.adaptive, stage1_anchors=len(first.anchors),
                      stage1_rank=first.rank, stop=cfg.stop, guided=cfg.guided.enabled, device=str(prob.setup.device),
                      seed=cfg.seed, clip_bounds=list(prob.bounds), stop_warnings=self.doubts)
        if cfg.guided.enabled:
            params.update(guided_kernel=self.kern.kind, t_pilot=self.t_pilot, guided_pilot_draws=cfg.guided.pilot_draws)
        if a.ndim == 3:
            params.update(volume=True, kernel_size_z=a.sizes[0])
        if cfg.noise_blur > 0:
            params.update(noise_blur=cfg.noise_blur)
        res = NTKResult(image=image_out, t=final.t, sigma=prob.sigma, sigma_estimated=prob.sigma_estimated,
                        t_grid=prob.ts, stages=self.stages, layout=prob.setup.layout, data_range=prob.data_range,
                        timings=self.timings, params=params)
        if prob.reference is not None:
            clipped = np.clip(image_out, 0, 1) if prob.data_range == 1.0 else image_out
            res.params["psnr"] = psnr(clipped, prob.setup.layout.restore(prob.reference_image), prob.data_range)
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
