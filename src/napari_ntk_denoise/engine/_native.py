"""The fused elementwise ops of :mod:`~napari_ntk_denoise.engine.kernels` in C, for CPUs.

``torch.compile`` fuses these ops too, but a fresh process pays seconds for it before its first
kernel block (importing the compiler, checking the CPU's vector instructions, tracing three ops),
and it needs a C++ compiler as well.  ``_arccos.c`` is instead compiled once per machine by the
host's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) with ``-O3 -march=native`` into a
cache folder (``$NTK_DENOISE_CACHE``, else ``$XDG_CACHE_HOME/napari-ntk-denoise`` or
``~/.cache/napari-ntk-denoise``), and later processes load it with ctypes in milliseconds.  The
library's name hashes its source, compiler, flags and the CPU's feature flags, so a cache shared
by different machines holds one library per kind of CPU.  Built with OpenMP, the C ops share
torch's threads (see ``_arccos.c``).

Without a C compiler or a writable cache (or with ``NTK_DENOISE_NATIVE=numba``) the same ops run
as numba kernels (:mod:`~napari_ntk_denoise.engine._numba_ops`, compiled by numba and cached on disk: no
C compiler needed); with neither, or with ``NTK_DENOISE_NATIVE=0``, :func:`op` returns ``None``
and the kernels fall back to ``torch.compile``.  Every op checks its operands (CPU, dtypes, shapes,
contiguity) and returns ``NotImplemented`` for anything else, so a caller can always fall back as
well.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from ._input import cpu_flags

__all__ = ["backend", "build", "cache_dir", "library", "op"]

_SOURCE = Path(__file__).with_name("_arccos.c")
#: no contraction into fused multiply-adds: ``K(G + 0) - K(G)`` must be exactly zero, as it is in torch
#: (a contracted ``v c - k`` keeps the product's rounding error)
_COMMON = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
#: tried in order: threads and the host's vector instructions, then without what a compiler lacks
#: (no OpenMP: one thread)
_FLAGS = (("-march=native", "-fopenmp", *_COMMON), ("-fopenmp", *_COMMON), ("-march=native", *_COMMON), _COMMON)
_P, _I, _F, _T = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_GRAM = (_P, _I, _P, _I, _P)  # ar, q, pt, pt's row stride, g_low
_ARGTYPES = {
    "ntk_single": (_T, _I, _I, _P, *_GRAM, _P, _P, _F, _F, _F),
    "ntk_single_split": (_T, _I, _I, _P, _P, *_GRAM, _P, _P, _F, _F, _F),
    "ntk_pair": (_T, _I, _I, _P, _P, *_GRAM, _P, _P, _I, _P, _P, _P, _P, _F, _F, _F),
}
#: suffix of the C functions for the dtype of the low-precision operands
_LOW = {torch.bfloat16: "bf16", torch.float32: "f32"}


def cache_dir() -> Path:
    """Folder of the compiled library: ``$NTK_DENOISE_CACHE``, else the user's cache folder."""
    if os.environ.get("NTK_DENOISE_CACHE"):
        return Path(os.environ["NTK_DENOISE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-ntk-denoise"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _host() -> str:
    """What a compiled library depends on besides its source: machine, system and CPU features."""
    return f"{platform.machine()} {platform.system()} {cpu_flags()}"


def build(directory: Path, compiler: str | None) -> Path | None:
    """Compile ``_arccos.c`` into ``directory`` unless it is there already.

    Parameters
    ----------
    directory : pathlib.Path
        Cache folder (created if missing).
    compiler : str or None
        C compiler executable; ``None`` builds nothing.

    Returns
    -------
    pathlib.Path or None
        The shared library, or ``None`` if no flag set compiled.  The file appears atomically, so
        processes building at once do not see each other's partial output.
    """
    if compiler is None:
        return None
    source, host = _SOURCE.read_bytes(), _host().encode()
    keys = [hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(f).encode(), host])) for f in _FLAGS]
    paths = [directory / f"ntk_arccos_{key.hexdigest()[:20]}.so" for key in keys]
    for path in paths:  # built before (perhaps with fewer flags: do not retry the failing ones)
        if path.exists():
            return path
    directory.mkdir(parents=True, exist_ok=True)
    for flags, path in zip(_FLAGS, paths):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        try:
            done = subprocess.run([compiler, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(tmp, path)
                return path
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled C ops (built on first use), or ``None`` where there is no compiler or cache."""
    try:
        path = build(cache_dir(), _compiler())
        lib = None if path is None else ctypes.CDLL(str(path))
    except OSError:
        lib = None
    if lib is None:
        return None
    for base, argtypes in _ARGTYPES.items():
        for suffix in _LOW.values():
            fn = getattr(lib, f"{base}_{suffix}")
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
    lib.ntk_split.argtypes, lib.ntk_split.restype = (_T, _I, _I, _P, _P, _P, _I), None
    return lib


@functools.cache
def _numba_ops():
    """:mod:`~napari_ntk_denoise.engine._numba_ops`, or ``None`` where numba cannot be imported."""
    try:
        from . import _numba_ops
    except ImportError:
        return None
    return _numba_ops


@functools.cache
def backend() -> str | None:
    """Which ops run on a CPU: ``"c"``, ``"numba"`` or ``None`` (torch's, with a warning).

    ``NTK_DENOISE_NATIVE`` chooses: ``0`` none, ``numba`` the numba ops, otherwise the C ops where
    they build and the numba ops elsewhere.
    """
    choice = os.environ.get("NTK_DENOISE_NATIVE", "1")
    if choice == "0":
        return None
    if choice != "numba" and library() is not None:
        return "c"
    if _numba_ops() is not None:
        return "numba"
    warnings.warn("neither a C compiler with a writable cache nor numba for the native kernel ops: using "
                  "torch.compile (a first call in each process is a few seconds slower)", RuntimeWarning, stacklevel=2)
    return None


def _fits(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    return t.device.type == "cpu" and t.dtype == dtype and tuple(t.shape) == shape and t.is_contiguous()


def _gram(ar: torch.Tensor, pt: torch.Tensor, g_low: torch.Tensor) -> tuple[int, int, tuple] | None:
    """Block size and the Gram operands ``(ar, q, pt, pt's row stride, g_low)`` (principal part
    ``ar @ pt`` with ``q`` inner terms, low part ``g_low``), or ``None`` if they do not fit."""
    if g_low.ndim != 2 or g_low.dtype not in _LOW or not g_low.is_contiguous() or g_low.device.type != "cpu":
        return None
    n, w = g_low.shape
    q = ar.shape[1] if ar.ndim == 2 else -1
    if not (_fits(ar, torch.float32, (n, q)) and pt.device.type == "cpu" and pt.dtype == torch.float32
            and tuple(pt.shape) == (q, w) and (q == 0 or (pt.stride(1) == 1 and pt.stride(0) >= w))):
        return None
    return n, w, (ar, q, pt, pt.stride(0) if q else w, g_low)


def _launch(base: str, g_low: torch.Tensor, n: int, w: int, *args, scale: float, factor: float,
            sigma_w2: float) -> None:
    """Run ``{base}_{bf16|f32}`` (by ``g_low``'s dtype) on tensors (as pointers) and ints, or its
    numba twin on the tensors."""
    c = sigma_w2 / (2 * math.pi)
    if backend() == "numba":
        return getattr(_numba_ops(), base.removeprefix("ntk_"))(n, w, *args, scale, factor, c)
    ptrs = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
    fn = getattr(library(), f"{base}_{_LOW[g_low.dtype]}")
    if fn(torch.get_num_threads(), n, w, *ptrs, scale, factor, c):
        raise MemoryError(f"{base}: no memory for a {w}-column row buffer")


def _single(out, ar, pt, g_low, nr, nc, scale, factor, sigma_w2):
    f32, fit = torch.float32, _gram(ar, pt, g_low)
    if fit is None or not (_fits(out, f32, fit[:2]) and _fits(nr, f32, fit[:1]) and _fits(nc, f32, fit[1:2])):
        return NotImplemented
    n, w, gram = fit
    return _launch("ntk_single", g_low, n, w, out, *gram, nr, nc, scale=scale, factor=factor, sigma_w2=sigma_w2)


def _single_split(out_hi, out_lo, ar, pt, g_low, nr, nc, scale, factor, sigma_w2):
    f32, bf16, fit = torch.float32, torch.bfloat16, _gram(ar, pt, g_low)
    if fit is None or not (_fits(out_hi, bf16, fit[:2]) and _fits(out_lo, bf16, fit[:2])
                           and _fits(nr, f32, fit[:1]) and _fits(nc, f32, fit[1:2])):
        return NotImplemented
    n, w, gram = fit
    return _launch("ntk_single_split", g_low, n, w, out_hi, out_lo, *gram, nr, nc, scale=scale, factor=factor,
                   sigma_w2=sigma_w2)


def _pair(out, out_delta, ar, pt, g_low, dg, dg_moved, nr, nc, nre, nce, scale, factor, sigma_w2):
    f32, fit = torch.float32, _gram(ar, pt, g_low)
    wm = dg_moved.shape[1] if dg_moved.ndim == 2 else -1
    if fit is None or not (_fits(out, f32, fit[:2]) and _fits(out_delta, g_low.dtype, fit[:2])
                           and _fits(dg, g_low.dtype, fit[:2]) and 0 <= wm <= fit[1]
                           and _fits(dg_moved, g_low.dtype, (fit[0], wm))
                           and all(_fits(v, f32, fit[:1]) for v in (nr, nre))
                           and all(_fits(v, f32, fit[1:2]) for v in (nc, nce))):
        return NotImplemented
    n, w, gram = fit
    return _launch("ntk_pair", g_low, n, w, out, out_delta, *gram, dg, dg_moved, wm, nr, nc, nre, nce, scale=scale,
                   factor=factor, sigma_w2=sigma_w2)


def _split(a: torch.Tensor):
    if a.device.type != "cpu" or a.dtype != torch.float32 or a.ndim != 2 or a.stride(1) != 1:
        return NotImplemented
    n, w = a.shape
    hi, lo = (torch.empty((n, w), dtype=torch.bfloat16) for _ in range(2))
    if backend() == "numba":
        _numba_ops().split(n, w, hi, lo, a, a.stride(0))
    else:
        library().ntk_split(torch.get_num_threads(), n, w, hi.data_ptr(), lo.data_ptr(), a.data_ptr(), a.stride(0))
    return hi, lo


_OPS = {"single": _single, "single_split": _single_split, "pair": _pair, "split": _split}


def op(name: str) -> Callable | None:
    """The C or numba version (:func:`backend`) of the fused op ``name`` (signature of its torch twin
    in :mod:`~napari_ntk_denoise.engine.kernels`), or ``None`` where neither is available."""
    return _OPS[name] if backend() is not None else None
