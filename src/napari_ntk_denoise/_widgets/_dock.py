"""The docks' layout: controls in a scroll area with collapsible sections, above resizable plots.

Qt gives a dock at least the height its contents need; with every control and plot stacked the
three docks did not fit a screen.  Here the controls scroll, the advanced ones fold away, and a
splitter lets the user trade controls for plots.
"""

from __future__ import annotations

from collections.abc import Sequence

from magicgui.widgets import Container, Widget
from qtpy.QtCore import Qt
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
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(form)
    scroll.setMinimumHeight(FORM_MIN_HEIGHT)
    scroll.setMinimumWidth(form.minimumSizeHint().width())
    splitter = QSplitter(Qt.Orientation.Vertical)
    splitter.addWidget(scroll)
    for plot in plots:
        plot.setMinimumHeight(PLOT_MIN_HEIGHT)
        splitter.addWidget(plot)
    splitter.setChildrenCollapsible(False)
    splitter.setStretchFactor(0, 3)
    owner.layout().addWidget(splitter)
    return splitter
