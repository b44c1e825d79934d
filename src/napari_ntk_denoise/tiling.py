"""Denoising large planes in overlapping tiles, each with its own NTK filter and SURE step.

The NTK filter of a ``d``-pixel image needs ``O(d k)`` memory and ``O(d m)`` kernel columns, so a
2048 x 2048 plane is split into tiles that overlap by at least the CNN's receptive field; tile
outputs are blended with raised-cosine weights over the overlaps and normalised by the summed
weights, which leaves no seams.  Peak memory is that of one tile's filter plus the output plane.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._input import check_memory, prepare_image, resolve_device
from .denoise import DEFAULT_RANK, _n_anchors, iter_denoise_ntk
from .events import Progress, drain, forward_progress
from .kernels import CNNKernel
from .nystrom import estimate_bytes
from .stopping import estimate_noise_sigma

__all__ = ["TiledResult", "tile_starts", "blend_window", "check_tiled_request", "iter_denoise_tiled", "denoise_tiled"]


@dataclass
class TiledResult:
    """Outcome of :func:`iter_denoise_tiled`.

    Attributes
    ----------
    image : numpy.ndarray
        Blended denoised image in the input's layout.
    sigma : float
        Noise level used for every tile.
    sigma_estimated : bool
        Whether ``sigma`` was estimated (once, from the whole image).
    tiles : list of tuple of slice
        ``(rows, cols)`` of every tile.
    t : list of int
        Twicing step chosen for every tile.
    overlap : int
        Overlap between neighbouring tiles (pixels).
    """

    image: np.ndarray
    sigma: float
    sigma_estimated: bool
    tiles: list[tuple[slice, slice]] = field(default_factory=list)
    t: list[int] = field(default_factory=list)
    overlap: int = 0

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {"method": "ntk-nystrom-twicing-tiled", "sigma": self.sigma, "sigma_estimated": self.sigma_estimated,
                "n_tiles": len(self.tiles), "t": list(self.t), "overlap": self.overlap}


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced start offsets of the fewest tiles of length ``tile`` covering ``[0, n)`` with
    neighbours sharing at least ``overlap`` pixels; a single tile ``[0, n)`` when ``n <= tile``."""
    if n <= tile:
        return [0]
    count = int(np.ceil((n - overlap) / (tile - overlap)))
    return [int(s) for s in np.round(np.linspace(0, n - tile, count))]


def blend_window(length: int, ramp_before: int, ramp_after: int) -> np.ndarray:
    """1-D blending weights: raised-cosine ramps (strictly positive) over the overlaps, 1 elsewhere.

    Parameters
    ----------
    length : int
        Tile length.
    ramp_before, ramp_after : int
        Lengths of the rising ramp at the start and the falling ramp at the end (0 at the image's
        border, where the tile has no neighbour).
    """
    w = np.ones(length)
    for ramp, sl in ((ramp_before, slice(None)), (ramp_after, slice(None, None, -1))):
        if ramp:
            rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
            w[sl][:ramp] = np.minimum(w[sl][:ramp], rise)
    return w


def _ramps(starts: list[int], tile: int, n: int) -> list[tuple[int, int]]:
    """Lengths of the overlaps each tile shares with its predecessor and successor."""
    out = []
    for i, s in enumerate(starts):
        before = starts[i - 1] + min(tile, n) - s if i > 0 else 0
        after = s + min(tile, n) - starts[i + 1] if i + 1 < len(starts) else 0
        out.append((before, after))
    return out


def check_tiled_request(
    shape: tuple[int, int, int],
    *,
    tile: int = 512,
    overlap: int | None = None,
    depth: int = 2,
    kernel_size: int = 11,
    **ntk_kwargs: Any,
) -> int:
    """Check a tiled request before any work and return the overlap it will use.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W, C)`` of one plane.
    tile, overlap, depth, kernel_size, **ntk_kwargs
        As for :func:`iter_denoise_tiled`.

    Returns
    -------
    int
        The overlap (default: twice the receptive field).

    Raises
    ------
    ValueError
        Non-integer sizes, an overlap below the receptive field or a tile not larger than it.
    MemoryError
        When one tile's filter (times the pipeline passes: MC-SURE, guided stage) plus the plane's
        accumulation buffers exceed the free memory of the device
        (:func:`~napari_ntk_denoise.nystrom.estimate_bytes`).
    """
    kern = CNNKernel(depth=depth, kernel_size=kernel_size, kind=ntk_kwargs.get("kernel", "ntk"))
    rf = kern.receptive_field
    overlap = 2 * rf if overlap is None else overlap
    if int(tile) != tile or int(overlap) != overlap:
        raise ValueError(f"tile and overlap must be integers, got {tile}, {overlap}")
    if overlap < rf:
        raise ValueError(f"overlap {overlap} is smaller than the receptive field {rf}")
    if tile <= overlap:
        raise ValueError(f"tile {tile} must be larger than the overlap {overlap}")
    h, w, n_ch = shape
    th, tw = min(tile, h), min(tile, w)
    d = th * tw
    m = _n_anchors(d, ntk_kwargs.get("fraction", 0.02), ntk_kwargs.get("n_anchors"))
    rank = min(int(ntk_kwargs.get("rank", DEFAULT_RANK)), m)
    passes = (1 + (ntk_kwargs.get("stop", "sure") == "sure")) * (1 + bool(ntk_kwargs.get("guided", False)))
    dev = resolve_device(ntk_kwargs.get("device"))
    need = estimate_bytes(d, n_ch, m, rank, kern, device=dev) * passes + 16 * h * w * n_ch + 8 * h * w  # + buffers
    check_memory(need, dev,
                 f"tiled NTK denoising of a {h}x{w} image in {th}x{tw} tiles with {m} anchors per tile",
                 "use smaller tiles or a smaller anchor fraction or rank")
    return int(overlap)


