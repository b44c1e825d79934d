"""The column side of the fast depth-2 kernel blocks: operands, buffers and block types.

:meth:`~napari_ntk_denoise.engine.kernels.CNNKernel.columns` builds a :class:`ColumnSide` once per
chunk of anchors, and :meth:`~napari_ntk_denoise.engine.kernels.CNNKernel.block_fast` reuses it
for every block of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["ALIGN", "ColumnSide", "MovedColumns", "SplitBlock", "leading_columns", "operand_t", "pad_inner"]


class SplitBlock(NamedTuple):
    """A float32 block as two bfloat16 parts, ``block = hi + lo``
    (see :func:`~napari_ntk_denoise.engine.kernel_ops.split_bf16`)."""

    hi: torch.Tensor
    lo: torch.Tensor


def leading_columns(k: tuple, m: int) -> "torch.Tensor | SplitBlock":
    """The first ``m`` columns of a block given as ``(k,)`` or as a :class:`SplitBlock`."""
    return SplitBlock(k.hi[:, :m], k.lo[:, :m]) if isinstance(k, SplitBlock) else k[0][:, :m]


class MovedColumns(NamedTuple):
    """``K_eps - K`` of a row block on the columns ``columns`` only (zero on all others)."""

    values: torch.Tensor
    columns: torch.Tensor


@dataclass
class ColumnSide:
    """Column-side data of :meth:`CNNKernel.block_fast`, built once by :meth:`CNNKernel.columns`."""

    cols: torch.Tensor
    diagonals: tuple
    x_eps: torch.Tensor | None
    diagonals_eps: tuple | None
    gemm_dtype: torch.dtype
    basis: torch.Tensor | None
    scale: float = 1.0
    norms: torch.Tensor | None = None
    norms_eps: torch.Tensor | None = None
    principal_t: torch.Tensor | None = None
    low: torch.Tensor | None = None
    patches: torch.Tensor | None = None
    moved: int | None = None
    delta_moved: torch.Tensor | None = None
    workspace: dict[str, torch.Tensor] | None = None

    @property
    def width(self) -> int:
        """Columns of a ``block_fast(..., padded=True)`` block (anchors plus zero padding)."""
        return len(self.cols) if self.low is None else self.low.shape[1]

    def moved_part(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """The first ``moved`` entries of ``t`` along ``dim``: those of every column whose patch the
        perturbation reaches (few when those come first, as
        :func:`~napari_ntk_denoise.engine.nystrom.iter_nystrom` orders the anchors)."""
        return t.narrow(dim, 0, self.moved)

    def reuse_buffers(self) -> "ColumnSide":
        """Let :meth:`CNNKernel.block_fast` write every block into the same buffers.

        A sweep over row blocks otherwise allocates and frees hundreds of megabytes per block; on a
        CPU the allocator returns such blocks to the system and every new one is paid in page
        faults, which slow the arc-cosine pass down (``benchmarks/bench_ntk.py``).
        """
        self.workspace = {}
        return self

    def buffer(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised ``shape`` tensor: from the workspace when there is one, else new."""
        if self.workspace is None:
            return torch.empty(shape, dtype=dtype, device=device)
        size = shape[0] * shape[1]
        buf = self.workspace.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
            buf = self.workspace[name] = torch.empty(size, dtype=dtype, device=device)
        return buf[:size].view(shape)

    def operand(self, name: str, *parts: torch.Tensor) -> torch.Tensor:
        """Left operand ``[parts...]`` side by side in ``gemm_dtype``, zero-padded to a multiple
        of 32 columns, written into one buffer (no concatenated, cast and padded temporaries)."""
        width = sum(p.shape[1] for p in parts)
        buf = self.buffer(name, (parts[0].shape[0], width + (-width % ALIGN)), self.gemm_dtype, parts[0].device)
        start = 0
        for p in parts:
            buf[:, start : start + p.shape[1]].copy_(p)
            start += p.shape[1]
        buf[:, start:].zero_()
        return buf


#: matrix dimensions are padded to multiples of this: odd sizes (``3 * 11^2 = 363`` inner terms,
#: thousands of anchors) send cuBLAS to slow unaligned kernels
ALIGN = 32


def pad_inner(a: torch.Tensor) -> torch.Tensor:
    """Zero-pad the columns of a ``(n, K)`` product operand to a multiple of ``ALIGN``."""
    return F.pad(a, (0, -a.shape[1] % ALIGN)) if a.shape[1] % ALIGN else a


def operand_t(a: torch.Tensor) -> torch.Tensor:
    """Right-hand operand ``a^T`` of a product from ``(m, K)`` columns, both sides zero-padded."""
    return pad_inner(pad_inner(a).T).contiguous()
