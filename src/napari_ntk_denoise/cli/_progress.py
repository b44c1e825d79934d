"""Command-line progress bars (tqdm): redrawn in place on a terminal, and a line per 10 % (not
thousands of carriage returns) when the stream is a file or a CI log."""

from __future__ import annotations

import io
import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["ProgressBar"]


class ProgressBar:
    """One tqdm bar per label over a stream (standard error by default).

    Parameters
    ----------
    stream : text stream, optional
        Where the bar is drawn; standard error by default.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: tqdm | None = None
        self._decile = -1

    def update(self, label: str, done: int, total: int, extra: str = "") -> None:
        """Show ``done`` of ``total`` for ``label`` with optional trailing text.

        A new label or total starts a new bar; reaching ``total`` closes it.
        """
        bar = self._bar
        if bar is None or bar.desc != label or bar.total != total:
            self.close()
            # off a terminal tqdm draws into nothing and the lines below are written instead
            bar = self._bar = tqdm(total=total, desc=label, file=self.stream if self._tty else io.StringIO(),
                                   dynamic_ncols=self._tty, ncols=None if self._tty else 100)
        bar.set_postfix_str(extra, refresh=False)
        bar.update(done - bar.n)
        decile = int(10 * done / total) if total else 10
        if not self._tty and decile != self._decile:
            self._decile = decile
            self.stream.write(f"{bar}\n")
            self.stream.flush()
        if done >= total:
            self.close()

    def close(self) -> None:
        """End the current bar, if any (its last state stays on a terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar, self._decile = None, -1
