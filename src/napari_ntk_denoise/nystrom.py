"""Nyström eigenimages of an analytic CNN kernel (paper section 4.1).

``m`` anchor pixels ``S`` spread uniformly over the image give the columns ``C = K[:, S]`` and the
core ``W = K[S, S]``; with the top-``k`` eigenpairs ``W U = U Lambda``,
``B = C U Lambda^{-1/2}`` satisfies ``B B^T = C W_k^+ C^T ~ K``, and the eigendecomposition of
the small ``B^T B = V Sigma V^T`` gives orthonormal eigenimages ``Q = B V Sigma^{-1/2}`` with
eigenvalues ``Sigma``.  ``C`` is never stored: it is produced in row blocks that are multiplied by
``U Lambda^{-1/2}`` at once, so memory is ``O(d k + m^2 + block)``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .events import Progress
from .kernels import CNNKernel
from .twicing import twicing_factors, twicing_output

__all__ = ["LowRankFilter", "sample_anchors", "iter_nystrom", "NystromPass", "estimate_bytes"]

#: bytes of the largest temporary kernel block (rows x anchors, float32) computed at once
BLOCK_BYTES = 48 * 2**20


def sample_anchors(shape: tuple[int, int], m: int, seed: int = 0) -> np.ndarray:
    """Pick ``m`` anchor pixels spread uniformly: one random pixel per cell of a jittered grid.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``.
    m : int
        Number of anchors, ``1 <= m <= H * W``.
    seed : int
        Seed of the random jitter and of the choice of cells.

    Returns
    -------
    numpy.ndarray
        Sorted flat pixel indices, shape ``(m,)``.
    """
    h, w = shape
    d = h * w
    if not 1 <= m <= d:
        raise ValueError(f"number of anchors must be in [1, {d}], got {m}")
    rng = np.random.default_rng(seed)
    if m == d:
        return np.arange(d)
    gh = max(1, min(h, int(np.ceil(np.sqrt(m * h / w)))))
    gw = max(1, min(w, int(np.ceil(m / gh))))
    while gh * gw < m:  # rounding at the edges of tiny images
        gw, gh = min(w, gw + 1), min(h, gh + (gw == w))
    ye = np.linspace(0, h, gh + 1).astype(int)
    xe = np.linspace(0, w, gw + 1).astype(int)
    cy, cx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    cells = rng.choice(gh * gw, size=m, replace=False)
    cy, cx = cy.reshape(-1)[cells], cx.reshape(-1)[cells]
    ys = rng.integers(ye[cy], np.maximum(ye[cy + 1], ye[cy] + 1))
    xs = rng.integers(xe[cx], np.maximum(xe[cx + 1], xe[cx] + 1))
    idx = np.unique(ys * w + xs)
    if len(idx) < m:  # collapsed cells of very small images: top up at random
        rest = np.setdiff1d(np.arange(d), idx)
        idx = np.union1d(idx, rng.choice(rest, size=m - len(idx), replace=False))
    return idx


def _block_sizes(kernel: CNNKernel, m: int, d: int) -> tuple[int, int]:
    """Rows per block and anchors per chunk so that the largest temporary fits ``BLOCK_BYTES``.

    Deep kernels evaluate lower layers on neighbourhoods of up to ``g = ((r-1)(L-2)+1)^2`` pixels
    per requested pixel, so both rows and anchors are chunked.
    """
    budget = BLOCK_BYTES // 4
    if kernel.depth == 2:
        return max(1, budget // m), m
    g = ((kernel.kernel_size - 1) * (kernel.depth - 2) + 1) ** 2
    side = max(1, int(np.sqrt(budget)) // g)
    return side, min(m, side)


def estimate_bytes(d: int, channels: int, m: int, rank: int, kernel: CNNKernel, keep_basis: bool = True) -> int:
    """Peak memory of one Nyström pass in bytes (float32), for the memory guard.

    Counts the eigenimages (``d x k``), the anchor core and its eigensolver workspace
    (``~4 m^2``), the block temporaries (``~4`` blocks), patches of the anchors and the image.
    """
    n_rows, chunk = _block_sizes(kernel, m, d)
    g = ((kernel.kernel_size - 1) * (kernel.depth - 2) + 1) ** 2
    block = n_rows * chunk * (1 if kernel.depth == 2 else g * g)
    patches = (m + n_rows) * channels * kernel.kernel_size**2
    elems = d * rank * keep_basis + 4 * m * m + 4 * min(block, BLOCK_BYTES // 4) + patches + 8 * d * channels
    return 4 * int(elems) + m * (rank + 32) * 8


def _kernel_rows(
    kernel: CNNKernel,
    x: torch.Tensor,
    rows: torch.Tensor,
    anchors: torch.Tensor,
    diags: tuple,
    chunk: int,
    x_eps: torch.Tensor | None = None,
    diags_eps: tuple | None = None,
    gemm_dtype: torch.dtype = torch.float32,
    basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``K[rows, anchors]`` (and ``K_eps - K``), evaluated ``chunk`` anchors at a time."""
    parts = [
        kernel.block_fast(x, rows, anchors[j : j + chunk], diags, x_eps, diags_eps, gemm_dtype, basis)
        for j in range(0, len(anchors), chunk)
    ]
    if len(parts) == 1:
        return parts[0]
    k = torch.cat([p[0] for p in parts], dim=1)
    return k, None if x_eps is None else torch.cat([p[1] for p in parts], dim=1)


