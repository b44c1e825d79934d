"""The fast path of the depth-2 kernel: blocks ``K[rows, S]`` (and ``K_eps - K``) by fused products.

:func:`columns` prepares a :class:`ColumnSide` once per chunk of anchors ``S``, and
:func:`block_fast` reuses it for every block of rows of the Nystrom sweep.  The reference
recursion, for any depth, is :meth:`~napari_ntk_denoise.engine.kernels.CNNKernel.block`; deeper
kernels fall back to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .kernel_ops import fused_op, split_bf16
from .kernels import CNNKernel

__all__ = ["ALIGN", "ColumnSide", "MovedColumns", "SplitBlock", "block_fast", "columns", "patch_basis"]


class SplitBlock(NamedTuple):
    """A float32 block as two bfloat16 parts, ``block = hi + lo``
    (see :func:`~napari_ntk_denoise.engine.kernel_ops.split_bf16`)."""

    hi: torch.Tensor
    lo: torch.Tensor


def _leading_columns(k: tuple, m: int) -> torch.Tensor | SplitBlock:
    """The first ``m`` columns of a block given as ``(k,)`` or as a :class:`SplitBlock`."""
    return SplitBlock(k.hi[:, :m], k.lo[:, :m]) if isinstance(k, SplitBlock) else k[0][:, :m]


class MovedColumns(NamedTuple):
    """``K_eps - K`` of a row block on the columns ``columns`` only (zero on all others)."""

    values: torch.Tensor
    columns: torch.Tensor


@dataclass
class ColumnSide:
    """Column-side data of :func:`block_fast`, built once by :func:`columns`."""

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

    def reuse_buffers(self) -> ColumnSide:
        """Let :func:`block_fast` write every block into the same buffers.

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


def _pad_inner(a: torch.Tensor) -> torch.Tensor:
    """Zero-pad the columns of a ``(n, K)`` product operand to a multiple of ``ALIGN``."""
    return F.pad(a, (0, -a.shape[1] % ALIGN)) if a.shape[1] % ALIGN else a


def _operand_t(a: torch.Tensor) -> torch.Tensor:
    """Right-hand operand ``a^T`` of a product from ``(m, K)`` columns, both sides zero-padded."""
    return _pad_inner(_pad_inner(a).T).contiguous()


def patch_basis(kernel: CNNKernel, x: torch.Tensor, idx: torch.Tensor, q: int = 16) -> torch.Tensor:
    """Leading ``q`` principal directions (uncentred) of the patches at ``idx``: ``(C r^2, q)``.

    The float32 part of the Gram products has ``q`` inner terms, and fewer terms cost less;
    ``tests/test_kernels.py`` bounds the kernel's error against float64 at the default ``q``."""
    p = kernel.patches(x, idx).double()
    _, vec = torch.linalg.eigh(p.T @ p)
    return vec[:, -min(q, vec.shape[1]) :].to(x.dtype)


def columns(
    kernel: CNNKernel,
    x: torch.Tensor,
    cols: torch.Tensor,
    diagonals: tuple,
    x_eps: torch.Tensor | None = None,
    diagonals_eps: tuple | None = None,
    gemm_dtype: torch.dtype = torch.float32,
    basis: torch.Tensor | None = None,
) -> ColumnSide:
    """Everything about the columns (anchors) that :func:`block_fast` reuses for every row block.

    Parameters
    ----------
    x, x_eps : torch.Tensor
        Input image ``(C, H, W)`` (or volume ``(C, Z, H, W)``) and, for Monte-Carlo SURE, its perturbed version.
    cols : torch.Tensor
        Flat column indices.
    diagonals, diagonals_eps : tuple
        :meth:`CNNKernel.diagonals` of ``x`` and ``x_eps``.
    gemm_dtype : torch.dtype
        Precision of the patch Gram products (``L = 2``).  bfloat16 rounds the *output* of a
        product to 8 bits, too coarse for patch angles, so with a ``basis`` of principal
        directions (:func:`patch_basis`) the principal part ``(p V)(q V)^T`` runs in float32
        and only the small residual in ``gemm_dtype``.
    basis : torch.Tensor, optional
        Principal directions for the low-precision split.
    """
    side = ColumnSide(cols, diagonals, x_eps, diagonals_eps, gemm_dtype, basis)
    if kernel.depth > 2:
        return side
    pc = kernel.patches(x, cols)
    pad = -len(cols) % ALIGN  # zero columns (zero norm: zero kernel) keep the blocks' rows aligned
    side.scale = kernel.sigma_w2 / (x.shape[0] * kernel.patch_size)
    side.norms = F.pad(kernel.patch_norms(diagonals, cols), (0, pad))
    if basis is not None:
        principal = pc @ basis
        pc_low = pc - principal @ basis.T
        side.principal_t = F.pad(principal, (0, 0, 0, pad)).T.contiguous()
    else:
        pc_low = pc
        side.principal_t = pc.new_zeros(0, len(cols) + pad)
    side.low = _operand_t(pc_low.to(gemm_dtype))
    if x_eps is not None:
        dpc = kernel.patches(x_eps, cols) - pc
        side.norms_eps = F.pad(kernel.patch_norms(diagonals_eps, cols), (0, pad))
        side.patches = side.low if basis is None else _operand_t(pc.to(gemm_dtype))  # P_S in gemm_dtype
        # columns whose patches the perturbation reaches lie among the first `moved`: the only
        # columns where P_{d,S} (and, for rows it misses, K_eps - K) is not zero
        reached = torch.nonzero((dpc != 0).any(1)).flatten()
        side.moved = int(reached[-1]) + 1 if len(reached) else 0
        side.delta_moved = _pad_inner(dpc[: side.moved].to(gemm_dtype)).T.contiguous()
    return side


