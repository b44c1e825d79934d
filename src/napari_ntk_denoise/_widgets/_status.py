"""The progress line inside each widget: a bar, the stage in words, elapsed and remaining time."""

from __future__ import annotations

import time

from magicgui.widgets import Container, Label, ProgressBar

__all__ = ["RunStatus", "format_seconds"]

#: Resolution of the progress bar.
STEPS = 1000

#: Fraction done and seconds elapsed before a remaining time is estimated (earlier ones are noise).
ETA_AFTER = (0.02, 2.0)


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class RunStatus(Container):
    """A progress bar and a line saying what the run does now, how long it took and has left.

    Parameters
    ----------
    idle : str
        Text shown before the first run.
    """

    def __init__(self, idle: str = "Ready: choose an image and press Run.") -> None:
        super().__init__(labels=False)
        self._bar = ProgressBar(min=0, max=STEPS, value=0, visible=False,
                                tooltip="Progress of the whole run (all planes and stages).")
        self._text = Label(value=idle, tooltip="What the run is doing, time elapsed and estimated time left.")
        self._text.native.setWordWrap(True)
        self.margins = (0, 0, 0, 0)
        self.extend([self._bar, self._text])
        self._started = time.perf_counter()
        self._bound = "about"

    @property
    def text(self) -> str:
        """The status line."""
        return str(self._text.value)

    @property
    def fraction(self) -> float:
        """Fraction of the run done, as the bar shows it."""
        return self._bar.value / STEPS

    def start(self, what: str, upper_bound: bool = False) -> None:
        """A run starts: bar at 0, clock started; ``upper_bound`` says the time left is at most that
        (a run that may stop early)."""
        self._started, self._bound = time.perf_counter(), "at most" if upper_bound else "about"
        self._bar.value, self._bar.visible = 0, True
        self._text.value = f"{what}: starting…"

    def update(self, fraction: float, message: str) -> None:
        """Show ``fraction`` (never moving back) and ``message`` with elapsed and remaining time."""
        fraction = min(max(fraction, 0.0), 1.0)
        self._bar.value = max(self._bar.value, int(round(fraction * STEPS)))
        elapsed = time.perf_counter() - self._started
        timing = f"{format_seconds(elapsed)} elapsed"
        done = self.fraction
        if done >= ETA_AFTER[0] and elapsed >= ETA_AFTER[1] and done < 1:
            timing += f", {self._bound} {format_seconds(elapsed * (1 - done) / done)} left"
        self._text.value = f"{message} · {timing}"

    def say(self, text: str) -> None:
        """Show ``text`` (e.g. why a run did not start), with no bar."""
        self._bar.visible = False
        self._text.value = text

    def finish(self, outcome: str) -> None:
        """The run ended: ``outcome`` (e.g. ``"Done"``, ``"Stopped"``) with the total time."""
        self._bar.visible = False
        self._text.value = f"{outcome} after {format_seconds(time.perf_counter() - self._started)}."
