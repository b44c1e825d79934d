"""Nyström eigenimages of an analytic CNN kernel (paper section 4.1).

``m`` anchor pixels ``S`` spread uniformly over the image give the columns ``C = K[:, S]`` and the
core ``W = K[S, S]``; with the top-``k`` eigenpairs ``W U = U Lambda``,
``B = C U Lambda^{-1/2}`` satisfies ``B B^T = C W_k^+ C^T ~ K``, and the eigendecomposition of
the small ``B^T B = V Sigma V^T`` gives orthonormal eigenimages ``Q = B V Sigma^{-1/2}`` with
eigenvalues ``Sigma``.  ``C`` is never stored: it is produced in row blocks that are multiplied by
``U Lambda^{-1/2}`` at once, so memory is ``O(d k + m^2 + block)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._heap import keeps_freed_memory
from ._input import cpu_flags
from .events import Progress
from .fast_blocks import ColumnSide, MovedColumns, SplitBlock, block_fast, columns, patch_basis
from .kernel_ops import fused_op
from .kernels import CNNKernel
from .twicing import twicing_factors, twicing_output

__all__ = ["LowRankFilter", "sample_anchors", "iter_nystrom", "light_set", "spectrum_knee", "falls_early",
           "NystromPass", "estimate_bytes"]

#: bytes of the largest temporary kernel block (rows x anchors, float32) computed at once on a CPU
BLOCK_BYTES = 48 * 2**20
#: the same on a GPU, where fewer and larger blocks keep the kernel launches few
GPU_BLOCK_BYTES = 512 * 2**20
#: vectors beyond the rank in the subspace of the anchor cores' eigen-solve
OVERSAMPLE = 32
#: the light Nystrom set (:func:`light_set`): spectrum floor relative to the largest eigenvalue, the
#: share of the rank below which the spectrum must reach it, and the image lines it is estimated on
LIGHT_FLOOR, LIGHT_KNEE, LIGHT_LINE_STEP = 2e-5, 0.65, 16


def block_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes of the largest temporary kernel block on ``device``."""
    return GPU_BLOCK_BYTES if torch.device(device).type == "cuda" else BLOCK_BYTES


