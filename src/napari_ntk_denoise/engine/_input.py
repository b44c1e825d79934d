"""Input checking, layout conversion and device/memory helpers shared by the engine."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ImageLayout", "prepare_image", "resolve_device", "available_memory", "check_memory", "cpu_flags"]


@dataclass(frozen=True)
class ImageLayout:
    """How to put a ``(*spatial, C)`` working array back into the caller's layout."""

    ndim: int
    channel_axis: int | None
    dtype: np.dtype

    def restore(self, hwc: np.ndarray) -> np.ndarray:
        """Return ``hwc`` in the original layout, float32 (float64 for float64 input)."""
        out = hwc.astype(self.dtype, copy=False)
        if self.channel_axis is None:
            return out[..., 0]
        return np.moveaxis(out, -1, self.channel_axis)


def prepare_image(
    image: np.ndarray, channel_axis: int | None, name: str = "image", spatial: int = 2
) -> tuple[np.ndarray, ImageLayout]:
    """Check an image and return a float ``(H, W, C)`` (or ``(Z, H, W, C)``) copy and its layout.

    Parameters
    ----------
    image : array_like
        2-D image (3-D volume with ``spatial=3``), with one more axis for channels.
    channel_axis : int or None
        Axis of the colour channels (``None`` for a gray image).
    name : str
        Name used in error messages.
    spatial : {2, 3}
        Spatial dimensions: 2 for images, 3 for volumes (Z, Y, X).

    Raises
    ------
    ValueError
        Wrong number of dimensions, boolean/complex/non-numeric dtype, empty or non-finite values.
    """
    arr = np.asarray(image)
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} has unsupported dtype {arr.dtype}; expected real integers or floats")
    expected = spatial + (channel_axis is not None)
    if arr.ndim != expected:
        hint = " (pass channel_axis for colour images)" if arr.ndim == spatial + 1 and channel_axis is None else ""
        raise ValueError(f"{name} must be {expected}-D with channel_axis={channel_axis}, got shape {arr.shape}{hint}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    out_dtype = np.dtype(np.float64) if arr.dtype == np.float64 else np.dtype(np.float32)
    work = arr.astype(np.float64 if out_dtype == np.float64 else np.float32, copy=True)
    if not np.all(np.isfinite(work)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if channel_axis is None:
        work = work[..., None]
        axis = None
    else:
        axis = channel_axis % arr.ndim
        work = np.ascontiguousarray(np.moveaxis(work, axis, -1))
    return work, ImageLayout(ndim=arr.ndim, channel_axis=axis, dtype=out_dtype)


def resolve_device(device: str | torch.device | None, allow_mps: bool = False) -> torch.device:
    """Pick or check a compute device.

    ``None``/``"auto"``: CUDA when available, then (with ``allow_mps``) Apple MPS, else the CPU.
    The NTK engine leaves MPS out: it needs float64 eigensolvers that MPS lacks.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if allow_mps and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if dev.type == "mps" and not (allow_mps and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' is not available" + ("" if allow_mps else " for the NTK engine"))
    return dev


@functools.cache
def cpu_flags() -> str:
    """The CPU's feature flags (the ``flags`` / ``Features`` line of ``/proc/cpuinfo``), ``""`` where
    there is no such file."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.strip() for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (host: ``MemAvailable``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_memory(required: int, device: torch.device, what: str, advice: str) -> None:
    """Raise ``MemoryError`` before heavy work if ``required`` bytes exceed what is available."""
    avail = available_memory(device)
    if required > avail:
        raise MemoryError(
            f"{what} needs about {required / 2**30:.2f} GiB on {device} but only "
            f"{avail / 2**30:.2f} GiB is available; {advice}"
        )
