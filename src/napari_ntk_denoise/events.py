"""Small typed events yielded by the engine's streaming generators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Progress", "TwicingStep"]


@dataclass(frozen=True)
class Progress:
    """Progress of a long stage.

    Attributes
    ----------
    stage : str
        Short name of the stage (e.g. ``"kernel"``, ``"kernel (perturbed)"``).
    done, total : int
        Units of work finished and in all.
    message : str
        Human-readable description.
    """

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        """Finished fraction in ``[0, 1]``."""
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class TwicingStep:
    """An intermediate twicing output ``z(t)``.

    Attributes
    ----------
    stage : int
        1 for the first filter, 2 for the guided filter.
    t : int
        Twicing step.
    image : numpy.ndarray
        ``z(t)`` in the layout of the input image.
    """

    stage: int
    t: int
    image: np.ndarray