def default_gemm_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where it is fast (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read(65536)
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


class _Accumulator:
    """Streams ``B = C M`` row blocks into ``B^T B``, projections ``B^T v`` and optionally ``B``."""

    def __init__(self, proj_m: torch.Tensor, d: int, project: Sequence[torch.Tensor], keep_basis: bool) -> None:
        k, dev = proj_m.shape[1], proj_m.device
        self.proj_m, self.project = proj_m, list(project)
        self.basis = torch.empty((d, k), dtype=torch.float32, device=dev) if keep_basis else None
        self.gram = torch.zeros(k, k, dtype=torch.float64, device=dev)
        self.bt_v = [torch.zeros(k, v.shape[1], dtype=torch.float64, device=dev) for v in project]

    def add(self, i0: int, i1: int, brows: torch.Tensor) -> None:
        self.gram += (brows.T @ brows).double()
        for acc, v in zip(self.bt_v, self.project):
            acc += (brows.T @ v[i0:i1].to(brows.dtype)).double()
        if self.basis is not None:
            self.basis[i0:i1] = brows

    def finish(self, shape: tuple[int, int], anchors: np.ndarray, n_rows: int) -> NystromPass:
        """Eigendecompose ``B^T B = V S V^T``; eigenimages ``Q = B V S^{-1/2}`` (in place)."""
        sig, vec = torch.linalg.eigh((self.gram + self.gram.T) / 2)
        sig, vec = sig.flip(0), vec.flip(1)
        good = sig > sig[0] * 1e-10
        sig, vec = sig[good], vec[:, good]
        transform = vec / sig.sqrt()  # k x k'
        basis = torch.empty(0, transform.shape[1])
        if self.basis is not None:
            basis, tr = self.basis, transform.to(self.basis.dtype)
            for i0 in range(0, basis.shape[0], n_rows):
                basis[i0 : i0 + n_rows, : tr.shape[1]] = basis[i0 : i0 + n_rows] @ tr
            basis = basis[:, : tr.shape[1]]
        filt = LowRankFilter(basis=basis, eigenvalues=sig.cpu().numpy(), shape=shape, anchors=np.asarray(anchors))
        return NystromPass(filter=filt, projections=[transform.T @ acc for acc in self.bt_v])


def _top_eigh(mat: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of a symmetric PSD matrix (descending), exact or randomised.

    Matrices up to 2048 are decomposed exactly in float64; larger ones by randomised subspace
    iteration (Halko, Martinsson & Tropp 2011, alg. 4.4) with ``k + 32`` vectors and three power
    steps, then Rayleigh-Ritz in float64.
    """
    n = mat.shape[0]
    if n <= 2048:
        lam, vec = torch.linalg.eigh(mat.double())
        return lam.flip(0)[:k], vec.flip(1)[:, :k]
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n, min(n, k + 32), generator=g, dtype=mat.dtype).to(mat.device)
    for _ in range(3):
        q, _ = torch.linalg.qr(mat @ q)
    q64 = q.double()
    small = q64.T @ (mat @ q).double()
    lam, vec = torch.linalg.eigh((small + small.T) / 2)
    vec = q64 @ vec.flip(1)[:, :k]
    return lam.flip(0)[:k], vec


@dataclass
class LowRankFilter:
    """Low-rank non-local filter ``W = Q diag(lam / lam_max) Q^T`` of an image.

    Attributes
    ----------
    basis : torch.Tensor
        Orthonormal eigenimages as columns, ``(H*W, k)``.
    eigenvalues : numpy.ndarray
        Kernel eigenvalues in descending order, ``(k,)``.
    shape : tuple of int
        Image shape ``(H, W)``.
    anchors : numpy.ndarray
        Flat indices of the Nyström anchors.
    """

    basis: torch.Tensor
    eigenvalues: np.ndarray
    shape: tuple[int, int]
    anchors: np.ndarray

    @property
    def rank(self) -> int:
        """Number of eigenimages ``k``."""
        return int(self.eigenvalues.shape[0])

    @property
    def normalized_eigenvalues(self) -> np.ndarray:
        """Eigenvalues divided by the largest (the filter's, with step ``eta lam_max = 1``)."""
        return self.eigenvalues / self.eigenvalues[0]

    def eigenimages(self, n: int | None = None) -> np.ndarray:
        """Leading ``n`` eigenimages (all by default) as an ``(n, H, W)`` float32 array."""
        n = self.rank if n is None else min(int(n), self.rank)
        return self.basis[:, :n].T.reshape(n, *self.shape).float().cpu().numpy()

    def weights(self, pixel: tuple[int, int]) -> np.ndarray:
        """Filter weights of one pixel: row ``W[i, :]`` of the normalised filter as ``(H, W)``.

        Parameters
        ----------
        pixel : tuple of int
            ``(row, col)`` of the pixel.
        """
        r, c = (int(v) for v in pixel)
        h, w = self.shape
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"pixel {pixel} is outside the image of shape {self.shape}")
        lam = torch.as_tensor(self.normalized_eigenvalues, dtype=self.basis.dtype, device=self.basis.device)
        row = self.basis @ (lam * self.basis[r * w + c])
        return row.reshape(h, w).float().cpu().numpy()

    def coefficients(self, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Coefficients ``Q^T y`` of an image ``(H, W)`` or ``(H, W, C)``: ``(k, C)`` float64."""
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        yt = yt.to(self.basis.device, self.basis.dtype).reshape(self.shape[0] * self.shape[1], -1)
        return (self.basis.T @ yt).double()

    def apply(self, y: np.ndarray, t: float = 1.0) -> np.ndarray:
        """Twicing output ``z(t)`` of ``y`` (``(H, W)`` or ``(H, W, C)``); ``t = 1`` is ``W y``."""
        y = np.asarray(y)
        z = twicing_output(self.basis, self.coefficients(y), twicing_factors(self.normalized_eigenvalues, t))
        return z.reshape(y.shape).cpu().numpy().astype(np.result_type(y.dtype, np.float32), copy=False)


@dataclass
class NystromPass:
    """Result of one Nyström pass: the filter and projections ``Q^T v`` of requested images."""

    filter: LowRankFilter
    projections: list[torch.Tensor]


def _core(kernel, x, s, diags, n_rows, chunk, x_eps=None, diags_eps=None):
    """Anchor core ``K[S, S]`` (and ``K_eps[S, S]``) in the input precision, symmetrised."""
    parts = [_kernel_rows(kernel, x, s[i : i + n_rows], s, diags, chunk, x_eps, diags_eps) for i in range(0, len(s), n_rows)]
    core = torch.cat([p[0] for p in parts])
    core_eps = None if x_eps is None else core + torch.cat([p[1] for p in parts])
    sym = [(c + c.T) / 2 if c is not None else None for c in (core, core_eps)]
    return sym[0], sym[1]


def _core_projection(core: torch.Tensor, rank: int, seed: int, k: int | None = None) -> tuple:
    """``M = U Lambda^{-1/2}`` of the top eigenpairs of a core; ``k`` fixes the count, else the
    numerically meaningful part (``lambda > lambda_1 eps sqrt(m)``) of the top ``rank`` is kept."""
    lam, u = _top_eigh(core, rank if k is None else k, seed)
    if k is None:
        k = int((lam > lam[0] * torch.finfo(torch.float32).eps * core.shape[0] ** 0.5).sum())
    lam, u = lam[:k].clamp_min(lam[0] * torch.finfo(torch.float32).eps), u[:, :k]
    return u, lam, (u / lam.sqrt()).float()


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
) -> Generator[Progress, None, tuple[NystromPass, NystromPass | None]]:
    """Top-``rank`` Nyström eigenimages of ``kernel`` on ``x`` (and on a perturbed ``x_eps``).

    Parameters
    ----------
    kernel : CNNKernel
        Analytic kernel.
    x : torch.Tensor
        Kernel input image ``(C, H, W)``, float32, on the compute device.
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

    Yields
    ------
    Progress
        One event per row block.

    Returns
    -------
    tuple of NystromPass
        The filter of ``x`` and, with ``x_eps``, of ``x_eps`` (else ``None``).
    """
    _, h, w = x.shape
    d = h * w
    dev = x.device
    gemm_dtype = default_gemm_dtype(dev) if gemm_dtype is None else gemm_dtype
    s = torch.as_tensor(anchors, device=dev, dtype=torch.long)
    diags = kernel.diagonals(x)
    diags_eps = None if x_eps is None else kernel.diagonals(x_eps)
    n_rows, chunk = _block_sizes(kernel, len(s), d)
    blocks = [(i, min(d, i + n_rows)) for i in range(0, d, n_rows)]
    total = len(blocks) + 1
    yield Progress(stage, 0, total, "anchor kernel")
    core, core_eps = _core(kernel, x, s, diags, n_rows, chunk, x_eps, diags_eps)
    u, lam, proj_m = _core_projection(core, rank, seed)  # m x k
    k = proj_m.shape[1]
    main = _Accumulator(proj_m, d, project, keep_basis)
    pert = None
    if x_eps is not None:
        proj_eps = _core_projection(core_eps, rank, seed, k)[2]
        pert = _Accumulator(proj_eps, d, project_eps, keep_basis_eps)
        # C (M_eps - M) is kept in the span of U, where it is B Lambda^{1/2} U^T (M_eps - M): the
        # part orthogonal to the core's top-k eigenvectors is second order (small C residual times
        # small dM) and measured not to move the SURE minimum (see benchmarks/bench_ntk.py notes).
        in_span = ((u * lam.sqrt()).T @ (proj_eps - proj_m).double()).to(x.dtype)
        m_eps_low = proj_eps.to(gemm_dtype)
    del core, core_eps
    basis = kernel.patch_basis(x, s) if gemm_dtype not in (torch.float32, torch.float64) else None
    yield Progress(stage, 1, total, "kernel columns")
    for b, (i0, i1) in enumerate(blocks):
        rows = torch.arange(i0, i1, device=dev)
        kr, dk = _kernel_rows(kernel, x, rows, s, diags, chunk, x_eps, diags_eps, gemm_dtype, basis)
        brows = kr @ proj_m  # float32: the trailing eigen-directions cancel strongly
        main.add(i0, i1, brows)
        if pert is not None:
            # B_eps = C_eps M_eps = C M + (C_eps - C) M_eps + C (M_eps - M); the deltas are small, so
            # their products may round coarsely without spoiling the difference B_eps - B
            delta = (dk.to(gemm_dtype) @ m_eps_low).to(x.dtype)
            pert.add(i0, i1, delta.add_(brows).addmm_(brows, in_span))
        del kr, dk, brows
        yield Progress(stage, b + 2, total, f"kernel rows {i1}/{d}")
    first = main.finish((h, w), anchors, n_rows)
    return first, None if pert is None else pert.finish((h, w), anchors, n_rows)