def block_fast(
    kernel: CNNKernel, x: torch.Tensor, rows: torch.Tensor | range, side: ColumnSide, padded: bool = False,
    rows_moved: bool = True, split: bool = False,
) -> tuple[torch.Tensor | SplitBlock, torch.Tensor | MovedColumns | None]:
    """``K[rows, cols]`` and, with a perturbed input, ``K_eps - K`` computed stably.

    The perturbed Gram is ``G + dG`` with ``dG = P_d P_S^T + P_eps P_{d,S}^T``
    (``P_d = P_eps - P``) computed on its own, so that the difference of the two kernels keeps
    its precision however the products round; its second term is computed on the first
    ``side.moved`` columns only (elsewhere ``P_{d,S}`` is zero).  The arc-cosine output layer,
    with the float32 principal part of the Gram, is one fused op (:func:`fused_op`: C on a
    CPU); pixels that are both a row and a column get their exact diagonal
    (:func:`_exact_self_pairs`).  Deeper kernels use :meth:`CNNKernel.block` in float64 for both inputs.
    ``rows`` must be sorted (a ``range`` of whole image rows is fastest).  With ``padded``,
    depth-2 blocks keep the zero columns that pad the width to a multiple of 32 (aligned
    operands for the products that follow).  With a workspace on ``side``
    (:meth:`ColumnSide.reuse_buffers`) the blocks returned are views of buffers that the next
    call overwrites.  ``rows_moved=False`` promises that the perturbation misses every row's
    patch: then ``K_eps - K`` is zero outside the columns whose patches it reaches, and only the
    first ``side.moved`` columns, which hold those, are computed (as :class:`MovedColumns`).
    With ``split``, blocks without ``K_eps - K`` on all columns come as two bfloat16 parts
    :class:`SplitBlock` (for :class:`~napari_ntk_denoise.engine.nystrom._SplitProduct`), written by the
    fused op itself rather than by another pass over the block.
    """
    cols, x_eps = side.cols, side.x_eps
    row_set = rows
    if isinstance(rows, range):
        rows = torch.arange(rows.start, rows.stop, rows.step, device=x.device)
    if kernel.depth > 2:  # float64: self-pairs (cos t = 1) sit at every layer of the recursion
        k = kernel.block(x.double(), rows, cols)
        if x_eps is None:
            return k.to(x.dtype), None
        return k.to(x.dtype), (kernel.block(x_eps.double(), rows, cols) - k).to(x.dtype)
    pr = kernel.patches(x, row_set)
    n, width = len(rows), side.width
    # principal part in float32 (its product is fused into the output op), the rest in low precision
    ar = pr @ side.basis if side.basis is not None else pr.new_zeros(n, 0)
    low = torch.addmm(pr, ar, side.basis.T, alpha=-1) if side.basis is not None else pr
    g_low = torch.mm(side.operand("lhs", low), side.low,
                     out=side.buffer("g_low", (n, width), side.gemm_dtype, x.device))
    nr = kernel.patch_norms(side.diagonals, rows)
    factor = kernel.output_factor()
    m = width if padded else len(cols)
    single = x_eps is None or not rows_moved
    if split and single:
        k = SplitBlock(*(side.buffer(f"k_{part}", (n, width), torch.bfloat16, x.device) for part in ("hi", "lo")))
    else:
        k = (side.buffer("k", (n, width), x.dtype, x.device),)
    if single:
        fused_op("single_split" if split else "single")(*k, ar, side.principal_t, g_low, nr, side.norms, side.scale,
                                                      factor, kernel.sigma_w2)
        k, _ = _exact_self_pairs(_leading_columns(k, m), None, rows, cols, side.diagonals, None)
        return k, None if x_eps is None else _moved_columns(kernel, pr, nr, ar, g_low, side)
    pre = kernel.patches(x_eps, row_set)
    # dG = P_d P_S^T + P_eps P_{d,S}^T, the second term on the moved columns only
    dg = torch.mm(side.operand("lhs_pair", pre - pr), side.patches,
                  out=side.buffer("dg", (n, width), side.gemm_dtype, x.device))
    dg_moved = torch.mm(side.operand("lhs_eps", pre), side.delta_moved,
                        out=side.buffer("dg_moved", (n, side.moved), side.gemm_dtype, x.device))
    nre = kernel.patch_norms(side.diagonals_eps, rows)
    dk = side.buffer("dk", (n, width), side.gemm_dtype, x.device)
    fused_op("pair")(*k, dk, ar, side.principal_t, g_low, dg, dg_moved, nr, side.norms, nre, side.norms_eps,
                   side.scale, factor, kernel.sigma_w2)
    return _exact_self_pairs(_leading_columns(k, m), dk[:, :m], rows, cols, side.diagonals, side.diagonals_eps)


