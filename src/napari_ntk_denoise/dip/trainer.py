"""Deep-image-prior training, streamed: :func:`iter_dip` yields events, :func:`train_dip` drains it.

A network ``z(w)`` is fitted to one noisy image ``y`` by minimising ``1/2 ||z(w) - y||^2`` (paper
section 3.1) with Adam or plain gradient descent, from the noisy image itself or from noise (the
DIP of Ulyanov et al.; paper section 5.1).  In the NTK regime (wide network, gradient descent,
NTK parameterisation) image-input training is the twicing ``z^{t+1} = z^t + eta Theta (y - z^t)``
of the analytic filter (eq. 9); with Adam the filter adapts (eqs. 18-20).  The output kept is
chosen by a stopping rule (:data:`~napari_ntk_denoise.dip.stopping.CRITERION_RULES`).

The run is one loop: :func:`~napari_ntk_denoise.dip.run.prepare_run` builds its tensors from a
:class:`~napari_ntk_denoise.dip.config.DIPConfig`, each iteration is one
:meth:`~napari_ntk_denoise.dip.run.TrainingRun.advance`, and recorded iterations are scored by
the rule and checked for a stop (patience, time, collapse).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ..engine.events import drain
from ..engine.stopping import BestSoFar, sure_estimate
from .architectures import min_image_size
from .config import DIPConfig
from .device import resolve_device, retry_on_cpu
from .events import DIPProgress, DIPResult, DIPStep
from .run import TrainingRun, Units, prepare_run, start_optimizer
from .stopping import CRITERION_RULES, DIPCollapseWarning, collapse_reason

__all__ = ["iter_dip", "train_dip"]

#: the figures recorded at every recorded iteration, in the order of the result's curves
_CURVES = ("iteration", "loss", "psnr", "sure", "validation", "variance", "dw_l2", "dw_max")


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


def _check_data(image: np.ndarray, reference: np.ndarray | None, channel_axis: int | None, cfg: DIPConfig,
                sigma: float | None, data_range: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and reference as ``(C, H, W)`` copies, after every check of the data."""
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a non-negative finite number, got {sigma!r}")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    y = _as_chw(image, channel_axis, "image")
    h, w = y.shape[1:]
    smallest = min_image_size(cfg.arch, cfg.kernel_size)
    if min(h, w) < smallest:
        raise ValueError(
            f"image of {h} x {w} pixels is too small for arch {cfg.arch!r}: it needs at least "
            f"{smallest} pixels along each axis (the encoder-decoders downsample three times)"
        )
    ref = None
    if reference is not None:
        ref = _as_chw(reference, channel_axis, "reference")
        if ref.shape != y.shape:
            raise ValueError(f"reference shape {np.shape(reference)} differs from image shape {np.shape(image)}")
    return y, ref


