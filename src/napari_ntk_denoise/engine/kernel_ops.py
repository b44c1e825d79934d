"""The fused elementwise ops of the kernel columns (the output layer's arc-cosine, and the bfloat16
split of an operand) and their dispatch: native C or numba on a CPU, ``torch.compile`` elsewhere,
eager as the fallback."""

from __future__ import annotations

import math
import os
import warnings

import torch

from . import _native

__all__ = ["fused_op", "split_bf16"]

#: ``acos(x) = sqrt(1 - x) (a_0 + a_1 x + ... + a_7 x^7)`` on ``[0, 1]``, absolute error <= 2e-8
#: (Abramowitz & Stegun 4.4.46; float32 rounds acos to ~2.4e-7 anyway)
_ACOS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046, 0.0308918810, -0.0170881256, 0.0066700901,
         -0.0012624911)


def _acos(x: torch.Tensor) -> torch.Tensor:
    """Arc-cosine by a polynomial: in the fused op faster than the library ``acos`` (the main cost
    of the arc-cosine blocks) and smooth, so kernel differences stay exact."""
    a = x.abs()
    p = torch.full_like(a, _ACOS[-1])
    for c in reversed(_ACOS[:-1]):
        p = p * a + c
    r = torch.sqrt((1 - a).clamp_min(0)) * p
    return torch.where(x < 0, math.pi - r, r)


def _arccos_output(g: torch.Tensor, nr: torch.Tensor, nc: torch.Tensor, scale: float, factor: float, sigma_w2: float):
    """``sigma_w^2/(2 pi) |p||q| (sin t + factor (pi - t) cos t)`` from a raw Gram block ``g``."""
    norm = nr[:, None] * nc[None, :]
    rho = (g * scale / norm.clamp_min(1e-30)).clamp(-1.0, 1.0)
    val = torch.sqrt((1 - rho * rho).clamp_min(0)) + factor * (math.pi - _acos(rho)) * rho
    return val * norm * (sigma_w2 / (2 * math.pi))


def _gram(ar, pt, g_low, nr):
    """The Gram block: its principal part ``ar @ pt`` in float32 plus the low-precision rest."""
    return torch.addmm(g_low.to(nr.dtype), ar, pt)


def _arccos_single(out, ar, pt, g_low, nr, nc, scale: float, factor: float, sigma_w2: float) -> None:
    """Kernel block into ``out`` from a Gram given as a float32 principal part ``ar @ pt`` (``q`` inner
    terms, ``q`` may be 0) plus a low-precision part ``g_low``."""
    out.copy_(_arccos_output(_gram(ar, pt, g_low, nr), nr, nc, scale, factor, sigma_w2))


def _arccos_pair(out, out_delta, ar, pt, g_low, dg, dg_moved, nr, nc, nre, nce, scale: float, factor: float,
                 sigma_w2: float) -> None:
    """Kernel block into ``out`` and its change ``K(G + dG) - K(G)`` into ``out_delta`` in one pass,
    where ``dG`` is ``dg`` plus ``dg_moved`` on its first columns; the change is kept in ``dg``'s
    (possibly low) precision, ready for the next low-precision product."""
    g = _gram(ar, pt, g_low, nr)
    k = _arccos_output(g, nr, nc, scale, factor, sigma_w2)
    d = dg.to(nr.dtype, copy=True)
    d[:, : dg_moved.shape[1]] += dg_moved.to(nr.dtype)
    out_delta.copy_(_arccos_output(g + d, nre, nce, scale, factor, sigma_w2) - k)
    out.copy_(k)


def _arccos_single_split(out_hi, out_lo, ar, pt, g_low, nr, nc, scale: float, factor: float, sigma_w2: float) -> None:
    """:func:`_arccos_single` written as two bfloat16 parts (:func:`split_bf16`)."""
    hi, lo = split_bf16(_arccos_output(_gram(ar, pt, g_low, nr), nr, nc, scale, factor, sigma_w2))
    out_hi.copy_(hi)
    out_lo.copy_(lo)


def split_bf16(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = hi + lo`` for float32 ``a`` with both parts in bfloat16 (16 significant bits together).

    ``hi`` is ``a`` rounded to bfloat16 and ``lo`` the rounded remainder.  Compiled, this needs
    ``emulate_precision_casts`` (see :func:`fused_op`), without which the compiler keeps ``hi`` in
    float32 and ``lo`` comes out zero.  (A bit mask instead of the cast is not fused by the CPU
    compiler, which makes the arc-cosine blocks slower.)"""
    hi = a.to(torch.bfloat16)
    return hi, (a - hi.to(a.dtype)).to(torch.bfloat16)


_EAGER = {"single": _arccos_single, "pair": _arccos_pair, "single_split": _arccos_single_split, "split": split_bf16}
_COMPILED: dict[str, object] = {}


def fused_op(name: str):
    """The fused elementwise op ``name`` (the output layer, or a bfloat16 split).

    On a CPU, the C or numba version of :mod:`~napari_ntk_denoise.engine._native` (no compiler start-up
    cost, and faster); elsewhere (a GPU, ``NTK_DENOISE_NATIVE=0``, neither C compiler nor numba)
    the op ``torch.compile``d (much faster than eager; ``benchmarks/results/native_ops.md``), unless
    ``NTK_DENOISE_COMPILE=0`` or compilation fails, in which case eager is used."""

    def run(*args):
        native = _native.op(name) if args[0].device.type == "cpu" else None
        out = NotImplemented if native is None else native(*args)
        return _compiled(name)(*args) if out is NotImplemented else out

    return run


def _compiled(name: str):
    """``torch.compile``d op ``name``, falling back to eager (see :func:`fused_op`)."""
    if os.environ.get("NTK_DENOISE_COMPILE", "1") == "0" or _COMPILED.get(name) is False:
        return _EAGER[name]
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_EAGER[name], dynamic=True, options={"emulate_precision_casts": True})
    compiled = _COMPILED[name]

    def run(*args):
        try:
            return compiled(*args)
        except Exception as exc:  # no C++ compiler, unsupported platform, ...
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); using eager kernels", RuntimeWarning)
            _COMPILED[name] = False
            return _EAGER[name](*args)

    return run
