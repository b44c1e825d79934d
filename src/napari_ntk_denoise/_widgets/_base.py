"""What the widgets share: an image picker that follows the selection, Run/Stop, a progress line,
the dock's layout; and, for the NTK Filter and DIP Training widgets, a reference picker and one
streamed output layer per run."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, PushButton, Widget, create_widget
from napari.layers import Image
from napari.utils.notifications import show_error

from ._dock import Section, lay_out
from ._layers import ImageSource, InputError, PlaneEvent, put_layer, reference_from_layer, source_from_layer
from ._picker import SelectionFollower
from ._runner import StreamRunner
from ._status import RunStatus

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker
    from qtpy.QtWidgets import QWidget

__all__ = ["DockWidget", "ImageRunWidget"]

IMAGE_TIP = ("The image layer to process. It follows the layer selected in the layer list until you pick "
             "one here. It is never changed: results go to a new layer.")
STOP_TIP = "Stop the run at its next step; the output keeps what was computed so far."


class DockWidget(Container):
    """An image picker following the selection, Run and Stop buttons, a progress line, one run at a time.

    Subclasses build their controls, then call :meth:`_lay_out`.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from.
    run_text, run_tip : str
        Text and tooltip of the Run button.
    """

    def __init__(self, viewer: napari.viewer.Viewer, run_text: str, run_tip: str) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._image = create_widget(annotation=Image, label="image", options={"tooltip": IMAGE_TIP})
        self._run = PushButton(text=run_text, tooltip=run_tip)
        self._stop = PushButton(text="Stop", tooltip=STOP_TIP)
        self._buttons = Container(widgets=[self._run, self._stop], layout="horizontal", labels=False)
        self._buttons.margins = (0, 0, 0, 0)
        self._progress = RunStatus()
        self._runner = StreamRunner(viewer, self.native, self._run, self._stop, self._progress)
        self._follower = SelectionFollower(self._image, viewer)
        self._parts: list[Container] = []
        self._run.changed.connect(self.run)

    @property
    def worker(self) -> GeneratorWorker | None:
        """The running worker, if any."""
        return self._runner.worker

    def run(self) -> GeneratorWorker | None:
        """Start a run on the chosen layer (subclasses); refused while a run is going."""
        raise NotImplementedError

    def _refuse(self, message: str) -> None:
        """Tell the user why the run cannot start, in a notification and in the progress line."""
        show_error(message)
        self._progress.say(f"Not started. {message}")

    def _lay_out(self, parts: Sequence[Container], plots: Sequence[QWidget]) -> None:
        """Stack ``parts`` (containers and sections) in a scroll area above resizable ``plots``."""
        self._parts = list(parts)
        lay_out(self.native, self._parts, plots)

    def reset_choices(self, *args: Any) -> None:
        """Refresh the layer lists (napari calls this), then show the selected image layer."""
        for part in self._parts:
            part.reset_choices(*args)
        self._follower.follow()

    def controls(self) -> Iterator[Widget]:
        """Every magicgui widget of the dock (sections included), top to bottom."""
        def walk(container: Container) -> Iterator[Widget]:
            for widget in container:
                yield widget
                if isinstance(widget, Container):
                    yield from walk(widget)
        for part in self._parts:
            yield from walk(part)

    def sections(self) -> list[Section]:
        """The dock's collapsible sections."""
        return [part for part in self._parts if isinstance(part, Section)]

class ImageRunWidget(DockWidget):
    """An image and an optional reference layer in, one result layer per run out, streamed in place.

    Subclasses add their controls, call :meth:`_start` from ``run`` and :meth:`_show` as results
    arrive.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to read layers from and add the output to.
    tag : str
        Tag of the output layer's name, e.g. ``"NTK"`` for ``"camera [NTK]"``.
    reference_tip : str
        Tooltip of the reference picker.
    run_tip : str
        Tooltip of the Run button.
    """

    def __init__(self, viewer: napari.viewer.Viewer, tag: str, reference_tip: str, run_tip: str) -> None:
        super().__init__(viewer, "Run", run_tip)
        self._tag = tag
        self._reference = create_widget(annotation=Image | None, label="clean reference",
                                        options={"tooltip": reference_tip})
        self._source: ImageSource | None = None
        self._out: np.ndarray | None = None
        self._output: Image | None = None


    def _start(
        self,
        func: Callable[[ImageSource, ImageSource | None], Generator[PlaneEvent, None, Any]],
        what: str,
        check: Callable[[ImageSource], None] | None = None,
        volume: bool = False,
        **runner_kwargs: Any,
    ) -> GeneratorWorker | None:
        """Check the chosen layers, reset the output, and run ``func(source, reference)``.

        Parameters
        ----------
        func : callable
            Plane-event generator function of the source and the reference (or ``None``).
        what : str
            Name of the computation, for the progress bar.
        check : callable, optional
            Further check of the source, raising :class:`InputError` with a message.
        volume : bool
            Process Z-Y-X volumes (the axis before Y is Z) instead of Y-X planes.
        **runner_kwargs
            ``on_event``, ``on_return``, ... of :meth:`StreamRunner.start`.

        Returns
        -------
        GeneratorWorker or None
            The worker, or ``None`` when refused or when the input is unusable (the user is told).
        """
        if self._runner.refuse_if_running():
            return None
        try:
            source = source_from_layer(self._image.value, self._viewer, volume)
            reference = reference_from_layer(self._reference.value, source, self._viewer)
            if check is not None:
                check(source)
        except InputError as exc:
            self._refuse(str(exc))
            return None
        self._source, self._out, self._output = source, source.empty_output(), None
        watch = [source.layer] + ([] if reference is None else [reference.layer])
        return self._runner.start(
            func, source, reference, description=f"{what} of '{source.name}'", n_planes=len(source.indices),
            watch=watch, **runner_kwargs,
        )

    def _show(self, metadata: dict[str, Any]) -> None:
        """Add the output layer once, then update its data and metadata in place."""
        assert self._source is not None and self._out is not None
        kwargs = self._source.output_kwargs(self._tag, metadata)
        self._output = put_layer(self._viewer, self._output, self._out, kwargs)
        self._runner.watch(self._output)