def iter_dip(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    reference: np.ndarray | None = None,
    sigma: float | None = None,
    data_range: float | None = None,
    device: str | torch.device = "auto",
    **options: Any,
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
    reference : numpy.ndarray, optional
        Clean image (same shape as ``image``): enables PSNR and the oracle criterion.
    sigma : float, optional
        Noise standard deviation in data units, for MC-SURE; estimated with
        :func:`skimage.restoration.estimate_sigma` when omitted (``params["sigma_estimated"]``).
    data_range : float, optional
        Peak of the PSNR; default 1 if the reference lies in [0, 1], else its max minus min.
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``...; an
        out-of-memory error on an accelerator moves the run to the CPU with a ``RuntimeWarning``
        (the iteration that failed is repeated there).
    **options
        The fields of :class:`~napari_ntk_denoise.dip.config.DIPConfig` (``arch``, ``optimizer``,
        ``input``, ``width``, ``lr``, ``iterations``, ``every``, ``criterion``, ``patience``, ...).

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
        (:func:`~napari_ntk_denoise.dip.architectures.min_image_size`; nothing is padded), an
        option out of range, or a criterion the run cannot evaluate.
    TypeError
        A non-numeric image, or an unknown option.
    ImportError
        MC-SURE without ``sigma`` and without PyWavelets for :func:`skimage.restoration.estimate_sigma`.

    Notes
    -----
    The two network designs, their units and their learning rates are described in
    ``docs/dip.md``.  MC-SURE (Ramani, Blu & Unser, IEEE TIP 2008) evaluates the network at the
    current weights on ``y + eps b`` (``b ~ N(0, I)`` fixed for the run, ``eps = 0.01 sigma``),
    which leaves out how the weights depend on ``y``.  Outputs, losses, sigma, SURE and PSNR are
    reported in data units.
    """
    cfg = DIPConfig(**options)
    y, ref = _check_data(image, reference, channel_axis, cfg, sigma, data_range)
    cfg = cfg.resolve(ref is not None)
    dev = resolve_device(device)
    settings = cfg.settings()
    layout = (channel_axis, np.float64 if np.asarray(image).dtype == np.float64 else np.float32)
    t_start = time.perf_counter()
    run, units, sigma, data_range = prepare_run(y, ref, dev, cfg, settings, sigma=sigma, data_range=data_range)
    return _train(run, cfg, settings, units=units, sigma=sigma, data_range=data_range, layout=layout,
                  t_start=t_start)


def _figures(snap: dict, t: int, units: Units, sigma: float | None, data_range: float | None) -> dict:
    """Loss, PSNR, SURE, held-out residual and moving variance of a snapshot, in data units."""
    n, scale = snap["n"], units.scale
    psnr = sure = None
    if "error2" in snap:
        mse = snap["error2"] / n * scale**2
        psnr = 10 * math.log10(data_range**2 / mse) if mse > 0 else math.inf
    if "div" in snap:
        sure = sure_estimate(snap["residual2"], snap["div"], n, sigma / scale) * scale**2
    validation = snap["heldout2"] / snap["n_heldout"] * scale**2 if "heldout2" in snap else None
    dw_l2, dw_max = snap["dw"]
    return {"iteration": t, "loss": snap["residual2"] / n * scale**2, "psnr": psnr, "sure": sure,
            "validation": validation, "variance": snap["variance"] * scale**2, "dw_l2": dw_l2, "dw_max": dw_max}


def _step_event(snap: dict, fig: dict, best_iteration: int, units: Units, layout: tuple) -> DIPStep:
    eig = snap.get("eig")
    return DIPStep(
        iteration=fig["iteration"], image=units.to_image(snap["z"], layout),
        loss=fig["loss"], psnr=fig["psnr"], sure=fig["sure"], validation=fig["validation"], variance=fig["variance"],
        weight_change_l2=fig["dw_l2"], weight_change_max=fig["dw_max"], best_iteration=best_iteration,
        eigenvalues=None if eig is None else eig[0].cpu().numpy(),
        eigenimages=None if eig is None else eig[1].cpu().numpy(),
    )


def _train(
    run: TrainingRun, cfg: DIPConfig, settings: dict, *, units: Units, sigma: float | None,
    data_range: float | None, layout: tuple[int | None, type], t_start: float,
) -> Generator[DIPProgress | DIPStep, None, DIPResult]:
    """The training loop: step, record, score by the configuration's rule, stop when told to."""
    image_spread = float(run.y.double().std())
    snap: dict | None = None
    try:
        retry_on_cpu(run, run.place)
        settings["lr_default"] = cfg.lr is None
        settings["lr"] = float(start_optimizer(run, cfg, cfg.lr))
        t_train = time.perf_counter()
        curves: dict[str, list[float]] = {k: [] for k in _CURVES}
        best, stopped = BestSoFar(CRITERION_RULES[cfg.criterion]), None
        for t in range(cfg.iterations + 1):
            out_of_time = cfg.time_limit is not None and time.perf_counter() - t_train >= cfg.time_limit
            last = t == cfg.iterations or out_of_time
            record = last or t % cfg.every == 0 or (t < cfg.every and t & (t - 1) == 0)
            snap = retry_on_cpu(run, lambda: run.advance(update=not last, record=record, eigenimages=cfg.eigenimages))
            if not record:
                yield DIPProgress(t, cfg.iterations, time.perf_counter() - t_train, cfg.time_limit)
                continue
            fig = _figures(snap, t, units, sigma, data_range)
            if best.offer(t, fig):
                run.best = snap["z"].clone()
            for key in _CURVES:
                curves[key].append(math.nan if fig[key] is None else fig[key])
            yield _step_event(snap, fig, best.step, units, layout)
            stopped = _stop_reason(snap["spread"], image_spread, t, best.step, cfg)
            stopped = stopped or (("time", f"time limit of {cfg.time_limit:g} s reached") if out_of_time else None)
            if stopped:
                break
        return _result(run, settings, curves, best, t, stopped, units, layout, (t_start, t_train))
    finally:
        snap = None
        run.release()


def _result(run: TrainingRun, settings: dict, curves: dict, best: BestSoFar, t: int, stopped: tuple | None,
            units: Units, layout: tuple, starts: tuple[float, float]) -> DIPResult:
    """The run's result; warns when it collapsed."""
    t_end = time.perf_counter()
    t_start, t_train = starts
    settings.update(best_iteration=best.step, device=str(run.device), iterations_run=t,
                    stopped=stopped and stopped[1])
    if stopped and stopped[0] == "collapsed":
        settings["collapsed"] = stopped[1]
        warnings.warn(stopped[1], DIPCollapseWarning, stacklevel=3)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items()}
    return DIPResult(
        image=units.to_image(run.best, layout),
        best_iteration=best.step,
        criterion=best.rule.name,
        iterations=arrays["iteration"].astype(np.int64),
        loss=arrays["loss"],
        psnr=arrays["psnr"] if "data_range" in settings else None,
        sure=arrays["sure"] if run.probe is not None else None,
        validation=arrays["validation"] if run.holdout is not None else None,
        variance=arrays["variance"],
        weight_change_l2=arrays["dw_l2"],
        weight_change_max=arrays["dw_max"],
        timings={"setup_s": t_train - t_start, "train_s": t_end - t_train,
                 "iterations_per_s": max(t, 1) / (t_end - t_train)},
        params=settings,
    )


def _stop_reason(spread: float, image_spread: float, t: int, best_iteration: int,
                 cfg: DIPConfig) -> tuple[str, str] | None:
    """``(kind, reason)`` to stop training at recorded iteration ``t``, or None to go on."""
    reason = collapse_reason(spread, image_spread, t)
    if reason:
        return "collapsed", reason
    if cfg.patience is not None and t - best_iteration >= cfg.patience:
        return "patience", f"no improvement for {t - best_iteration} iterations"
    return None


def train_dip(image: np.ndarray, **kwargs: Any) -> DIPResult:
    """Run :func:`iter_dip` (same arguments) to the end and return its :class:`DIPResult`."""
    return drain(iter_dip(image, **kwargs))
