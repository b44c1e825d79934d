"""StreamRunner: an engine error becomes an error notification and the widget is ready again."""

from __future__ import annotations

from typing import Any

import pytest
from magicgui.widgets import PushButton
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QWidget

from napari_ntk_denoise._widgets._layers import PlaneEvent
from napari_ntk_denoise._widgets._runner import EngineError, StreamRunner
from napari_ntk_denoise._widgets._status import RunStatus


def _failing(message: str) -> Any:
    yield PlaneEvent((), 0, "result event")
    raise RuntimeError(message)  # torch reports most failures as RuntimeError


def test_engine_error_is_notified(qtbot, make_napari_viewer, monkeypatch: pytest.MonkeyPatch) -> None:
    viewer = make_napari_viewer()
    errors: list[BaseException] = []
    monkeypatch.setattr(notification_manager, "receive_error", lambda _t, value, *_: errors.append(value))
    native, run, stop = QWidget(), PushButton(), PushButton()
    status = RunStatus()
    runner = StreamRunner(viewer, native, run, stop, status)
    events, finished = [], []
    worker = runner.start(_failing, "out of memory", description="test", n_planes=1, on_event=events.append,
                          on_return=pytest.fail, on_finished=finished.append)
    assert runner.running and not run.enabled and stop.enabled
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        pass
    assert [e.event for e in events] == ["result event"]
    assert len(errors) == 1 and isinstance(errors[0], EngineError) and "out of memory" in str(errors[0])
    assert finished == [False] and not runner.running and run.enabled and not stop.enabled
    assert status.text.startswith("Failed (out of memory) after")
