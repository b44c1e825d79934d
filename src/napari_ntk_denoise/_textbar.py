"""A text progress bar for the command line: redrawn in place on a terminal, and a line per 10 %
(not thousands of carriage returns) when standard error is a file or a CI log."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["TextBar"]


class TextBar:
    """Progress bar over a stream (standard error by default)."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last: tuple[str, int] | None = None

    def update(self, label: str, done: int, total: int, extra: str = "") -> None:
        """Show ``done`` of ``total`` for ``label`` with optional trailing text."""
        frac = done / total if total else 1.0
        filled = int(round(self.width * frac))
        line = f"{label:<32.32s} [{'#' * filled}{'.' * (self.width - filled)}] {100 * frac:5.1f}% {done}/{total} {extra}".rstrip()
        if self._tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        else:
            decile = int(10 * frac)
            if self._last == (label, decile):
                return
            self._last = (label, decile)
            self.stream.write(line + "\n")
        self.stream.flush()
