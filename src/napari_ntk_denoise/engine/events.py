"""Small typed events yielded by the engine's streaming generators."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = ["Progress", "TwicingStep", "drain", "forward_progress"]

_R = TypeVar("_R")


def drain(gen: Generator[Any, None, _R], on_event: Callable[[Any], None] | None = None) -> _R:
    """Run a streaming generator to its end and return its return value.

    Parameters
    ----------
    gen : generator
        One of the engine's ``iter_*`` generators.
    on_event : callable, optional
        Called with every yielded event (e.g. a progress bar).
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


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
    steps : tuple of int
        Twicing steps chosen by the unit just finished (a plane's tiles, for ``stage="planes"``).
    """

    stage: str
    done: int
    total: int
    message: str = ""
    steps: tuple[int, ...] = ()

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


def forward_progress(
    gen: Generator[Any, None, _R], prefix: str, part: tuple[int, int] | None = None
) -> Generator[Progress, None, _R]:
    """Re-yield the :class:`Progress` events of ``gen`` with ``prefix`` before their stage (other
    events are dropped); return ``gen``'s return value.  For ``yield from`` in nested pipelines.

    With ``part = (k, n)`` (``gen`` is the ``k``-th of ``n`` equal parts of a job, from 0) the
    events are rescaled so that their fraction is that of the whole job."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress):
            done, total = event.done, event.total
            if part is not None:
                done, total = part[0] * total + done, part[1] * total
            yield Progress(f"{prefix}{event.stage}", done, total, event.message)
