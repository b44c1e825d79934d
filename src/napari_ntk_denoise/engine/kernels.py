"""Closed-form kernels of the vanilla ReLU CNN (paper eqs. 11-16), evaluated block by block.

The kernel of a network with ``L`` weight layers (see :mod:`napari_ntk_denoise.engine.networks` for the
architecture and parameterisation) is built by the recursion

.. math::

    \\Sigma^1 = \\sigma_w^2 \\, \\mathcal{A}(x x^T) / C, \\qquad \\Theta^1 = \\Sigma^1,

    \\Sigma^\\ell = \\mathcal{A}(V(\\Sigma^{\\ell-1})), \\qquad
    \\Theta^\\ell = \\Sigma^\\ell + \\mathcal{A}(V'(\\Sigma^{\\ell-1}) \\circ \\Theta^{\\ell-1})
    \\quad (\\ell = 2, \\dots, L-1),

and the ``1 x 1`` output layer gives ``K = V(Sigma^{L-1}) + V'(Sigma^{L-1}) o Theta^{L-1}``
(``kind="ntk"``, every layer trained) or ``K = V(Sigma^{L-1})`` (``kind="nngp"``, output layer
only; this is the paper's eq. 12/16 for ``L = 2``).  ``A`` averages over the ``r x r`` offsets,
the same offset on both sides, with reflected indices at the border; ``V`` and ``V'`` are the
arc-cosine (ReLU) expectations scaled by ``sigma_w^2``.

A column of a deep kernel needs neighbourhoods of columns at lower layers; :class:`CNNKernel`
evaluates any block ``K[rows, cols]`` by expanding both index sets layer by layer, so that memory
is bounded by the block size rather than by ``d x d``.  This recursion is the reference; the Nystrom
sweep computes depth-2 blocks by the fused products of :mod:`.fast_blocks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["CNNKernel", "relu_expectations"]


def relu_expectations(
    sigma: torch.Tensor, diag_rows: torch.Tensor, diag_cols: torch.Tensor, sigma_w2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc-cosine maps ``V(Sigma)`` and ``V'(Sigma)`` of the ReLU (paper eqs. 14-15).

    Parameters
    ----------
    sigma : torch.Tensor
        Block ``Sigma[rows, cols]`` of a covariance.
    diag_rows, diag_cols : torch.Tensor
        ``Sigma_ii`` for the rows and ``Sigma_jj`` for the columns.
    sigma_w2 : float
        Weight variance factor multiplying both expectations.

    Returns
    -------
    V, Vprime : torch.Tensor
        ``sigma_w^2/(2 pi) sqrt(S_ii S_jj) (sin t + (pi - t) cos t)`` and
        ``sigma_w^2/(2 pi) (pi - t)`` with ``t = arccos(S_ij / sqrt(S_ii S_jj))``.
    """
    nr = diag_rows.clamp_min(0).sqrt()
    nc = diag_cols.clamp_min(0).sqrt()
    norm = nr[:, None] * nc[None, :]
    rho = (sigma / norm.clamp_min(torch.finfo(sigma.dtype).tiny)).clamp(-1.0, 1.0)
    theta = torch.acos(rho)
    s = sigma_w2 / (2 * math.pi)
    vprime = s * (math.pi - theta)
    v = s * norm * (torch.sqrt((1 - rho * rho).clamp_min(0)) + (math.pi - theta) * rho)
    return v, vprime