def iter_denoise_tiled(
    image: np.ndarray,
    sigma: float | None = None,
    *,
    tile: int = 512,
    overlap: int | None = None,
    channel_axis: int | None = None,
    depth: int = 2,
    kernel_size: int = 11,
    **ntk_kwargs: Any,
) -> Generator[Progress, None, TiledResult]:
    """Denoise a (large) image in overlapping tiles, streaming progress.

    Parameters
    ----------
    image : numpy.ndarray
        Noisy image, 2-D or 3-D with ``channel_axis``; never modified.
    sigma : float, optional
        Noise level; estimated once from the whole image when omitted, so every tile uses the same.
    tile : int
        Tile side in pixels (tiles at the border may be the same size, shifted inwards).
    overlap : int, optional
        Overlap of neighbouring tiles; default twice the receptive field.  Must be at least the
        receptive field ``(r - 1)(L - 1) + 1`` and smaller than ``tile``.
    channel_axis : int, optional
        Colour axis (one filter for all channels of a tile).
    depth, kernel_size : int
        CNN architecture (see :class:`~napari_ntk_denoise.kernels.CNNKernel`).
    **ntk_kwargs
        Further arguments of :func:`~napari_ntk_denoise.denoise.iter_denoise_ntk` (``fraction``,
        ``rank``, ``stop``, ``guided``, ``device``, ``seed``, ...).  ``reference`` is not supported.

    Yields
    ------
    Progress
        ``stage="tiles"`` after each tile, and every tile's own progress events with the tile in
        the stage name.

    Returns
    -------
    TiledResult

    Raises
    ------
    ValueError
        Bad tile or overlap, before any work.
    MemoryError
        When one tile's filter does not fit; the message suggests smaller tiles or fraction.

    Notes
    -----
    Every tile has its own low-rank NTK filter and Monte-Carlo SURE step (Tachella et al., CVPR
    2021; Ramani et al., IEEE TIP 2008).  Output = ``sum_i w_i z_i / sum_i w_i`` with separable
    raised-cosine windows ``w_i``; where tiles overlap the result is a convex combination of
    estimates that each saw a full receptive field of context.
    """
    if "reference" in ntk_kwargs:
        raise ValueError("reference is not supported by the tiled denoiser; compare the blended output instead")
    y, layout = prepare_image(image, channel_axis)
    h, w, n_ch = y.shape
    overlap = check_tiled_request((h, w, n_ch), tile=tile, overlap=overlap, depth=depth, kernel_size=kernel_size,
                                  **ntk_kwargs)
    th, tw = min(tile, h), min(tile, w)
    sigma_estimated = sigma is None
    if sigma is None:
        sigma = estimate_noise_sigma(image, channel_axis)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    ramps_r, ramps_c = _ramps(rows, tile, h), _ramps(cols, tile, w)
    acc = np.zeros((h, w, n_ch))
    wsum = np.zeros((h, w, 1))
    tiles: list[tuple[slice, slice]] = []
    steps: list[int] = []
    n_tiles = len(rows) * len(cols)
    for i, (r0, rr) in enumerate(zip(rows, ramps_r)):
        for j, (c0, rc) in enumerate(zip(cols, ramps_c)):
            k = i * len(cols) + j
            sl = (slice(r0, r0 + th), slice(c0, c0 + tw))
            gen = iter_denoise_ntk(y[sl], sigma, channel_axis=-1, depth=depth, kernel_size=kernel_size, **ntk_kwargs)
            res = yield from forward_progress(gen, f"tile {k + 1}/{n_tiles}: ")
            weight = np.outer(blend_window(th, *rr), blend_window(tw, *rc))[..., None]
            acc[sl] += weight * res.image
            wsum[sl] += weight
            tiles.append(sl)
            steps.append(res.t)
            yield Progress("tiles", k + 1, n_tiles, f"tile {k + 1}/{n_tiles}: t = {res.t}")
    return TiledResult(image=layout.restore(acc / wsum), sigma=float(sigma), sigma_estimated=sigma_estimated,
                       tiles=tiles, t=steps, overlap=int(overlap))


def denoise_tiled(image: np.ndarray, sigma: float | None = None, **kwargs: Any) -> tuple[np.ndarray, TiledResult]:
    """Non-streaming :func:`iter_denoise_tiled`; returns ``(denoised, result)``."""
    result = drain(iter_denoise_tiled(image, sigma, **kwargs))
    return result.image, result
