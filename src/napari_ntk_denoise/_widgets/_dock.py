"""The docks' layout: controls in a scroll area with collapsible sections, above resizable plots.

Qt gives a dock at least the height its contents need; with every control and plot stacked the
three docks did not fit a screen.  Here the controls scroll, the advanced ones fold away, and a
splitter lets the user trade controls for plots.
"""

from __future__ import annotations

from collections.abc import Sequence

from magicgui.widgets import Container, Widget
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QSplitter, QVBoxLayout, QWidget
from superqt import QCollapsible

__all__ = ["FORM_MIN_HEIGHT", "PLOT_MIN_HEIGHT", "Section", "lay_out"]

#: Smallest heights of the scrolled controls and of each plot: three docks then fit 1080 pixels.
FORM_MIN_HEIGHT = 140
PLOT_MIN_HEIGHT = 90


class Section(Container):
    """Controls under a title that folds them away (collapsed at first).

    Parameters
    ----------
    title : str
        Title of the section.
    widgets : sequence of magicgui widgets
        Its controls.
    tooltip : str
        What the section holds, shown on its title.
    expanded : bool
        Open at first.
    """

    def __init__(self, title: str, widgets: Sequence[Widget], tooltip: str, expanded: bool = False) -> None:
        super().__init__(widgets=widgets)
        self.collapsible = QCollapsible(title)
        self.collapsible.setToolTip(tooltip)
        self.collapsible.addWidget(self.native)
        self.collapsible.setDuration(0)
        if expanded:
            self.collapsible.expand(animate=False)

    @property
    def expanded(self) -> bool:
        """Whether the section is open."""
        return bool(self.collapsible.isExpanded())


class _FormScroll(QScrollArea):
    """A vertical scroll area as wide as its form and at least :data:`FORM_MIN_HEIGHT` high."""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        """The form's smallest width and the scroll bar's, by the smallest height."""
        form = self.widget()
        width = form.minimumSizeHint().width() if form is not None else 0
        return QSize(width + self.verticalScrollBar().sizeHint().width(), FORM_MIN_HEIGHT)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        """The whole form at the width it has (wrapped labels included), so that a dock with room
        shows every control without scrolling."""
        form = self.widget()
        if form is None:
            return QSize(self.minimumSizeHint().width(), FORM_MIN_HEIGHT)
        wrapped = form.heightForWidth(self.viewport().width())
        height = max(form.sizeHint().height(), form.minimumSizeHint().height(), wrapped)
        return QSize(self.minimumSizeHint().width(), max(height + self.height() - self.viewport().height(),
                                                         FORM_MIN_HEIGHT))


class _Splitter(QSplitter):
    """A vertical splitter that lets the controls (first pane) grow when their content does, e.g. a
    result label gaining lines, as far as the plots' smallest heights allow."""

    def __init__(self) -> None:
        super().__init__(Qt.Orientation.Vertical)
        self._wanted = 0

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        """Refit once the form has laid itself out again."""
        if event.type() == QEvent.Type.LayoutRequest:
            QTimer.singleShot(0, self.fit_form)
        return False

    def showEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt override)
        """Fit the controls once their real width (and so their wrapped height) is known."""
        super().showEvent(event)
        QTimer.singleShot(0, self.fit_form)

    def fit_form(self) -> None:
        """Give the controls the height they want if it grew and the plots can spare it."""
        wanted, sizes = self.widget(0).sizeHint().height(), self.sizes()
        grew, self._wanted = wanted > self._wanted, wanted
        total, n_plots = sum(sizes), len(sizes) - 1
        form = min(wanted, total - n_plots * PLOT_MIN_HEIGHT)
        if grew and n_plots and form > sizes[0]:
            self.setSizes([form] + [(total - form) // n_plots] * n_plots)


def lay_out(owner: QWidget, parts: Sequence[Container], plots: Sequence[QWidget]) -> QSplitter:
    """Put ``parts`` (top to bottom, in a scroll area) above ``plots`` in a splitter inside ``owner``.

    Parameters
    ----------
    owner : QWidget
        The dock's widget (with a layout).
    parts : sequence of Container
        Containers of controls; a :class:`Section` shows as its collapsible.
    plots : sequence of QWidget
        Plots, each in its own resizable pane.

    Returns
    -------
    QSplitter
        The splitter (controls first).
    """
    form = QWidget()
    layout = QVBoxLayout(form)
    layout.setContentsMargins(0, 0, 0, 0)
    for part in parts:
        layout.addWidget(part.collapsible if isinstance(part, Section) else part.native)
    layout.addStretch(1)
    scroll = _FormScroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(form)
    splitter = _Splitter()
    splitter.addWidget(scroll)
    form.installEventFilter(splitter)
    for plot in plots:
        plot.setMinimumHeight(PLOT_MIN_HEIGHT)
        splitter.addWidget(plot)
    splitter.setChildrenCollapsible(False)
    for i in range(1, splitter.count()):  # the controls keep their natural height, the plots take the rest
        splitter.setStretchFactor(i, 1)
    owner.layout().addWidget(splitter)
    return splitter
