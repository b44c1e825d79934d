"""Compute device of DIP training: choice, cache release, and retreat to the CPU on out-of-memory."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from ..engine._input import resolve_device as _resolve

__all__ = ["empty_cache", "resolve_device", "retry_on_cpu"]

_T = TypeVar("_T")


class Movable(Protocol):
    """Anything that holds tensors on one ``device`` and can move them all with ``to``."""

    device: torch.device

    def to(self, device: torch.device) -> None: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple MPS, then the CPU; anything else is checked."""
    return _resolve(device, allow_mps=True)


def empty_cache() -> None:
    """Hand the accelerators' cached, unused memory back to the driver."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def retry_on_cpu(holder: Movable, fn: Callable[[], _T]) -> _T:
    """Run ``fn``; if an accelerator runs out of memory, move ``holder`` to the CPU and run it again.

    Warns with a ``RuntimeWarning``; an out-of-memory error on the CPU is raised as it is.
    """
    try:
        return fn()
    except torch.OutOfMemoryError:
        if holder.device.type == "cpu":
            raise
        warnings.warn(f"out of memory on {holder.device}; continuing on the CPU", RuntimeWarning, stacklevel=2)
        holder.to(torch.device("cpu"))
        empty_cache()
        return fn()
