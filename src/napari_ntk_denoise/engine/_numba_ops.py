"""The fused output ops of ``_arccos.c`` in numba, for CPUs without a C compiler.

The same maths and rounding as the C twins (see there): the arc-cosine output layer with the
float32 principal part of the Gram, and bfloat16 rounding to nearest even.  Compiled by numba's LLVM
on first use and cached on disk (``cache=True``: numba's ``__pycache__`` beside this file, or
``$NUMBA_CACHE_DIR``), so only the first process on a machine pays for the compilation.  Rows are
shared among ``torch.get_num_threads()`` Python threads running the kernels without the GIL.
Operands come as flat contiguous arrays (bfloat16 as its ``uint16`` bits) so that each op
compiles once per low-precision dtype.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["pair", "single", "single_split", "split"]

#: rows per principal-part tile and columns per tile chunk (a chunk of a tile stays in L1 cache)
_ROWS, _CHUNK = 4, 1024
_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
_PI, _ZERO, _ONE, _TINY = np.float32(math.pi), np.float32(0.0), np.float32(1.0), np.float32(1e-30)
_A0, _A1, _A2, _A3, _A4, _A5, _A6, _A7 = (np.float32(c) for c in (
    1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046, 0.0308918810, -0.0170881256, 0.0066700901,
    -0.0012624911))


@intrinsic
def _bits(typingctx, x):
    """The bits of a float32 as a uint32."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _float(typingctx, u):
    """The float32 with the bits of a uint32."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@njit(**_JIT)
def _to_bf16(f):
    u = _bits(f)
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def _load(x):
    """A low-precision entry as float32 (bfloat16 bits or float32)."""


def _store(f, like):
    """A float32 rounded to the low-precision type of ``like``."""


@overload(_load, jit_options=_JIT)
def _load_impl(x):
    if isinstance(x, types.Integer):
        return lambda x: _float(np.uint32(x) << np.uint32(16))
    return lambda x: x


@overload(_store, jit_options=_JIT)
def _store_impl(f, like):
    if isinstance(like, types.Integer):
        return lambda f, like: _to_bf16(f)
    return lambda f, like: f


@njit(**_JIT)
def _acos(x):
    """acos by Abramowitz & Stegun 4.4.46 (the coefficients of ``kernel_ops._ACOS``)."""
    a = abs(x)
    p = ((((((_A7 * a + _A6) * a + _A5) * a + _A4) * a + _A3) * a + _A2) * a + _A1) * a + _A0
    s = _ONE - a
    r = np.sqrt(s if s > _ZERO else _ZERO) * p
    return _PI - r if x < _ZERO else r


@njit(**_JIT)
def _output(g, norm, scale, factor, c):
    """``c |p||q| (sin t + factor (pi - t) cos t)`` from a raw Gram entry ``g``, ``norm = |p||q|``."""
    rho = g * scale / (norm if norm > _TINY else _TINY)
    rho = min(max(rho, -_ONE), _ONE)
    s = _ONE - rho * rho
    return (np.sqrt(s if s > _ZERO else _ZERO) + factor * (_PI - _acos(rho)) * rho) * norm * c


@njit(fastmath={"contract"}, **_JIT)
def _principal(h, ar, q, pt, lpt, w, i0, rows):
    """``h[r w + j] = sum_k ar[(i0 + r) q + k] pt[k lpt + j]`` for ``rows`` rows from ``i0``."""
    for j0 in range(0, w, _CHUNK):
        j1 = min(j0 + _CHUNK, w)
        for r in range(rows):
            h[r * w + j0:r * w + j1] = _ZERO
        for k in range(q):
            pk = pt[k * lpt + j0:k * lpt + j1]
            for r in range(rows):
                ak = ar[(i0 + r) * q + k]
                hr = h[r * w + j0:r * w + j1]
                for j in range(j1 - j0):
                    hr[j] += ak * pk[j]


def _put(hi, lo, j, v):
    """Write ``v`` at ``j``: into ``hi`` (float32), or as bfloat16 parts ``hi + lo`` (uint16 bits)."""


@overload(_put, jit_options=_JIT)
def _put_impl(hi, lo, j, v):
    if isinstance(hi.dtype, types.Integer):
        def put(hi, lo, j, v):
            hb = _to_bf16(v)
            hi[j], lo[j] = hb, _to_bf16(v - _float(np.uint32(hb) << np.uint32(16)))
        return put

    def put_f32(hi, lo, j, v):
        hi[j] = v
    return put_f32


@njit(**_JIT)
def _single_rows(r0, r1, w, out_hi, out_lo, ar, q, pt, lpt, low, nr, nc, scale, factor, c):
    """Kernel rows ``r0:r1`` into ``out_hi`` (float32), or as bfloat16 parts ``out_hi + out_lo``."""
    h = np.empty(_ROWS * w, dtype=np.float32)
    for i0 in range(r0, r1, _ROWS):
        rows = min(_ROWS, r1 - i0)
        _principal(h, ar, q, pt, lpt, w, i0, rows)
        for r in range(rows):
            i, ni = i0 + r, nr[i0 + r]
            oh, ol = out_hi[i * w:(i + 1) * w], out_lo[i * w:(i + 1) * w]
            hr, lr = h[r * w:(r + 1) * w], low[i * w:(i + 1) * w]
            for j in range(w):
                _put(oh, ol, j, _output(hr[j] + _load(lr[j]), ni * nc[j], scale, factor, c))


@njit(**_JIT)
def _pair_rows(r0, r1, w, out, out_delta, ar, q, pt, lpt, low, dg, dg_moved, wm, nr, nc, nre, nce, scale, factor,
               c):
    h = np.empty(_ROWS * w, dtype=np.float32)
    for i0 in range(r0, r1, _ROWS):
        rows = min(_ROWS, r1 - i0)
        _principal(h, ar, q, pt, lpt, w, i0, rows)
        for r in range(rows):
            i, ni, nei = i0 + r, nr[i0 + r], nre[i0 + r]
            o, od = out[i * w:(i + 1) * w], out_delta[i * w:(i + 1) * w]
            hr, lr, dr, mr = h[r * w:(r + 1) * w], low[i * w:(i + 1) * w], dg[i * w:(i + 1) * w], \
                dg_moved[i * wm:(i + 1) * wm]
            for j in range(w):
                g = hr[j] + _load(lr[j])
                d = _load(dr[j]) + _load(mr[j]) if j < wm else _load(dr[j])
                k = _output(g, ni * nc[j], scale, factor, c)
                od[j] = _store(_output(g + d, nei * nce[j], scale, factor, c) - k, od[0])
                o[j] = k


@njit(**_JIT)
def _split_rows(r0, r1, w, out_hi, out_lo, a, lda):
    for i in range(r0, r1):
        oh, ol = out_hi[i * w:(i + 1) * w], out_lo[i * w:(i + 1) * w]
        for j in range(w):
            _put(oh, ol, j, a[i * lda + j])


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="ntk-numba")


def _rows(kernel, n: int, *args) -> None:
    """``kernel(r0, r1, *args)`` on row ranges (whole tiles) shared among torch's thread count."""
    threads = max(1, min(torch.get_num_threads(), -(-n // _ROWS)))
    if threads == 1:
        kernel(0, n, *args)
        return
    step = -(-n // (threads * _ROWS)) * _ROWS
    for job in [_pool(threads).submit(kernel, r0, min(r0 + step, n), *args) for r0 in range(0, n, step)]:
        job.result()


def _flat(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor as a flat array; bfloat16 as its ``uint16`` bits."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().reshape(-1).view(np.uint16)
    return t.numpy().reshape(-1)


def _principal_operands(ar: torch.Tensor, q: int, pt: torch.Tensor, lpt: int, w: int) -> tuple:
    """``(ar, q, pt, lpt)`` with ``pt`` as a flat view of its rows (row stride ``lpt``)."""
    flat_pt = pt.as_strided(((q - 1) * lpt + w,), (1,)) if q else pt.new_zeros(1)
    return _flat(ar.contiguous() if q else ar.new_zeros(1)), q, _flat(flat_pt), lpt


def _scalars(scale: float, factor: float, c: float) -> tuple:
    return np.float32(scale), np.float32(factor), np.float32(c)


def single(n: int, w: int, out, ar, q, pt, lpt, g_low, nr, nc, scale, factor, c) -> None:
    """Kernel block into ``out`` (the twin of ``ntk_single``); checked operands, flat views."""
    _rows(_single_rows, n, w, _flat(out), _flat(out), *_principal_operands(ar, q, pt, lpt, w), _flat(g_low), _flat(nr),
          _flat(nc), *_scalars(scale, factor, c))


def single_split(n: int, w: int, out_hi, out_lo, ar, q, pt, lpt, g_low, nr, nc, scale, factor, c) -> None:
    """Kernel block as two bfloat16 parts (the twin of ``ntk_single_split``)."""
    _rows(_single_rows, n, w, _flat(out_hi), _flat(out_lo), *_principal_operands(ar, q, pt, lpt, w),
          _flat(g_low), _flat(nr), _flat(nc), *_scalars(scale, factor, c))


def pair(n: int, w: int, out, out_delta, ar, q, pt, lpt, g_low, dg, dg_moved, wm, nr, nc, nre, nce, scale, factor,
         c) -> None:
    """Kernel block and its change under ``dG`` (the twin of ``ntk_pair``)."""
    moved = _flat(dg_moved) if wm else _flat(dg[:1, :1].contiguous())
    _rows(_pair_rows, n, w, _flat(out), _flat(out_delta), *_principal_operands(ar, q, pt, lpt, w), _flat(g_low),
          _flat(dg), moved, wm, _flat(nr), _flat(nc), _flat(nre), _flat(nce), *_scalars(scale, factor, c))


def split(n: int, w: int, out_hi, out_lo, a, lda) -> None:
    """``a`` (row stride ``lda``) as two bfloat16 parts (the twin of ``ntk_split``)."""
    _rows(_split_rows, n, w, _flat(out_hi), _flat(out_lo), _flat(a.as_strided(((n - 1) * lda + w,), (1,))), lda)