def _moved_columns(kernel: CNNKernel, pr, nr, ar, g_low, side: ColumnSide) -> MovedColumns:
    """``K_eps - K`` on the first ``side.moved`` columns (those whose patches the perturbation
    may reach), for rows whose patches it misses: ``dG = P P_{d,S}^T`` there (exact zeros
    elsewhere, and no self-pairs: a row that is a moved column would have a moved patch itself)."""
    n, mv = len(nr), side.moved
    cols = torch.arange(mv, device=pr.device)
    if not mv:
        return MovedColumns(torch.zeros(n, 0, dtype=side.gemm_dtype, device=pr.device), cols)
    dg_moved = torch.mm(side.operand("lhs_moved", pr), side.delta_moved,
                        out=side.buffer("dg_moved", (n, mv), side.gemm_dtype, pr.device))
    k = side.buffer("k_moved", (n, mv), pr.dtype, pr.device)
    dk = side.buffer("dk_moved", (n, mv), side.gemm_dtype, pr.device)
    # contiguous copies, a zero P_d P_S^T and a distinct row-norm tensor (equal: the rows did not
    # move): the op then matches the full blocks' compiled variant; slices, an empty operand or an
    # alias would compile another.  It also recomputes K on these columns (into k_moved, unused),
    # which costs less than one more op would
    g_low = side.buffer("g_low_moved", (n, mv), g_low.dtype, pr.device).copy_(side.moved_part(g_low, 1))
    zero = side.buffer("dg_zero", (n, mv), side.gemm_dtype, pr.device).zero_()
    pt = side.moved_part(side.principal_t, 1).contiguous()
    fused_op("pair")(k, dk, ar, pt, g_low, zero, dg_moved, nr, side.moved_part(side.norms, 0), nr.clone(),
                   side.moved_part(side.norms_eps, 0), side.scale, kernel.output_factor(), kernel.sigma_w2)
    return MovedColumns(dk, cols)


def _exact_self_pairs(k, dk, rows, cols, diagonals, diagonals_eps):
    """Overwrite entries where a row pixel is a column pixel with the exact diagonal.

    There ``cos t = 1`` exactly, but a rounded Gram gives ``1 - delta`` and ``sin t`` has an
    infinite slope at 1, so float32 noise would otherwise dominate ``K_eps - K``.
    ``rows`` must be sorted.  Every column is written (its own value where it is no row), so
    that no data-dependent branch or index set stalls a GPU.
    """
    pos = torch.searchsorted(rows, cols).clamp(max=len(rows) - 1)
    hit = rows[pos] == cols
    ci = torch.arange(len(cols), device=cols.device)
    kd = diagonals[2].reshape(-1)[cols].to(torch.float32)
    for part, value in zip(k, split_bf16(kd)) if isinstance(k, SplitBlock) else ((k, kd.to(k.dtype)),):
        part[pos, ci] = torch.where(hit, value, part[pos, ci])
    if dk is not None:
        dkd = (diagonals_eps[2].reshape(-1)[cols].to(torch.float32) - kd).to(dk.dtype)
        dk[pos, ci] = torch.where(hit, dkd, dk[pos, ci])
    return k, dk