def _reflect(v: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect indices into ``[0, n)`` without repeating the edge (torch's ``reflect`` mode)."""
    v = torch.where(v < 0, -v, v)
    return torch.where(v >= n, 2 * (n - 1) - v, v)


@dataclass(frozen=True)
class CNNKernel:
    """Analytic kernel of the vanilla ReLU CNN of :class:`~napari_ntk_denoise.engine.networks.VanillaCNN`.

    Parameters
    ----------
    depth : int
        Number of weight layers ``L >= 2``.
    kernel_size : int
        Odd convolution size ``r`` along Y and X (3 to 15 are typical).
    kind : {"ntk", "nngp"}
        Full neural tangent kernel, or the output-layer-only (NNGP) kernel of eq. 12/16.
    sigma_w2 : float
        He factor ``sigma_w^2``.
    ndim : {2, 3}
        Spatial dimensions of the convolutions: 2 (images ``(C, H, W)``) or 3 (volumes
        ``(C, Z, H, W)``, the kernel of a CNN with ``r_z x r x r`` convolutions: 3-D patches).
    kernel_size_z : int, optional
        Odd convolution size ``r_z`` along Z for ``ndim=3`` (default ``kernel_size``).

    Notes
    -----
    For ``L = 2`` and ``sigma_w^2 = 2`` the NTK between patches ``p, q`` is
    ``|p||q|/pi (sin t + 2 (pi - t) cos t) * 2/(r^2 C)`` and the NNGP kernel is eq. 16 of
    Tachella et al. (2021), ``|p||q|/pi (sin t + (pi - t) cos t)``, up to the same constant.
    In 3-D every ``r^2`` becomes ``r_z r^2``; the recursion is otherwise the same.
    """

    depth: int = 2
    kernel_size: int = 11
    kind: Literal["ntk", "nngp"] = "ntk"
    sigma_w2: float = 2.0
    ndim: int = 2
    kernel_size_z: int | None = None

    def __post_init__(self) -> None:
        if int(self.depth) != self.depth or self.depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {self.depth}")
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.kernel_size_z is not None and self.ndim == 2:
            raise ValueError("kernel_size_z needs ndim=3 (3-D patches)")
        for name in ("kernel_size", "kernel_size_z"):
            r = getattr(self, name)
            if r is not None and (int(r) != r or r < 1 or r % 2 == 0):
                raise ValueError(f"{name} must be a positive odd integer, got {r}")
        if self.kind not in ("ntk", "nngp"):
            raise ValueError(f"kind must be 'ntk' or 'nngp', got {self.kind!r}")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Convolution size along each spatial axis: ``(r, r)`` or ``(r_z, r, r)``."""
        r = self.kernel_size
        return (r, r) if self.ndim == 2 else (r if self.kernel_size_z is None else self.kernel_size_z, r, r)

    @property
    def patch_size(self) -> int:
        """Pixels of one patch, ``r^2`` or ``r_z r^2``."""
        return math.prod(self.sizes)

    @property
    def receptive_fields(self) -> tuple[int, ...]:
        """Receptive field along each spatial axis, ``(r - 1)(L - 1) + 1``."""
        return tuple((s - 1) * (self.depth - 1) + 1 for s in self.sizes)

    @property
    def receptive_field(self) -> int:
        """Side of the receptive field in Y and X, ``(r - 1)(L - 1) + 1``."""
        return self.receptive_fields[-1]

    @property
    def lower_neighbourhood(self) -> int:
        """Pixels that one output pixel reads at layer 1 of a deep kernel, ``prod((r - 1)(L - 2) + 1)``."""
        return math.prod((s - 1) * (self.depth - 2) + 1 for s in self.sizes)

    # ------------------------------------------------------------------ geometry
    def _offsets(self, device: torch.device) -> list[torch.Tensor]:
        """Patch offsets along each spatial axis, flattened in C order: ``ndim`` tensors of ``patch_size``."""
        grids = torch.meshgrid(*(torch.arange(-(s // 2), s // 2 + 1, device=device) for s in self.sizes),
                               indexing="ij")
        return [g.reshape(-1) for g in grids]

    def _neighbours(self, idx: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Flat indices of the reflected patch neighbourhood of each pixel: ``(n, patch_size)``."""
        flat = torch.zeros(len(idx), self.patch_size, dtype=idx.dtype, device=idx.device)
        rest, stride = idx, 1
        for n, off in zip(reversed(shape), reversed(self._offsets(idx.device))):
            flat += _reflect(rest[:, None] % n + off[None, :], n) * stride
            rest, stride = rest // n, stride * n
        return flat

    def patches(self, x: torch.Tensor, idx: torch.Tensor | range) -> torch.Tensor:
        """Reflect-padded patches of ``x`` (C, H, W) or (C, Z, H, W) at flat pixels ``idx``:
        ``(n, C patch_size)``.

        In 2-D a ``range`` of whole image rows (what the Nyström sweep asks for) is unfolded from a
        padded band; any other set of pixels is gathered through reflected neighbour indices.  (A
        range is known on the host: testing a device tensor for it would stall a GPU.)
        """
        c, w = x.shape[0], x.shape[-1]
        if isinstance(idx, range):
            if x.ndim == 3 and idx.step == 1 and idx.start % w == 0 and len(idx) % w == 0 and len(idx):
                h, p = x.shape[1], self.kernel_size // 2
                rows = _reflect(torch.arange(idx.start // w - p, idx.stop // w + p, device=x.device), h)
                band = F.pad(x[:, rows], (p, p), mode="reflect") if p else x[:, rows]
                return F.unfold(band[None], self.kernel_size)[0].T
            idx = torch.arange(idx.start, idx.stop, idx.step, device=x.device)
        nb = self._neighbours(idx, tuple(x.shape[1:]))
        return x.reshape(c, -1)[:, nb].permute(1, 0, 2).reshape(len(idx), -1)

    def patch_mean(self, img: torch.Tensor) -> torch.Tensor:
        """``A`` on a diagonal: the reflect-padded mean over each pixel's patch of an (H, W) or (Z, H, W) map."""
        if self.patch_size == 1:
            return img
        pad = [p for s in reversed(self.sizes) for p in (s // 2, s // 2)]
        padded = F.pad(img[None, None], pad, mode="reflect")
        pool = F.avg_pool2d if self.ndim == 2 else F.avg_pool3d
        return pool(padded, self.sizes, stride=1)[0, 0]

    def check_image(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if an ``(H, W)`` image or ``(Z, H, W)`` volume is too small for reflect padding."""
        if len(shape) != self.ndim:
            raise ValueError(f"a {self.ndim}-D kernel needs {self.ndim} spatial axes, got shape {tuple(shape)}")
        for n, s, name in zip(shape, self.sizes, ("Z", "Y", "X")[-self.ndim :]):
            if n <= s // 2:
                raise ValueError(
                    f"image of shape {tuple(shape)} is smaller than the kernel: size {s} along {name} "
                    f"needs at least {s // 2 + 1} pixels along that axis"
                )

    # ------------------------------------------------------------------ kernels
    def diagonals(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Diagonals of every layer's covariance and NTK, and of the final kernel.

        Parameters
        ----------
        x : torch.Tensor
            Input image ``(C, H, W)`` (or volume ``(C, Z, H, W)``).

        Returns
        -------
        sigmas, thetas : list of torch.Tensor
            ``Sigma^l_ii`` and ``Theta^l_ii`` as spatial maps (``(H, W)`` or ``(Z, H, W)``) for ``l = 1 .. L-1``.
        k_diag : torch.Tensor
            ``K_ii`` as a spatial map.
        """
        c = x.shape[0]
        s1 = self.sigma_w2 * self.patch_mean((x * x).sum(0)) / c
        sigmas, thetas = [s1], [s1]
        half = self.sigma_w2 / 2  # V(S)_ii = V'(S)_ii * S_ii = sigma_w^2 / 2 * S_ii
        for _ in range(2, self.depth):
            s = self.patch_mean(half * sigmas[-1])
            sigmas.append(s)
            thetas.append(s + self.patch_mean(half * thetas[-1]))
        k = half * sigmas[-1]
        if self.kind == "ntk":
            k = k + half * thetas[-1]
        return sigmas, thetas, k

    def block(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        diagonals: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Kernel block ``K[rows, cols]`` for flat pixel indices ``rows`` and ``cols``.

        Parameters
        ----------
        x : torch.Tensor
            Input image ``(C, H, W)`` (or volume ``(C, Z, H, W)``) (float32 or float64) on the compute device.
        rows, cols : torch.Tensor
            1-D integer tensors of flat pixel indices.
        diagonals : tuple, optional
            Output of :meth:`diagonals` for ``x`` (recomputed when omitted).

        Returns
        -------
        torch.Tensor
            ``(len(rows), len(cols))`` block of the kernel.
        """
        c, shape = x.shape[0], tuple(x.shape[1:])
        self.check_image(shape)
        sigmas, thetas, _ = diagonals if diagonals is not None else self.diagonals(x)
        # index sets per layer, from layer L-1 (the requested ones) down to layer 1
        row_sets, col_sets, row_maps, col_maps = [rows], [cols], [], []
        for _ in range(self.depth - 2):
            for sets, maps in ((row_sets, row_maps), (col_sets, col_maps)):
                nb = self._neighbours(sets[-1], shape)
                uniq, inv = torch.unique(nb, return_inverse=True)
                sets.append(uniq)
                maps.append(inv)
        r1, c1 = row_sets[-1], col_sets[-1]
        sigma = self.patches(x, r1) @ self.patches(x, c1).T
        sigma *= self.sigma_w2 / (c * self.patch_size)
        theta = sigma
        for layer in range(1, self.depth - 1):  # builds Sigma^{layer+1}
            level = self.depth - 2 - layer  # position of layer+1's sets in the lists
            dr = sigmas[layer - 1].reshape(-1)[row_sets[level + 1]]
            dc = sigmas[layer - 1].reshape(-1)[col_sets[level + 1]]
            v, vp = relu_expectations(sigma, dr, dc, self.sigma_w2)
            pr, pc = row_maps[level], col_maps[level]
            sigma = self._average(v, pr, pc)
            theta = sigma + self._average(vp.mul_(theta), pr, pc) if self.kind == "ntk" else sigma
        dr = sigmas[-1].reshape(-1)[rows]
        dc = sigmas[-1].reshape(-1)[cols]
        v, vp = relu_expectations(sigma, dr, dc, self.sigma_w2)
        return v.add_(vp.mul_(theta)) if self.kind == "ntk" else v

    @staticmethod
    def _average(m: torch.Tensor, pr: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
        """``A``: ``out[i, j] = mean_a m[pr[i, a], pc[j, a]]``."""
        out = torch.zeros(pr.shape[0], pc.shape[0], dtype=m.dtype, device=m.device)
        for a in range(pr.shape[1]):
            out += m.index_select(0, pr[:, a]).index_select(1, pc[:, a])
        return out.div_(pr.shape[1])

    def output_factor(self) -> float:
        """``k`` in ``sin t + k (pi - t) cos t``: 2 for the NTK (``V + V' o Sigma``), 1 for NNGP."""
        return 2.0 if self.kind == "ntk" else 1.0

    def patch_norms(self, diagonals: tuple, idx: torch.Tensor) -> torch.Tensor:
        """``sqrt(Sigma^1)`` of the pixels ``idx``: the norms the output layer divides by."""
        return diagonals[0][-1].reshape(-1)[idx].clamp_min(0).sqrt()
