"""A small line plot drawn with ``QPainter``, for curves docked inside the plugin's widgets.

matplotlib is not a dependency of the plugin, and these plots need little: a few named curves,
optional logarithmic axes, tick labels, a legend and one vertical marker.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPalette, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["CurvePlot"]

#: Curve colours, legible on napari's dark and light themes.
COLOURS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176")
MARKER_COLOUR = "#ff5252"


def _nice_ticks(lo: float, hi: float, n: int = 4) -> np.ndarray:
    """Ticks at round values (1, 2 or 5 times a power of ten) inside ``[lo, hi]``."""
    span = hi - lo
    raw = span / max(n, 1)
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return np.arange(math.ceil(lo / step) * step, hi + 1e-9 * span, step)


def _format(v: float) -> str:
    """Compact tick label (``1e4`` rather than ``1e+04``)."""
    text = f"{v:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


class CurvePlot(QWidget):
    """Named curves ``y(x)`` with optional log axes and a vertical marker.

    Parameters
    ----------
    title : str
        Shown above the plot.
    xlabel, ylabel : str
        Axis labels.
    log_x, log_y : bool
        Logarithmic axes (non-positive values are then left out).
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    curves : dict of str to tuple of numpy.ndarray
        The plotted ``(x, y)`` of each curve, in insertion order (read by tests and screenshots).
    marker : float or None
        Abscissa of the vertical marker.
    marker_colour : str
        Colour of the marker and its label.
    """

    def __init__(
        self,
        title: str,
        xlabel: str = "",
        ylabel: str = "",
        *,
        log_x: bool = False,
        log_y: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.log_x, self.log_y = log_x, log_y
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.marker: float | None = None
        self.marker_label = ""
        self.marker_colour = MARKER_COLOUR
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        """A plot wide as a dock and a third as high."""
        return QSize(320, 180)

    def set_curve(self, name: str, x: np.ndarray, y: np.ndarray) -> None:
        """Add or replace the curve ``name``."""
        x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"curve {name!r}: x has {x.size} values but y has {y.size}")
        self.curves[name] = (x, y)
        self.update()

    def set_marker(self, x: float | None, label: str = "", colour: str | None = None) -> None:
        """Place (or with ``None`` remove) the vertical marker, in ``colour`` (the default red unless given)."""
        self.marker, self.marker_label, self.marker_colour = x, label, colour or MARKER_COLOUR
        self.update()

    def clear(self) -> None:
        """Remove every curve and the marker."""
        self.curves.clear()
        self.marker, self.marker_label, self.marker_colour = None, "", MARKER_COLOUR
        self.update()

    def _transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Axis coordinates (log10 on log axes); points that cannot be shown become NaN."""
        with np.errstate(divide="ignore", invalid="ignore"):
            tx = np.log10(np.where(x > 0, x, np.nan)) if self.log_x else x.copy()
            ty = np.log10(np.where(y > 0, y, np.nan)) if self.log_y else y.copy()
        bad = ~(np.isfinite(tx) & np.isfinite(ty))
        tx[bad] = np.nan
        ty[bad] = np.nan
        return tx, ty

    def _marker_position(self) -> float | None:
        """The marker in axis coordinates, or ``None`` when there is none to show."""
        if self.marker is None or not np.isfinite(self.marker) or (self.log_x and self.marker <= 0):
            return None
        return math.log10(self.marker) if self.log_x else float(self.marker)

    def _ticks(self, lo: float, hi: float, log: bool) -> tuple[np.ndarray, list[str]]:
        """Tick positions in axis coordinates and their labels."""
        if log and hi - lo >= 1.5:
            step = max(1, math.ceil((hi - lo) / 5))
            pos = np.arange(math.ceil(lo), math.floor(hi) + 1, step, dtype=float)
            return pos, [_format(10**p) for p in pos]
        if log:  # less than two decades: round values, placed on the log axis
            values = _nice_ticks(10**lo, 10**hi)
            values = values[values > 0]
            return np.log10(values), [_format(v) for v in values]
        pos = _nice_ticks(lo, hi)
        return pos, [_format(p) for p in pos]

    def shown_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Axis coordinates of the curves that have a point to draw (only these get a legend entry)."""
        data = {n: self._transform(x, y) for n, (x, y) in self.curves.items()}
        return {n: (tx, ty) for n, (tx, ty) in data.items() if np.isfinite(ty).any()}

    def paintEvent(self, event: object) -> None:  # noqa: N802 (Qt override)
        """Draw title, axes, curves, legend and marker."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        fm = painter.fontMetrics()
        top, height = fm.height() + 8, max(self.height() - 2.5 * fm.height() - 18, 10)
        painter.setPen(self._text_colour())
        painter.drawText(QRectF(0, 2, self.width(), fm.height() + 4), Qt.AlignmentFlag.AlignCenter, self.title)
        data, marker = self.shown_curves(), self._marker_position()
        if not data:
            painter.drawText(QRectF(0, top, self.width(), height), Qt.AlignmentFlag.AlignCenter, "no data yet")
        else:
            x_range, y_range = self._ranges(data, marker)
            x_ticks, y_ticks = self._ticks(*x_range, self.log_x), self._ticks(*y_range, self.log_y)
            left = fm.height() + 10 + max((fm.horizontalAdvance(t) for t in y_ticks[1]), default=0)
            axes = _Axes(QRectF(left, top, max(self.width() - left - 24, 10), height), x_range, y_range)
            self._draw_axes(painter, axes, x_ticks, y_ticks)
            painter.setClipRect(axes.box)
            self._draw_curves(painter, axes, data)
            if marker is not None:
                self._draw_marker(painter, axes, marker)
        painter.end()

    def _text_colour(self) -> QColor:
        """The theme's text colour."""
        return self.palette().color(QPalette.ColorRole.WindowText)

    @staticmethod
    def _ranges(
        data: dict[str, tuple[np.ndarray, np.ndarray]], marker: float | None
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """Axis ranges holding every point and the marker, the ordinate padded by 6 %."""
        xs = np.concatenate([tx for tx, _ in data.values()] + ([np.array([marker])] if marker is not None else []))
        ys = np.concatenate([ty for _, ty in data.values()])
        x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
        y0, y1 = float(np.nanmin(ys)), float(np.nanmax(ys))
        if x1 - x0 < 1e-12:
            x0, x1 = x0 - 0.5, x1 + 0.5
        pad = 0.06 * (y1 - y0) if y1 > y0 else 0.5
        return (x0, x1), (y0 - pad, y1 + pad)

    def _draw_axes(self, painter: QPainter, axes: _Axes, x_ticks: tuple, y_ticks: tuple) -> None:
        """Grid, tick labels, frame and axis labels."""
        text = self._text_colour()
        fm, box = painter.fontMetrics(), axes.box
        grid = QColor(text)
        grid.setAlpha(50)
        for pos, labels, horizontal in ((*x_ticks, False), (*y_ticks, True)):
            for p, label in zip(pos, labels):
                painter.setPen(QPen(grid, 1))
                if horizontal:
                    painter.drawLine(QPointF(box.left(), axes.py(p)), QPointF(box.right(), axes.py(p)))
                    painter.setPen(text)
                    r = QRectF(0, axes.py(p) - fm.height() / 2, box.left() - 4, fm.height())
                    painter.drawText(r, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
                else:
                    painter.drawLine(QPointF(axes.px(p), box.top()), QPointF(axes.px(p), box.bottom()))
                    painter.setPen(text)
                    r = QRectF(axes.px(p) - 40, box.bottom() + 2, 80, fm.height())
                    painter.drawText(r, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, label)
        painter.setPen(QPen(text, 1))
        painter.drawRect(box)
        painter.drawText(QRectF(box.left(), box.bottom() + fm.height() + 2, box.width(), fm.height() + 2),
                         Qt.AlignmentFlag.AlignCenter, self.xlabel)
        painter.save()
        painter.translate(fm.height() / 2 + 2, box.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-box.height() / 2, -fm.height() / 2, box.height(), fm.height()),
                         Qt.AlignmentFlag.AlignCenter, self.ylabel)
        painter.restore()

    def _draw_curves(self, painter: QPainter, axes: _Axes, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Each curve (broken at missing points, a dot when it has one point) and its legend entry."""
        fm, box = painter.fontMetrics(), axes.box
        legend = QColor(self.palette().color(QPalette.ColorRole.Window))
        legend.setAlpha(170)
        width = max(fm.horizontalAdvance(n) for n in data) + 30
        painter.fillRect(QRectF(box.left() + 2, box.top() + 2, width, len(data) * (fm.height() + 1) + 4), legend)
        for i, (name, (tx, ty)) in enumerate(data.items()):
            colour = QColor(COLOURS[list(self.curves).index(name) % len(COLOURS)])
            painter.setPen(QPen(colour, 1.6))
            path, pen_down = QPainterPath(), False
            for vx, vy in zip(tx, ty):
                if not np.isfinite(vx):
                    pen_down = False
                    continue
                point = QPointF(axes.px(vx), axes.py(vy))
                if pen_down:
                    path.lineTo(point)
                else:
                    path.moveTo(point)
                    pen_down = True
            painter.drawPath(path)
            if np.isfinite(tx).sum() == 1:
                painter.drawEllipse(QPointF(axes.px(np.nanmax(tx)), axes.py(np.nanmax(ty))), 2, 2)
            legend_y = box.top() + 4 + i * (fm.height() + 1)
            painter.drawLine(QPointF(box.left() + 6, legend_y + fm.height() / 2),
                             QPointF(box.left() + 20, legend_y + fm.height() / 2))
            painter.setPen(self._text_colour())
            painter.drawText(QPointF(box.left() + 24, legend_y + fm.ascent()), name)

    def _draw_marker(self, painter: QPainter, axes: _Axes, marker: float) -> None:
        """The dashed vertical marker and its label (left of it near the right edge)."""
        fm, box, mx = painter.fontMetrics(), axes.box, axes.px(marker)
        painter.setPen(QPen(QColor(self.marker_colour), 1.4, Qt.PenStyle.DashLine))
        painter.drawLine(QPointF(mx, box.top()), QPointF(mx, box.bottom()))
        if self.marker_label:
            right = mx + fm.horizontalAdvance(self.marker_label) + 6 < box.right()
            r = QRectF(mx + 3 if right else mx - 203, box.bottom() - fm.height() - 2, 200, fm.height())
            align = Qt.AlignmentFlag.AlignLeft if right else Qt.AlignmentFlag.AlignRight
            painter.setPen(QColor(self.marker_colour))
            painter.drawText(r, align | Qt.AlignmentFlag.AlignVCenter, self.marker_label)


class _Axes:
    """The plot box and the map from axis coordinates to pixels."""

    def __init__(self, box: QRectF, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.box, (self.x0, self.x1), (self.y0, self.y1) = box, x_range, y_range

    def px(self, vx: float) -> float:
        """Pixel column of abscissa ``vx``."""
        return self.box.left() + (vx - self.x0) / (self.x1 - self.x0) * self.box.width()

    def py(self, vy: float) -> float:
        """Pixel row of ordinate ``vy``."""
        return self.box.bottom() - (vy - self.y0) / (self.y1 - self.y0) * self.box.height()