def sample_anchors(shape: tuple[int, ...], m: int, seed: int = 0) -> np.ndarray:
    """Pick ``m`` anchor pixels spread uniformly: one random pixel per cell of a jittered grid.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)`` (or volume shape ``(Z, H, W)``).
    m : int
        Number of anchors, ``1 <= m <= prod(shape)``.
    seed : int
        Seed of the random jitter and of the choice of cells.

    Returns
    -------
    numpy.ndarray
        Sorted flat pixel indices, shape ``(m,)``.
    """
    d = math.prod(shape)
    if not 1 <= m <= d:
        raise ValueError(f"number of anchors must be in [1, {d}], got {m}")
    rng = np.random.default_rng(seed)
    if m == d:
        return np.arange(d)
    n = len(shape)
    grid = [max(1, min(s, int(np.ceil((m * s ** (n - 1) / (d // s)) ** (1 / n))))) for s in shape[:-1]]
    grid.append(max(1, min(shape[-1], int(np.ceil(m / math.prod(grid))))))
    while math.prod(grid) < m:  # rounding at the edges of tiny images: refine the last axis that can be
        axis = max(i for i in range(n) if grid[i] < shape[i])
        grid[axis] += 1
    cells = np.unravel_index(rng.choice(math.prod(grid), size=m, replace=False), grid)
    coords = []
    for s, g, cell in zip(shape, grid, cells):
        edges = np.linspace(0, s, g + 1).astype(int)
        coords.append(rng.integers(edges[cell], np.maximum(edges[cell + 1], edges[cell] + 1)))
    idx = np.unique(np.ravel_multi_index(tuple(coords), shape))
    if len(idx) < m:  # collapsed cells of very small images: top up at random
        rest = np.setdiff1d(np.arange(d), idx)
        idx = np.union1d(idx, rng.choice(rest, size=m - len(idx), replace=False))
    return idx


def _block_sizes(kernel: CNNKernel, m: int, d: int, device: torch.device | str = "cpu") -> tuple[int, int]:
    """Rows per block and anchors per chunk so that the largest temporary fits :func:`block_bytes`.

    Deep kernels evaluate lower layers on neighbourhoods of up to ``g = ((r-1)(L-2)+1)^2`` pixels
    per requested pixel, so both rows and anchors are chunked.
    """
    budget = block_bytes(device) // 4
    if kernel.depth == 2:
        return max(1, budget // m), m
    g = kernel.lower_neighbourhood
    side = max(1, int(np.sqrt(budget)) // g)
    return side, min(m, side)


def estimate_bytes(
    d: int, channels: int, m: int, rank: int, kernel: CNNKernel, keep_basis: bool = True,
    device: torch.device | str = "cpu",
) -> int:
    """Peak memory of one Nyström pass in bytes (float32), for the memory guard.

    Counts the eigenimages (``d x k``), the anchor core and its eigensolver workspace
    (``~4 m^2``), the block temporaries (``~4`` blocks of :func:`block_bytes` on ``device``),
    patches of the anchors and the image.
    """
    n_rows, chunk = _block_sizes(kernel, m, d, device)
    g = kernel.lower_neighbourhood
    block = n_rows * chunk * (1 if kernel.depth == 2 else g * g)
    patches = (m + n_rows) * channels * kernel.patch_size
    elems = d * rank * keep_basis + 4 * m * m + 4 * min(block, block_bytes(device) // 4) + patches + 8 * d * channels
    return 4 * int(elems) + m * (rank + 32) * 8


def _kernel_rows(
    kernel: CNNKernel, x: torch.Tensor, rows: torch.Tensor | range, sides: list[ColumnSide], padded: bool = False,
    rows_moved: bool = True, split: bool = False,
) -> tuple[torch.Tensor | SplitBlock, torch.Tensor | MovedColumns | None]:
    """``K[rows, anchors]`` (and ``K_eps - K``) over the anchor chunks described by ``sides``;
    ``padded``, ``rows_moved`` and ``split`` as in :func:`.fast_blocks.block_fast` (single chunk only)."""
    if len(sides) == 1:
        return block_fast(kernel, x, rows, sides[0], padded, rows_moved, split)
    parts = [block_fast(kernel, x, rows, side) for side in sides]
    k = torch.cat([p[0] for p in parts], dim=1)
    return k, None if parts[0][1] is None else torch.cat([p[1] for p in parts], dim=1)


def _reach(kernel: CNNKernel, x: torch.Tensor, x_eps: torch.Tensor | None) -> torch.Tensor | None:
    """Flat mask of the pixels whose patch the perturbation ``x_eps - x`` reaches (``None`` when
    there is no perturbation or the kernel is deep: its blocks are computed whole)."""
    if x_eps is None or kernel.depth > 2:
        return None
    return kernel.patch_mean((x_eps != x).any(0).to(x.dtype)).reshape(-1) > 0


def _row_blocks(d: int, w: int, n_rows: int, reach: torch.Tensor | None) -> list[tuple[int, int, bool]]:
    """Row blocks ``(start, stop, moved)`` of whole image rows (``w`` pixels), at most ``n_rows``
    pixels each, split where the perturbation's reach begins or ends: ``moved`` says whether it
    reaches the patch of any pixel of the block (always, without a ``reach`` mask).  Blocks laid
    over the image regardless of the probe's bands would nearly all meet a band, and so pay for the
    perturbed kernel on rows it does not reach (``benchmarks/bench_ntk.py`` times the difference).
    """
    if reach is None:
        return [(i, min(d, i + n_rows), True) for i in range(0, d, n_rows)]
    lines = reach.reshape(-1, w).any(1).cpu().numpy()
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(lines)) + 1, [len(lines)]]) * w
    return [(i, min(end, i + n_rows), bool(lines[start // w]))
            for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()) for i in range(start, end, n_rows)]


def _column_sides(kernel, x, s, diags, chunk, x_eps=None, diags_eps=None, gemm_dtype=torch.float32, basis=None):
    """One :class:`ColumnSide` per chunk of ``chunk`` anchors."""
    return [columns(kernel, x, s[j : j + chunk], diags, x_eps, diags_eps, gemm_dtype, basis)
            for j in range(0, len(s), chunk)]


def default_gemm_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where it is fast (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16
    flags = cpu_flags().split()
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


@functools.cache
def _has_float32_output_bf16_products(device: torch.device) -> bool:
    """Whether ``device`` has matrix products with a float32 output from bfloat16 inputs."""
    if device.type != "cuda":
        return False
    try:
        one = torch.ones(8, 8, dtype=torch.bfloat16, device=device)
        torch.mm(one, one, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


class _SplitProduct:
    """``a @ b`` for a float32 ``a`` and a bfloat16 ``b`` from two bfloat16 products,
    ``a_hi b + a_lo b``, so that ``a`` keeps ~16 significant bits (``b`` is exact).

    On a GPU the products have float32 outputs.  A CPU's bfloat16 products round their outputs to
    bfloat16, but each output is rounded relative to its own size after the cancellation inside
    the product, so the sum still carries ~16 significant bits of the cancelled result -- about
    what float32 keeps after summing ``m`` terms -- at ~4x the float32 speed (AVX512-BF16).
    """

    def __init__(self, b: torch.Tensor) -> None:
        self.b = b
        self.out_dtype = {"out_dtype": torch.float32} if _has_float32_output_bf16_products(b.device) else {}
        self.buffers: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < n:  # kept across blocks: fresh pages cost page faults on a CPU
            buf = self.buffers[name] = torch.empty((n, self.b.shape[1]), dtype=dtype, device=self.b.device)
        return buf[:n]

    def __call__(self, a: torch.Tensor | SplitBlock) -> torch.Tensor:
        """The product, in a buffer that the next call overwrites."""
        a_hi, a_lo = a if isinstance(a, SplitBlock) else fused_op("split")(a)
        if self.out_dtype:  # a GPU: float32 outputs, and its caching allocator reuses memory anyway
            return torch.mm(a_hi, self.b, **self.out_dtype).add_(torch.mm(a_lo, self.b, **self.out_dtype))
        n = a_hi.shape[0]
        hi = torch.mm(a_hi, self.b, out=self._buffer("hi", n, self.b.dtype))
        lo = torch.mm(a_lo, self.b, out=self._buffer("lo", n, self.b.dtype))
        return self._buffer("sum", n, torch.float32).copy_(hi).add_(lo)


class _Accumulator:
    """Streams ``B = C M`` row blocks into ``B^T B``, projections ``B^T v`` and optionally ``B``."""

    def __init__(self, proj_m: torch.Tensor, d: int, project: Sequence[torch.Tensor], keep_basis: bool,
                 fold: torch.Tensor | None = None) -> None:
        k, dev = proj_m.shape[1], proj_m.device
        self.fold = fold  # the rows added are B F^{-1}: B = (added rows) @ fold
        self.widths = [v.shape[1] for v in project]  # the images side by side: one product per block
        self.project = torch.cat([v.float() for v in project], dim=1) if project else torch.zeros(d, 0, device=dev)
        self.basis = torch.empty((d, k), dtype=torch.float32, device=dev) if keep_basis else None
        self.gram = torch.zeros(k, k, dtype=torch.float64, device=dev)
        self.bt_v = torch.zeros(k, self.project.shape[1], dtype=torch.float64, device=dev)

    def add(self, i0: int, i1: int, brows: torch.Tensor) -> None:
        self.gram += (brows.T @ brows).double()
        self.bt_v += (brows.T @ self.project[i0:i1]).double()
        if self.basis is not None:
            self.basis[i0:i1] = brows

    def finish(self, shape: tuple[int, ...], anchors: np.ndarray) -> NystromPass:
        """Eigendecompose ``B^T B = V S V^T``; eigenimages ``Q = B V S^{-1/2}`` (kept as ``B`` and the transform)."""
        gram, bt_v = self.gram, self.bt_v
        if self.fold is not None:
            gram, bt_v = self.fold.T @ gram @ self.fold, self.fold.T @ bt_v
        sig, vec = torch.linalg.eigh((gram + gram.T) / 2)
        sig, vec = sig.flip(0), vec.flip(1)
        good = sig > sig[0] * 1e-10
        sig, vec = sig[good], vec[:, good]
        transform = vec / sig.sqrt()  # k x k'
        rows, tr = None, None
        if self.basis is not None:  # Q = B (fold) V S^{-1/2}, formed only when the eigenimages themselves are asked for
            rows = self.basis
            tr = transform if self.fold is None else self.fold @ transform
        filt = LowRankFilter(rows=rows, transform=tr, eigenvalues=sig.cpu().numpy(), shape=shape,
                             anchors=np.asarray(anchors))
        return NystromPass(filter=filt, projections=list((transform.T @ bt_v).split(self.widths, dim=1)))


def _top_eigh(mat: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of symmetric PSD matrices ``(..., n, n)`` (descending), by Rayleigh-Ritz
    in float64 on a subspace of ``k + 32`` vectors shared by the whole batch.

    Up to 2048 the subspace is the leading eigenvectors of the first matrix, decomposed in float32
    (its entries are float32 already, and the full float64 decomposition costs several times as
    much); larger matrices get it by randomised subspace iteration (Halko, Martinsson & Tropp
    2011, alg. 4.4) with three power steps.  The start block is ``k + 32`` columns of the matrix
    picked at random (for a PSD matrix with a decaying spectrum they span its leading eigenspace
    about as well as a Gaussian sketch, without drawing ``n (k + 32)`` random numbers), and the
    iterates are orthonormalised by CholeskyQR (CholeskyQR2 for the last), which is matrix products
    only (fast on a GPU).  Sharing the subspace keeps the eigenpairs of a matrix and of its
    perturbed twin (Monte-Carlo SURE) a smooth function of both, so their difference is the
    perturbation's; below ``k + 32`` rows the decomposition is exact.
    """
    n, width = mat.shape[-1], k + OVERSAMPLE
    if n <= width:
        lam, vec = torch.linalg.eigh(mat.double())
        return lam.flip(-1)[..., :k], vec.flip(-1)[..., :k]
    if n <= 2048:
        first = mat if mat.ndim == 2 else mat.reshape(-1, n, n)[0]
        q = _orthonormalize(torch.linalg.eigh(first.float())[1][:, -width:].double(), passes=2)
        mat = mat.double()  # the Rayleigh-Ritz products in float64 for both cores alike
    else:
        pick = np.sort(np.random.default_rng(seed).choice(n, width, replace=False))
        q = _orthonormalize(mat[..., torch.as_tensor(pick, device=mat.device)], passes=1)
        for step in range(3):  # the iterates need only be well conditioned; the last one, orthonormal
            q = _orthonormalize(mat @ q, passes=2 if step == 2 else 1)
    q64 = q.double()
    small = q64.mT @ (mat @ q).double()
    lam, vec = torch.linalg.eigh((small + small.mT) / 2)
    vec = q64 @ vec.flip(-1)[..., :k]
    return lam.flip(-1)[..., :k], vec


def _orthonormalize(q: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Orthonormal basis of the columns of ``q`` (tall, full rank): CholeskyQR2 in float64 (one
    pass, CholeskyQR, leaves a well-conditioned basis), Householder QR where the Gram matrix is
    too ill-conditioned for Cholesky."""
    q64 = q.double()
    for _ in range(passes):
        r, info = torch.linalg.cholesky_ex(q64.mT @ q64, upper=True)
        if bool((info != 0).any()):
            return torch.linalg.qr(q)[0]
        q64 = torch.linalg.solve_triangular(r, q64, upper=True, left=False)
    return q64.to(q.dtype)


@dataclasses.dataclass
class LowRankFilter:
    """Low-rank non-local filter ``W = Q diag(lam / lam_max) Q^T`` of an image.

    The eigenimages ``Q = R T`` may be kept as rows ``R`` ``(d, k)`` and a small transform ``T``
    ``(k, k')``: filter outputs then cost ``d k`` per image, and ``Q`` itself (``d k k'``) is formed
    only when :attr:`basis` is read.

    Attributes
    ----------
    rows : torch.Tensor or None
        ``R``, ``(d, k)`` with ``d = prod(shape)``: the eigenimages when ``transform`` is ``None``
        (``None`` where they were dropped).
    transform : torch.Tensor or None
        ``T``, ``(k, k')``, or ``None`` where ``rows`` are the orthonormal eigenimages.
    eigenvalues : numpy.ndarray
        Kernel eigenvalues in descending order, ``(k',)``.
    shape : tuple of int
        Image shape ``(H, W)`` (or volume shape ``(Z, H, W)``).
    anchors : numpy.ndarray
        Flat indices of the Nyström anchors.
    """

    rows: torch.Tensor | None
    eigenvalues: np.ndarray
    shape: tuple[int, ...]
    anchors: np.ndarray
    transform: torch.Tensor | None = None

    @property
    def basis(self) -> torch.Tensor:
        """Orthonormal eigenimages as columns, ``(d, k')`` (formed once, in place of the rows)."""
        if self.transform is not None:
            rows, tr, step = self.rows, self.transform.to(self.rows.dtype), 4096
            for i0 in range(0, rows.shape[0], step):  # in place, block by block: no second d x k array
                rows[i0 : i0 + step, : tr.shape[1]] = rows[i0 : i0 + step] @ tr
            self.rows, self.transform = rows[:, : tr.shape[1]], None
        return self.rows

    def output(self, coeffs: torch.Tensor, t: float) -> torch.Tensor:
        """Twicing output ``z(t) = Q (f(t) * c)`` from coefficients ``c = Q^T y`` ``(k', C)``."""
        return twicing_output(self.rows, coeffs, twicing_factors(self.normalized_eigenvalues, t), self.transform)

    def on_host(self) -> LowRankFilter:
        """A copy in host memory."""
        return dataclasses.replace(self, rows=None if self.rows is None else self.rows.cpu(),
                                   transform=None if self.transform is None else self.transform.cpu())

    def without_eigenimages(self) -> LowRankFilter:
        """A copy without the ``d x k`` eigenimages (eigenvalues and anchors kept)."""
        return dataclasses.replace(self, rows=None, transform=None)

    @property
    def rank(self) -> int:
        """Number of eigenimages ``k``."""
        return int(self.eigenvalues.shape[0])

    @property
    def normalized_eigenvalues(self) -> np.ndarray:
        """Eigenvalues divided by the largest (the filter's, with step ``eta lam_max = 1``)."""
        return self.eigenvalues / self.eigenvalues[0]

    def eigenimages(self, n: int | None = None) -> np.ndarray:
        """Leading ``n`` eigenimages (all by default) as an ``(n, *shape)`` float32 array."""
        n = self.rank if n is None else min(int(n), self.rank)
        q = self.rows[:, :n] if self.transform is None else self.rows @ self.transform[:, :n].to(self.rows.dtype)
        return q.T.reshape(n, *self.shape).float().cpu().numpy()

    def weights(self, pixel: tuple[int, ...]) -> np.ndarray:
        """Filter weights of one pixel: row ``W[i, :]`` of the normalised filter, of the image's shape.

        Parameters
        ----------
        pixel : tuple of int
            ``(row, col)`` of the pixel (``(z, row, col)`` for a volume).
        """
        pos = tuple(int(v) for v in pixel)
        if len(pos) != len(self.shape) or not all(0 <= p < n for p, n in zip(pos, self.shape)):
            raise ValueError(f"pixel {pixel} is outside the image of shape {self.shape}")
        q_pixel = self.rows[int(np.ravel_multi_index(pos, self.shape))]  # Q's row of the pixel: Q (lam * Q[p])
        if self.transform is not None:
            q_pixel = q_pixel.to(self.transform.dtype) @ self.transform
        row = twicing_output(self.rows, q_pixel[:, None], self.normalized_eigenvalues, self.transform)
        return row.reshape(self.shape).float().cpu().numpy()

    def coefficients(self, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Coefficients ``Q^T y`` of an image of :attr:`shape`, with or without a trailing channel
        axis: ``(k, C)`` float64."""
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        yt = yt.to(self.rows.device, self.rows.dtype).reshape(math.prod(self.shape), -1)
        c = (self.rows.T @ yt).double()
        return c if self.transform is None else self.transform.T.double() @ c

    def apply(self, y: np.ndarray, t: float = 1.0) -> np.ndarray:
        """Twicing output ``z(t)`` of ``y`` (:attr:`shape`, optionally with channels last); ``t = 1`` is ``W y``."""
        y = np.asarray(y)
        z = self.output(self.coefficients(y), t)
        return z.reshape(y.shape).cpu().numpy().astype(np.result_type(y.dtype, np.float32), copy=False)


@dataclasses.dataclass
class NystromPass:
    """Result of one Nyström pass: the filter and projections ``Q^T v`` of requested images.

    ``perturbed_pixels`` (the perturbed pass only) counts the pixels whose kernel rows were
    computed with the perturbation; the others are those it cannot reach, which share the
    unperturbed rows.
    """

    filter: LowRankFilter
    projections: list[torch.Tensor]
    perturbed_pixels: int | None = None


def _core(sides: list[ColumnSide], kernel: CNNKernel, x: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Anchor cores ``[K[S, S]]`` (and ``K_eps[S, S]``) stacked ``(1 or 2, m, m)``, computed as the
    sweep computes the rows of ``K[:, S]`` (``sides``), symmetrised.  Rows go in sorted pixel order
    (:func:`.fast_blocks.block_fast` needs it for the exact self-pairs) and are put back in anchor order."""
    s = torch.cat([side.cols for side in sides])
    order = torch.argsort(s)
    paired = sides[0].x_eps is not None
    cores = torch.empty((1 + paired, len(s), len(s)), dtype=x.dtype, device=x.device)
    for i in range(0, len(s), n_rows):
        rows = order[i : i + n_rows]
        k, dk = _kernel_rows(kernel, x, s[rows], sides)
        cores[0, rows] = k
        if paired:
            cores[1, rows] = k + dk.to(x.dtype)
    return _symmetrize(cores, n_rows)


def _symmetrize(a: torch.Tensor, tile: int) -> torch.Tensor:
    """``(A + A^T) / 2`` of stacked square matrices in place, tile by tile (no transposed copy of
    the whole stack, which for the default anchor count costs as much as the symmetrisation)."""
    n = a.shape[-1]
    for i0 in range(0, n, tile):
        for j0 in range(i0, n, tile):
            upper, lower = a[:, i0 : i0 + tile, j0 : j0 + tile], a[:, j0 : j0 + tile, i0 : i0 + tile]
            mean = (upper + lower.mT).mul_(0.5)
            upper.copy_(mean)
            lower.copy_(mean.mT)
    return a


def _core_projections(cores: torch.Tensor, rank: int, seed: int) -> list[tuple]:
    """``M = U Lambda^{-1/2}`` of the top eigenpairs of each of the stacked cores (batched).

    The count ``k`` is the numerically meaningful part (``lambda > lambda_1 eps``, float32 ``eps``)
    of the first core's top ``rank``, and the same for all cores.  Entries rounded to float32 move
    the eigenvalues by at most ``||E||_2 <= eps ||K||_F``, about ``eps lambda_1`` for these spectra
    (Weyl).  The guided stage's spectrum decays fast, so a looser floor such as ``lambda_1 eps sqrt(m)``
    would drop eigenimages that carry signal (``benchmarks/bench_ntk.py`` measures the guided stage).
    Returns ``(U, lambda, M)`` per core.
    """
    lam, u = _top_eigh(cores, rank, seed)
    eps = torch.finfo(torch.float32).eps
    k = int((lam[0] > lam[0, 0] * eps).sum())
    out = []
    for lam_i, u_i in zip(lam[:, :k], u[:, :, :k]):
        lam_i = lam_i.clamp_min(lam_i[0] * eps)
        out.append((u_i, lam_i, (u_i / lam_i.sqrt()).float()))
    return out


def spectrum_knee(kernel: CNNKernel, x: torch.Tensor, anchors: np.ndarray, rank: int, diags: tuple | None = None
                  ) -> int | None:
    """Where the kernel's Nystrom spectrum falls below ``LIGHT_FLOOR`` times its largest eigenvalue.

    The spectrum of every other anchor (every fourth where half the set exceeds ``4 rank``) is
    estimated on every ``LIGHT_LINE_STEP``-th image line (more where that gives fewer than ``4 rank``
    rows).

    Parameters
    ----------
    kernel : CNNKernel
        Analytic kernel.
    x : torch.Tensor
        Kernel input ``(C, *spatial)``.
    anchors : numpy.ndarray
        The full anchor set (sorted flat indices).
    rank : int
        The requested rank.
    diags : tuple, optional
        ``kernel.diagonals(x)``, when the caller has them already.

    Returns
    -------
    int or None
        The number of eigenvalues above the floor; ``rank`` where the spectrum is not measured to
        fall below it; ``None`` where half the anchors cannot speak for the whole set (half of
        them no more than ``rank``, or more than ``8 rank``).
    """
    half = np.asarray(anchors)[::2]
    step = -(-len(half) // (4 * rank))
    if len(half) <= rank or step > 2:
        return None
    d, w, dev = math.prod(x.shape[1:]), x.shape[-1], x.device
    s = torch.as_tensor(np.ascontiguousarray(half[::step]), device=dev, dtype=torch.long)
    n_rows, chunk = _block_sizes(kernel, len(s), d, dev)
    sides = _column_sides(kernel, x, s, kernel.diagonals(x) if diags is None else diags, chunk)
    lam, u = torch.linalg.eigh(_core(sides, kernel, x, n_rows)[0])  # float32: its errors only raise the tail
    keep = lam > lam[-1] * torch.finfo(torch.float32).eps
    proj_m = (u[:, keep] / lam[keep].sqrt())[:, -rank:]
    n_lines = d // w
    line_step = max(1, min(LIGHT_LINE_STEP, n_lines * w // (4 * rank)))  # at least ~4 rank rows
    lines = torch.arange(line_step // 2, n_lines, line_step, device=dev)
    rows = (lines[:, None] * w + torch.arange(w, device=dev)).reshape(-1)
    gram = torch.zeros(proj_m.shape[1], proj_m.shape[1], device=dev)
    for i in range(0, len(rows), n_rows):
        b = _kernel_rows(kernel, x, rows[i : i + n_rows], sides)[0] @ proj_m
        gram += b.T @ b
    sig = torch.linalg.eigvalsh(gram)
    knee = int((sig > sig[-1] * LIGHT_FLOOR).sum())
    return knee if sig[-1] > 0 and knee < len(sig) else rank


def falls_early(knee: int | None, rank: int) -> bool:
    """Whether a :func:`spectrum_knee` says the spectrum falls within ``LIGHT_KNEE`` of the rank."""
    return knee is not None and knee <= LIGHT_KNEE * rank


def light_set(kernel: CNNKernel, x: torch.Tensor, anchors: np.ndarray, rank: int, diags: tuple | None = None
              ) -> tuple[np.ndarray, int] | None:
    """Every other anchor and a lower rank, when the kernel's spectrum allows them.

    When the spectrum (:func:`spectrum_knee`) falls below ``LIGHT_FLOOR`` times its largest
    eigenvalue within the first ``LIGHT_KNEE * rank`` eigenvalues (a kernel of low effective rank,
    as on grey natural images and fluorescence microscopy), the eigenimages beyond keep filter
    factors near zero unless twicing runs for ``~1 / LIGHT_FLOOR`` steps, and half the anchors
    still outnumber the eigenimages that matter: the light set keeps them and ``OVERSAMPLE`` more.

    Parameters are those of :func:`spectrum_knee`.

    Returns
    -------
    tuple or None
        ``(anchors, rank)`` of the light set, or ``None`` to keep the full set.
    """
    knee = spectrum_knee(kernel, x, anchors, rank, diags)
    if not falls_early(knee, rank):
        return None
    return np.asarray(anchors)[::2], min(rank, knee + OVERSAMPLE)


@keeps_freed_memory
def iter_nystrom(
    kernel: CNNKernel,
    x: torch.Tensor,
    anchors: np.ndarray,
    rank: int,
    project: Sequence[torch.Tensor] = (),
    keep_basis: bool = True,
    stage: str = "kernel",
    seed: int = 0,
    x_eps: torch.Tensor | None = None,
    project_eps: Sequence[torch.Tensor] = (),
    keep_basis_eps: bool = False,
    gemm_dtype: torch.dtype | None = None,
    light: bool = False,
) -> Generator[Progress, None, tuple[NystromPass, NystromPass | None]]:
    """Top-``rank`` Nyström eigenimages of ``kernel`` on ``x`` (and on a perturbed ``x_eps``).

    Parameters
    ----------
    kernel : CNNKernel
        Analytic kernel.
    x : torch.Tensor
        Kernel input image ``(C, H, W)`` (volume ``(C, Z, H, W)`` for a 3-D kernel), float32, on the
        compute device.
    anchors : numpy.ndarray
        Flat anchor indices (see :func:`sample_anchors`).
    rank : int
        Maximal number of eigenimages (fewer when the spectrum is numerically exhausted).
    project : sequence of torch.Tensor
        Images ``(d, C')`` whose coefficients ``Q^T v`` are accumulated during the pass.
    keep_basis : bool
        Store the ``d x k`` eigenimages (``False`` saves memory; projections stay exact).
    stage : str
        Name used in the :class:`Progress` events.
    seed : int
        Seed of the randomised eigensolver.
    x_eps : torch.Tensor, optional
        A slightly perturbed input (Monte-Carlo SURE).  Both filters are computed in the same
        sweep, the perturbed one as the unperturbed plus separately computed differences, so that
        ``Q_eps Q_eps^T - Q Q^T`` is accurate even with bfloat16 matrix products.
    project_eps, keep_basis_eps
        As ``project`` and ``keep_basis`` for the perturbed filter.
    gemm_dtype : torch.dtype, optional
        Precision of the large matrix products (default :func:`default_gemm_dtype`).
    light : bool
        Use the light set of :func:`light_set` (half the anchors, a lower rank) where the kernel's
        spectrum allows it; both filters share the choice, made on ``x``.

    Yields
    ------
    Progress
        One event per row block.

    Returns
    -------
    tuple of NystromPass
        The filter of ``x`` and, with ``x_eps``, of ``x_eps`` (else ``None``).
    """
    shape = tuple(x.shape[1:])
    d, w = math.prod(shape), shape[-1]
    dev = x.device
    gemm_dtype = default_gemm_dtype(dev) if gemm_dtype is None else gemm_dtype
    diags = kernel.diagonals(x)
    if light:
        yield Progress(stage, 0, 1, "kernel spectrum")
        anchors, rank = light_set(kernel, x, anchors, rank, diags) or (anchors, rank)
    s = torch.as_tensor(anchors, device=dev, dtype=torch.long)
    reach = _reach(kernel, x, x_eps)
    if reach is not None:  # anchors the perturbation reaches first: their kernel changes are one slice
        s = s[torch.argsort((~reach[s]).to(torch.uint8), stable=True)]
    diags_eps = None if x_eps is None else kernel.diagonals(x_eps)
    n_rows, chunk = _block_sizes(kernel, len(s), d, dev)
    n_rows = max(w, n_rows // w * w)  # whole image rows: patches unfold from a band
    blocks = _row_blocks(d, w, n_rows, reach)
    total = len(blocks) + 1
    yield Progress(stage, 0, total, "anchor kernel")
    basis = patch_basis(kernel, x, s) if gemm_dtype not in (torch.float32, torch.float64) else None
    sides = _column_sides(kernel, x, s, diags, chunk, x_eps, diags_eps, gemm_dtype, basis)
    sweep = _Sweep.prepare(sides, kernel, x, n_rows, rank, seed, gemm_dtype, (project, keep_basis),
                           (project_eps, keep_basis_eps) if x_eps is not None else None)
    yield Progress(stage, 1, total, "kernel columns")
    for b, (i0, i1, moved) in enumerate(blocks):
        sweep.add_rows(kernel, x, i0, i1, moved)
        yield Progress(stage, b + 2, total, f"kernel rows {i1}/{d}")
    main, pert = sweep.main, sweep.pert
    first = main.finish(shape, anchors)
    if pert is None:
        return first, None
    second = pert.finish(shape, anchors)
    second.perturbed_pixels = sum(i1 - i0 for i0, i1, moved in blocks if moved)
    return first, second


@dataclasses.dataclass
class _Sweep:
    """The row sweep: every block of kernel rows ``C`` becomes ``B = C M`` in the accumulator
    (and, with a perturbed input, ``B_eps`` from ``B`` and the kernel's change)."""

    sides: list[ColumnSide]
    main: _Accumulator
    product: Callable[[torch.Tensor], torch.Tensor]
    split: bool
    pert: _Accumulator | None = None
    from_main: torch.Tensor | None = None
    m_eps_low: torch.Tensor | None = None
    m_eps_moved: torch.Tensor | None = None

    @classmethod
    def prepare(cls, sides: list[ColumnSide], kernel: CNNKernel, x: torch.Tensor, n_rows: int, rank: int, seed: int,
                gemm_dtype: torch.dtype, project: tuple, project_eps: tuple | None) -> _Sweep:
        """Eigen-solve the anchors' core (and its perturbed twin) and set up the products."""
        dev, d = x.device, math.prod(x.shape[1:])
        cores = _core(sides, kernel, x, n_rows)
        projections = _core_projections(cores, rank, seed)
        del cores
        u, lam, proj_m = projections[0]  # m x k
        k = proj_m.shape[1]
        # C D for a small m x k change D is kept in the span of U, where it is B Lambda^{1/2} U^T D:
        # the part of C orthogonal to the core's top-k eigenvectors times a small D is second order
        to_span = (u * lam.sqrt()).T  # k x m
        split = gemm_dtype == torch.bfloat16
        fold = None
        if split:  # B = C M from M rounded to bfloat16: C M_hi = B (I - Lambda^{1/2} U^T (M - M_hi)), undone at the end
            m_hi = proj_m.to(torch.bfloat16)
            eye = torch.eye(k, dtype=torch.float64, device=dev)
            fold = torch.linalg.inv(eye - to_span @ (proj_m - m_hi.to(proj_m.dtype)).double())
        sides = [side.reuse_buffers() for side in sides]
        m = proj_m.shape[0]
        pad = (0, 0, 0, (sides[0].width if len(sides) == 1 else m) - m)  # zero rows meet zero columns
        product = _SplitProduct(F.pad(m_hi, pad)) if split else functools.partial(torch.mm, mat2=F.pad(proj_m, pad))
        sweep = cls(sides, _Accumulator(proj_m, d, *project, fold), product, split)
        if project_eps is not None:
            proj_eps = projections[1][2]
            sweep.pert = _Accumulator(proj_eps, d, *project_eps)
            # B_eps = B (I + Lambda^{1/2} U^T (M_eps - M)) + (C_eps - C) M_eps, B = (rows added to main) fold
            from_main = torch.eye(k, dtype=torch.float64, device=dev) + to_span @ (proj_eps - proj_m).double()
            sweep.from_main = (from_main if fold is None else fold @ from_main).to(x.dtype)
            sweep.m_eps_low = F.pad(proj_eps.to(gemm_dtype), pad)
            if sides[0].moved is not None:  # None for deep kernels (never MovedColumns)
                sweep.m_eps_moved = sides[0].moved_part(sweep.m_eps_low, 0)
        return sweep

    def add_rows(self, kernel: CNNKernel, x: torch.Tensor, i0: int, i1: int, moved: bool) -> None:
        """Add the products of kernel rows ``i0:i1``."""
        kr, dk = _kernel_rows(kernel, x, range(i0, i1), self.sides, padded=True, rows_moved=moved, split=self.split)
        brows = self.product(kr)  # C's ~16 bits kept: the trailing eigen-directions cancel strongly
        self.main.add(i0, i1, brows)
        if self.pert is not None:
            # (C_eps - C) M_eps is small, so its product may round coarsely without spoiling B_eps - B
            if isinstance(dk, MovedColumns):
                delta = (dk.values @ self.m_eps_moved).to(x.dtype)
            else:
                delta = (dk.to(self.m_eps_low.dtype) @ self.m_eps_low).to(x.dtype)
            self.pert.add(i0, i1, delta.addmm_(brows, self.from_main))
