"""Events of :func:`~napari_ntk_denoise.dip.trainer.iter_dip` and its result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DIPProgress", "DIPResult", "DIPStep"]


@dataclass(frozen=True)
class DIPProgress:
    """Iteration ``iteration`` of ``iterations`` is done (yielded when no :class:`DIPStep` is).

    Attributes
    ----------
    iteration, iterations : int
        Iterations done, and at most.
    seconds : float
        Training time so far.
    time_limit : float or None
        The run's time limit in seconds, if any.
    """

    iteration: int
    iterations: int
    seconds: float = 0.0
    time_limit: float | None = None

    @property
    def fraction(self) -> float:
        """Fraction of the run done: of its iterations, or of its time limit when that comes first."""
        by_time = 0.0 if self.time_limit is None else self.seconds / self.time_limit
        return min(1.0, max(self.iteration / self.iterations, by_time))


@dataclass(frozen=True)
class DIPStep:
    """State of training at iteration ``iteration`` (every ``every`` iterations, first and last).

    Attributes
    ----------
    iteration : int
        Optimiser steps taken; the output is ``z(w^iteration)``.
    image : numpy.ndarray
        Current output, in the input's layout and float dtype, data units.
    loss : float
        Mean squared residual ``||y - z||^2 / n`` (data units); training minimises ``n/2`` times it.
    psnr : float or None
        PSNR [dB] against the reference, when one was given.
    sure : float or None
        MC-SURE estimate of the mean squared error ``||x - z||^2 / n``, for image input.
    validation : float or None
        Mean squared residual on the pixels held out of the loss (``criterion="holdout"``): the
        mean squared error there plus the noise variance, as their noise was never fitted.
    variance : float
        Moving variance of the outputs (:class:`~napari_ntk_denoise.dip.stopping.OutputAverage`),
        data units squared; infinite at iteration 0.
    weight_change_l2, weight_change_max : float
        ``||w^t - w^0||_2`` and the mean over intermediate layers of ``max |w^t - w^0|``
        (see :func:`~napari_ntk_denoise.dip.diagnostics.weight_change`).
    best_iteration : int
        Iteration of the best output so far by the run's criterion.
    eigenvalues, eigenimages : numpy.ndarray or None
        Leading eigenpairs ``(k,)`` and ``(k, H, W)`` of the covariance of the last hidden
        pre-activations (paper Fig. 5), when ``eigenimages=k > 0`` was asked for; eigenvalues
        in the network's units (the trainer works on ``y / max|y|``).
    """

    iteration: int
    image: np.ndarray
    loss: float
    psnr: float | None
    sure: float | None
    validation: float | None
    variance: float
    weight_change_l2: float
    weight_change_max: float
    best_iteration: int
    eigenvalues: np.ndarray | None = None
    eigenimages: np.ndarray | None = None


@dataclass(frozen=True)
class DIPResult:
    """Outcome of a finished run.

    Attributes
    ----------
    image : numpy.ndarray
        Best output (input layout and float dtype).
    best_iteration : int
        Its iteration.
    criterion : str
        How it was chosen: ``"psnr"`` (oracle), ``"sure"``, ``"holdout"``, ``"variance"`` or ``"last"``.
    iterations, loss, variance, weight_change_l2, weight_change_max : numpy.ndarray
        Curves at the recorded iterations (those of the :class:`DIPStep` events).
    psnr, sure, validation : numpy.ndarray or None
        Curves of PSNR, MC-SURE and the held-out residual, where available.
    timings : dict
        ``setup_s`` (validation, network, default step), ``train_s`` and ``iterations_per_s``.
    params : dict
        Settings and outcome as plain Python values, for ``layer.metadata``.
    """

    image: np.ndarray
    best_iteration: int
    criterion: str
    iterations: np.ndarray
    loss: np.ndarray
    psnr: np.ndarray | None
    sure: np.ndarray | None
    validation: np.ndarray | None
    variance: np.ndarray
    weight_change_l2: np.ndarray
    weight_change_max: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)
