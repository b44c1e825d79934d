"""One streaming engine run at a time in a napari worker thread, with progress and a Stop button.

:class:`StreamRunner` is shared by the three widgets.  It starts a generator of
:class:`~napari_ntk_denoise._widgets._layers.PlaneEvent` in a napari ``GeneratorWorker``, shows its
progress in napari's activity dock, refuses a second run while one is going, and stops the worker
when the user presses Stop, removes a layer the run depends on, or closes the viewer.  The same
progress shows inside the widget (:class:`~._status.RunStatus`).  Events that
arrive after a stop request are dropped, so a closing viewer is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import notification_manager, show_info
from qtpy.QtCore import QTimer

from napari_ntk_denoise import Progress

from ._layers import PlaneEvent
from ._status import STEPS, RunStatus

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import PushButton
    from qtpy.QtWidgets import QWidget

__all__ = ["EngineError", "StreamRunner", "engine_progress"]

class EngineError(Exception):
    """A ``RuntimeError`` of the engine (torch raises those), re-raised under another type.

    superqt's ``GeneratorWorker`` takes a ``RuntimeError`` from the generator for a deleted worker
    and only warns; re-raised as this type it reaches the ``errored`` signal and a notification.
    """


def _guarded(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """Run ``gen``, turning its ``RuntimeError`` into :class:`EngineError`."""
    try:
        return (yield from gen)
    except RuntimeError as exc:
        raise EngineError(str(exc)) from exc


def engine_progress(event: object) -> tuple[float, str] | None:
    """Fraction done and message of an engine :class:`~napari_ntk_denoise.Progress` event."""
    if isinstance(event, Progress):
        return event.fraction, f"{event.stage}: {event.message}" if event.message else event.stage
    return None


class StreamRunner:
    """Runs one plane-tagged engine generator at a time and relays its events.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layer removals stop the run.
    native : QWidget
        The widget's Qt widget; its destruction (viewer closed) stops the run.
    run_button, stop_button : magicgui.widgets.PushButton
        Disabled/enabled while a run goes; ``stop_button`` stops it.
    status : RunStatus
        The widget's progress line.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, native: QWidget, run_button: PushButton, stop_button: PushButton,
        status: RunStatus,
    ) -> None:
        self.worker: GeneratorWorker | None = None
        self.status = status
        self._failure: str | None = None
        self._viewer = viewer
        self._run_button, self._stop_button = run_button, stop_button
        self._watched: list[object] = []
        self._pbar: progress | None = None
        self._description = ""
        self._closed = False
        stop_button.enabled = False
        stop_button.changed.connect(self.stop)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        native.destroyed.connect(self._on_destroyed)

    @property
    def running(self) -> bool:
        """Whether a run is going (until its ``finished`` signal)."""
        return self.worker is not None

    def refuse_if_running(self) -> bool:
        """Tell the user and return ``True`` when a run is going."""
        if self.running:
            show_info("A run is already in progress: wait for it to finish or press Stop.")
        return self.running

    def start(
        self,
        func: Callable[..., Generator[PlaneEvent, None, Any]],
        *args: Any,
        description: str,
        n_planes: int,
        on_event: Callable[[PlaneEvent], None],
        on_return: Callable[[Any], None],
        on_finished: Callable[[bool], None] | None = None,
        watch: Sequence[object] = (),
        progress_of: Callable[[object], tuple[float, str] | None] = engine_progress,
        upper_bound: bool = False,
    ) -> GeneratorWorker | None:
        """Start ``func(*args)`` in a worker thread, unless a run is going.

        Parameters
        ----------
        func : callable
            Generator function yielding :class:`PlaneEvent` and returning the result.
        *args
            Its arguments (computed in the main thread, read in the worker).
        description : str
            Label of the progress bar.
        n_planes : int
            Number of planes, to combine per-plane progress.
        on_event : callable
            Called in the main thread with each non-progress event.
        on_return : callable
            Called with the generator's return value (not after a stop).
        on_finished : callable, optional
            Called with ``True`` if the run was stopped, after success, stop or error.
        watch : sequence of layers
            Layers whose removal stops the run.
        progress_of : callable
            ``(fraction, message)`` of a plane's event, or ``None`` for a result event.
        upper_bound : bool
            The run may end early (e.g. a trainer's patience), so its time left is an upper bound.

        Returns
        -------
        GeneratorWorker or None
            The worker, started as soon as control returns to the event loop; ``None`` when refused.
        """
        if self.refuse_if_running():
            return None
        self._watched = list(watch)
        self._description = description
        self._pbar = progress(total=STEPS, desc=description)
        self._failure = None
        self.status.start(description, upper_bound)
        gen = func(*args)
        worker = create_worker(_guarded, gen, _ignore_errors=True)

        def relay(item: PlaneEvent) -> None:
            if worker.abort_requested:
                return
            state = progress_of(item.event)
            if state is None:
                on_event(item)
            else:
                where = f"plane {item.position + 1} of {n_planes}: " if n_planes > 1 else ""
                self._show_progress((item.position + state[0]) / n_planes, where + state[1])

        def result(value: Any) -> None:
            if not worker.abort_requested:  # a result queued before a stop request is dropped too
                on_return(value)

        def done() -> None:
            gen.close()  # a stopped run is left suspended by the worker: end it, so its memory goes now
            self._finish(on_finished, worker.abort_requested)

        worker.yielded.connect(relay)
        worker.errored.connect(self._on_error)
        worker.returned.connect(result)
        worker.finished.connect(done)
        self.worker = worker
        self._run_button.enabled = False
        self._stop_button.enabled = True
        # started from the event loop, as a click would: the caller can connect to it first
        QTimer.singleShot(0, worker.start)
        return worker

    def watch(self, layer: object) -> None:
        """Also stop the running worker when ``layer`` (e.g. its new output) is removed."""
        if self.running and not any(layer == w for w in self._watched):
            self._watched.append(layer)

    def stop(self) -> None:
        """Ask the running worker to stop at its next event (no-op when idle)."""
        if self.worker is not None and not self.worker.abort_requested:
            self.worker.quit()
            if self._pbar is not None:
                self._pbar.set_description(f"{self._description}: stopping")

    def _on_error(self, exc: BaseException) -> None:
        """Show the worker's exception as a napari error notification (with its traceback), and in
        the progress line.

        napari 0.9's workers mean to do this themselves, but their notifying mixin is never
        initialised (``QRunnable.__init__`` does not chain), so nothing would be shown.
        """
        self._failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        notification_manager.receive_error(type(exc), exc, exc.__traceback__)

    def _on_destroyed(self, *_: object) -> None:
        """The widget is gone (dock or viewer closed): stop, and touch no widget or layer again."""
        self._closed = True
        self._viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self.stop()

    def _show_progress(self, fraction: float, message: str) -> None:
        """Move both progress bars to ``fraction`` of the whole run."""
        pbar = self._pbar  # updating the bar processes events: the run may finish meanwhile
        if pbar is None:
            return
        self.status.update(fraction, message)
        n = min(STEPS, int(round(fraction * STEPS)))
        if n > pbar.n:
            pbar.update(n - pbar.n)
        pbar.set_description(f"{self._description}: {message}")

    def _finish(self, on_finished: Callable[[bool], None] | None, aborted: bool) -> None:
        """Close the progress bar, re-enable Run, and tell the widget (unless it is gone)."""
        if self._pbar is not None:
            self._pbar.close()
        self._pbar, self.worker, self._watched = None, None, []
        if self._closed:
            return
        self._run_button.enabled = True
        self._stop_button.enabled = False
        self.status.finish(f"Failed ({self._failure})" if self._failure else "Stopped" if aborted else "Done")
        if on_finished is not None:
            on_finished(aborted)

    def _on_layer_removed(self, event: Any) -> None:
        """Stop the run when a layer it reads or writes is removed."""
        if self.running and any(event.value == layer for layer in self._watched):
            show_info(f"'{event.value.name}' was removed: the run was stopped.")
            self.stop()
