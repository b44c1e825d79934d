"""Choosing the output of a DIP run without a clean image, and telling a dead run.

* :class:`OutputAverage`: exponential moving average of the outputs (the reference DIP's output
  smoothing) and the exponential moving variance of the outputs about it, the early-stopping
  signal of ES-EMV (Wang et al., "Early stopping for deep image prior", TMLR 2023): the variance
  falls while the network fits the image and rises again once it starts fitting the noise, so
  its minimum marks the stop; it needs neither the noise level nor an input path, and so serves
  noise input, which MC-SURE cannot.
* :data:`CRITERION_RULES`: each criterion of the trainer as a
  :class:`~napari_ntk_denoise.engine.stopping.StoppingRule` on the figures of a recorded iteration, the
  rules the NTK filter applies to its step grid.
* :func:`collapse_reason`: a run whose output has become constant (every ReLU of a layer off,
  or a saturated sigmoid) cannot recover; it is reported rather than trained on.
"""

from __future__ import annotations

import math

import torch

from ..engine.stopping import SURE, StoppingRule

__all__ = ["AVERAGE_DECAY", "CRITERION_RULES", "DIPCollapseWarning", "OutputAverage", "collapse_reason"]

#: decay of the output average and of the moving variance (the DIP's 0.99: a window of ~100 steps)
AVERAGE_DECAY = 0.99
#: an output whose standard deviation over pixels is below this fraction of the image's is constant
CONSTANT_SPREAD = 1e-4


#: the trainer's criteria: the best PSNR (oracle), the least MC-SURE, held-out residual or moving
#: variance, or the last iteration
CRITERION_RULES: dict[str, StoppingRule] = {
    "psnr": StoppingRule("psnr", "psnr", -1.0),
    "sure": SURE,
    "holdout": StoppingRule("holdout", "validation"),
    "variance": StoppingRule("variance", "variance"),
    "last": StoppingRule("last", "iteration", -1.0),
}


class DIPCollapseWarning(RuntimeWarning):
    """A DIP run collapsed to a constant output and was stopped."""


class OutputAverage:
    """Moving average ``m`` of the outputs and moving variance ``v`` of the outputs about it.

    ``m_t = b m_{t-1} + (1 - b) z_t`` with ``m_0 = z_0``, and
    ``v_t = b v_{t-1} + (1 - b) mean((z_t - m_{t-1})^2)``, reported bias-corrected as
    ``v_t / (1 - b^t)``; ``b`` is :data:`AVERAGE_DECAY`.
    """

    def __init__(self, decay: float = AVERAGE_DECAY) -> None:
        self.decay = decay
        self.mean: torch.Tensor | None = None
        self._variance: torch.Tensor | float = 0.0
        self.count = 0  # outputs added after the first

    def add(self, z: torch.Tensor) -> None:
        """Take in the output ``z`` of the current iteration."""
        if self.mean is None:
            self.mean = z.clone()
            return
        b = self.decay
        # a tensor, so that an accelerator is not synchronised at every step
        self._variance = b * self._variance + (1 - b) * (z - self.mean).square().mean()
        self.mean.mul_(b).add_(z, alpha=1 - b)
        self.count += 1

    @property
    def variance(self) -> float:
        """Bias-corrected moving variance; infinite before a second output has been added."""
        return float(self._variance) / (1 - self.decay**self.count) if self.count else math.inf

    def to(self, device: torch.device) -> None:
        """Move the average and the variance to ``device``."""
        if self.mean is not None:
            self.mean = self.mean.to(device)
        if isinstance(self._variance, torch.Tensor):
            self._variance = self._variance.to(device)


def collapse_reason(spread: float, image_spread: float, iteration: int) -> str | None:
    """Why a run's output counts as collapsed at ``iteration`` (None while it does not).

    Parameters
    ----------
    spread : float
        Standard deviation of the current output over its pixels and channels.
    image_spread : float
        Standard deviation of the noisy image, in the same units.
    iteration : int
        Optimiser steps taken; the output at initialisation (0) is never judged.

    Returns
    -------
    str or None
        A one-line reason, or None.
    """
    if iteration > 0 and spread <= CONSTANT_SPREAD * image_spread:
        return (f"the output became constant at iteration {iteration} (spread {spread:.3g}, image "
                f"{image_spread:.3g}): the network died; lower the learning rate or change the seed")
    return None

