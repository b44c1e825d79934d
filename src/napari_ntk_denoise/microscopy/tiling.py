"""Denoising large planes (and volumes) in overlapping tiles, each with its own NTK filter and SURE step.

The NTK filter of a ``d``-pixel image needs ``O(d k)`` memory and ``O(d m)`` kernel columns, so a
2048 x 2048 plane is split into tiles that overlap by at least the CNN's receptive field.  Each axis
is cut into *cores* that partition it; a tile is its core widened by half the overlap on each inner
side, and tile outputs are blended with raised-cosine weights over the overlaps (which sum to one),
so there are no seams.  The same layout serves the lazy dask path of :mod:`napari_ntk_denoise.microscopy.stacks`
(chunks = cores, halo = half the overlap).  Peak memory is that of one tile's filter plus the output
(plus every tile's eigenimages, in host memory, with ``keep_filters``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..engine._heap import keeps_freed_memory
from ..engine._input import ImageLayout, check_memory, prepare_image, resolve_device
from ..engine.config import FilterConfig
from ..engine.denoise import NTKResult, iter_denoise_ntk
from ..engine.events import Progress, TwicingStep, drain, forward_progress
from ..engine.nystrom import estimate_bytes, falls_early, spectrum_knee
from ..engine.problem import setup
from ..engine.stopping import estimate_noise_sigma

__all__ = [
    "TILE", "TILE_FINE", "TILE_Z", "TiledResult", "TileFilters", "TileGrid", "tile_cores", "blend_window",
    "check_tiled_request", "choose_tile", "fixed_tile", "spread_indices", "iter_denoise_tiled", "denoise_tiled",
]

#: default longest tile side along Y and X, for planes ("2d") and for volumes ("3d")
TILE = {"2d": 256, "3d": 128}

#: the plane tile side where the kernel's spectrum on tiles of ``TILE["2d"]`` does not fall within the
#: rank (:func:`choose_tile`)
TILE_FINE = 128

#: tiles of ``TILE["2d"]`` whose spectrum :func:`choose_tile` measures
PROBE_TILES = 3

#: default side of volume tiles along Z (``volume=True``)
TILE_Z = 16


@dataclass
class TiledResult:
    """Outcome of :func:`iter_denoise_tiled`.

    Attributes
    ----------
    image : numpy.ndarray
        Blended denoised image in the input's layout.
    sigma : float
        Noise level: the one of every tile, or their RMS where each tile had its own.
    sigma_estimated : bool
        Whether ``sigma`` was estimated (once, from the whole image).
    tiles : list of tuple of slice
        ``(rows, cols)`` (``(z, rows, cols)`` for a volume) of every tile.
    t : list of int
        Twicing step chosen for every tile.
    overlap : tuple of int
        Overlap of neighbouring tiles along each spatial axis (pixels).
    tile_sigma : list of float
        Noise level of every tile.
    stop_warnings : list of str
        Why a tile's SURE stop is doubtful (``"tile k: reason"``), empty when every stop holds.
    filters : TileFilters or None
        Every tile's filter, to re-render other steps (``keep_filters=True``).
    tile : int or None
        The longest tile side along Y and X (given, or :func:`choose_tile`'s).
    """

    image: np.ndarray
    sigma: float
    sigma_estimated: bool
    tiles: list[tuple[slice, ...]] = field(default_factory=list)
    t: list[int] = field(default_factory=list)
    overlap: tuple[int, ...] = ()
    tile_sigma: list[float] = field(default_factory=list)
    stop_warnings: list[str] = field(default_factory=list)
    filters: TileFilters | None = field(default=None, repr=False)
    tile: int | None = None

    def offsets(self) -> tuple[int, int]:
        """Lowest and highest offsets (grid steps from each tile's chosen step) that move some tile."""
        return self._filters().offsets()

    def step_at(self, offset: int) -> list[int]:
        """Every tile's step ``offset`` grid steps from its chosen one."""
        return [res.step_at(offset) for res in self._filters().results]

    def render_offset(self, offset: int) -> np.ndarray:
        """The blended image with every tile ``offset`` grid steps from its chosen step."""
        return self._filters().render(offset)

    def _filters(self) -> TileFilters:
        if self.filters is None:
            raise ValueError("the tiles' filters were not kept: denoise with keep_filters=True to re-render")
        return self.filters

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {"method": "ntk-nystrom-twicing-tiled", "sigma": self.sigma, "sigma_estimated": self.sigma_estimated,
                "n_tiles": len(self.tiles), "tile": self.tile, "t": list(self.t), "overlap": list(self.overlap),
                "tile_sigma": list(self.tile_sigma), "stop_warnings": list(self.stop_warnings)}


class _Blend:
    """Tile outputs blended into an image ``(..., C)`` with their weights (which sum to one)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.acc = np.zeros(shape)
        self.wsum = np.zeros((*shape[:-1], 1))

    def add(self, sl: tuple[slice, ...], weight: np.ndarray, z: np.ndarray) -> None:
        self.acc[sl] += weight[..., None] * z
        self.wsum[sl] += weight[..., None]

    def result(self) -> np.ndarray:
        return self.acc / self.wsum


@dataclass(frozen=True)
class TileFilters:
    """Every tile's result with its eigenimages, to re-render a tiled image at other steps.

    Attributes
    ----------
    shape : tuple of int
        The prepared image's shape ``(..., C)``.
    tiles : list of tuple
        ``(slices, blending weights)`` of every tile.
    results : list of NTKResult
        Every tile's result (the final stage's eigenimages kept).
    layout : ImageLayout
        The input's layout, to restore.
    """

    shape: tuple[int, ...]
    tiles: list[tuple[tuple[slice, ...], np.ndarray]]
    results: list[NTKResult]
    layout: ImageLayout

    def offsets(self) -> tuple[int, int]:
        """Lowest and highest offsets from the tiles' chosen steps that move some tile."""
        spans = [res.offsets() for res in self.results]
        return min(lo for lo, _ in spans), max(hi for _, hi in spans)

    def render(self, offset: int) -> np.ndarray:
        """The blended image, every tile ``offset`` grid steps from its own chosen step."""
        blend = _Blend(self.shape)
        for (sl, weight), res in zip(self.tiles, self.results):
            blend.add(sl, weight, res.render_offset(offset))
        return self.layout.restore(blend.result())


def tile_cores(n: int, tile: int, halo: int) -> list[int]:
    """Boundaries ``0 = b_0 < ... < b_K = n`` of the fewest cores whose tiles fit in ``tile`` pixels.

    The tile of core ``[b_k, b_k+1)`` is ``[b_k - halo, b_k+1 + halo)`` clipped to ``[0, n)``, so
    neighbouring tiles overlap by ``2 halo``.  Slack is spread evenly, which makes all tiles the same
    length (up to rounding); a single core ``[0, n)`` when ``n <= tile``.
    """
    if n <= tile:
        return [0, n]
    inner = tile - 2 * halo  # longest interior core; border cores may be ``halo`` longer
    count = 2 + max(0, math.ceil((n - 2 * (tile - halo)) / inner))
    slack = (2 * (tile - halo) + (count - 2) * inner - n) / count
    first = tile - halo - slack
    return [0] + [int(round(first + k * (inner - slack))) for k in range(count - 1)] + [n]


@dataclass(frozen=True)
class TileGrid:
    """Cores and halos of the tiles along each spatial axis of an image or volume.

    Attributes
    ----------
    cores : tuple of list of int
        :func:`tile_cores` boundaries per spatial axis.
    halos : tuple of int
        Half the overlap per axis (tiles overlap by ``2 halo``).
    """

    cores: tuple[list[int], ...]
    halos: tuple[int, ...]

    @property
    def overlap(self) -> tuple[int, ...]:
        """Overlap of neighbouring tiles per axis."""
        return tuple(2 * h for h in self.halos)

    def axis_tiles(self, axis: int) -> list[tuple[slice, tuple[int, int]]]:
        """Tiles along one axis: ``(slice, (ramp_before, ramp_after))`` for :func:`blend_window`."""
        b, halo = self.cores[axis], self.halos[axis]
        last = len(b) - 2
        return [(slice(max(0, b[k] - halo), min(b[-1], b[k + 1] + halo)),
                 (2 * halo if k > 0 else 0, 2 * halo if k < last else 0)) for k in range(last + 1)]

    def tile(self, location: tuple[int, ...]) -> tuple[slice, ...]:
        """Slices of the tile with per-axis index ``location``."""
        return tuple(self.axis_tiles(a)[i][0] for a, i in enumerate(location))

    def window(self, location: tuple[int, ...]) -> np.ndarray:
        """Blending weights of the tile with per-axis index ``location`` (outer product of the axes')."""
        spans = [self.axis_tiles(a)[i] for a, i in enumerate(location)]
        return functools.reduce(np.multiply.outer, [blend_window(sl.stop - sl.start, *ramps) for sl, ramps in spans])

    @property
    def tile_pixels(self) -> int:
        """Pixels of all tiles together (the overlaps counted once per tile)."""
        return math.prod(sum(sl.stop - sl.start for sl, _ in self.axis_tiles(a)) for a in range(len(self.cores)))

    def tiles(self) -> list[tuple[tuple[slice, ...], np.ndarray]]:
        """Every tile's slices and blending weights, in C order of the per-axis indices."""
        return [(self.tile(loc), self.window(loc)) for loc in np.ndindex(*(len(b) - 1 for b in self.cores))]


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


def check_tiled_request(
    shape: tuple[int, ...],
    *,
    tile: int = TILE["2d"],
    overlap: int | None = None,
    tile_z: int = TILE_Z,
    overlap_z: int | None = None,
    device: str | None = None,
    **options: Any,
) -> TileGrid:
    """Check a tiled request before any work and return its tile grid.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W, C)`` of one plane, or ``(Z, H, W, C)`` of one volume with ``volume``.
    tile, overlap, tile_z, overlap_z, device, **options
        As for :func:`iter_denoise_tiled`.

    Returns
    -------
    TileGrid

    Raises
    ------
    ValueError
        Non-integer sizes, an overlap below the receptive field or a tile not larger than it.
    MemoryError
        When one tile's filter (times the pipeline passes: MC-SURE, guided stage) plus the image's
        accumulation buffers exceed the free memory of the device
        (:func:`~napari_ntk_denoise.engine.nystrom.estimate_bytes`).
    """
    cfg = FilterConfig.from_options(**options)
    kern = cfg.architecture
    volume = kern.ndim == 3
    spatial, n_ch = tuple(shape[:-1]), shape[-1]
    if len(spatial) != kern.ndim:
        raise ValueError(f"shape {tuple(shape)} does not match a {kern.ndim}-D kernel with channels last")
    tiles = ((tile_z,) if volume else ()) + (tile, tile)
    overlaps = ((overlap_z,) if volume else ()) + (overlap, overlap)
    halos = []
    for axis, (t, o, rf) in enumerate(zip(tiles, overlaps, kern.receptive_fields)):
        o = 2 * rf if o is None else o
        name = ("z " if volume and axis == 0 else "") + "tile"
        if int(t) != t or int(o) != o:
            raise ValueError(f"{name} and overlap must be integers, got {t}, {o}")
        if o < rf:
            raise ValueError(f"{name} overlap {o} is smaller than the receptive field {rf}")
        if t <= o + (o % 2):
            raise ValueError(f"{name} {t} must be larger than the overlap {o}")
        halos.append((int(o) + 1) // 2)
    grid = TileGrid(tuple(tile_cores(n, int(t), h) for n, t, h in zip(spatial, tiles, halos)), tuple(halos))
    tile_shape = [min(int(t), n) for t, n in zip(tiles, spatial)]
    d, size = math.prod(tile_shape), "x".join(map(str, spatial))
    m = cfg.nystrom.anchors_for(d)
    rank = min(cfg.nystrom.rank, m)
    dev = resolve_device(device)
    pixels = math.prod(spatial)
    buffers = 16 * pixels * n_ch + 8 * pixels
    need = estimate_bytes(d, n_ch, m, rank, kern, device=dev) * cfg.memory_passes + buffers
    check_memory(need, dev,
                 f"tiled NTK denoising of a {size} image in {'x'.join(map(str, tile_shape))} tiles with {m} anchors "
                 "per tile", "use smaller tiles or a smaller anchor fraction or rank")
    return grid


def spread_indices(n: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct evenly spaced indices in ``[0, n)``, first and last included."""
    return np.unique(np.round(np.linspace(0, n - 1, min(count, n))).astype(int))


def fixed_tile(spatial: tuple[int, ...], overlap: int | None = None, **options: Any) -> int | None:
    """The default tile side where no spectrum needs measuring, else ``None`` (see :func:`choose_tile`).

    Parameters
    ----------
    spatial : tuple of int
        ``(H, W)`` of a plane (``(Z, H, W)`` of a volume).
    overlap : int, optional
        The tiles' overlap along Y and X (default twice the receptive field).
    **options
        The filter's options (:class:`~napari_ntk_denoise.engine.config.FilterConfig`).

    Returns
    -------
    int or None
        ``TILE["3d"]`` for volumes; ``TILE["2d"]`` for kernels of noise, planes that fit in one
        tile of ``TILE["2d"]`` and overlaps that leave no room for ``TILE_FINE``; else ``None``.
    """
    cfg = FilterConfig.from_options(**options)
    if cfg.architecture.ndim == 3:
        return TILE["3d"]
    o = 2 * cfg.architecture.receptive_fields[-1] if overlap is None else int(overlap)
    if cfg.input != "image" or max(spatial[-2:]) <= TILE["2d"] or TILE_FINE <= o + o % 2:
        return TILE["2d"]
    return None


def choose_tile(image: np.ndarray, channel_axis: int | None = None, device: str | None = None,
                overlap: int | None = None, **options: Any) -> int:
    """The default tile side for ``image``: ``TILE["2d"]``, or ``TILE_FINE`` where its kernel's
    spectrum does not fall within the rank.

    The Nyström spectrum (:func:`~napari_ntk_denoise.engine.nystrom.spectrum_knee`) is measured on
    up to ``PROBE_TILES`` tiles of ``TILE["2d"]`` spread over the image.  Where, on the median
    tile, it has not fallen by ``LIGHT_KNEE`` of the rank (colour photographs), the rank cannot hold
    the detail of a tile that large: smaller tiles give every pixel more eigenimages, at less cost.
    Where it falls early (fluorescence planes, grey images), the larger tiles keep more similar
    patches to average and take the light Nyström set.  :func:`fixed_tile` gives the cases that
    need no measurement (volumes, kernels of noise, planes that fit in one tile).

    Parameters
    ----------
    image : numpy.ndarray
        One plane (or volume), with ``channel_axis``; in the domain it will be filtered in (after a
        variance-stabilising transform, where one is used).
    channel_axis : int, optional
        Colour axis.
    device : str, optional
        Compute device of the probes.
    overlap : int, optional
        The tiles' overlap along Y and X, as for :func:`iter_denoise_tiled`.
    **options
        The filter's options (:class:`~napari_ntk_denoise.engine.config.FilterConfig`).

    Returns
    -------
    int
    """
    cfg = FilterConfig.from_options(**options)
    y, _ = prepare_image(image, channel_axis, spatial=cfg.architecture.ndim)
    fixed = fixed_tile(y.shape[:-1], overlap, **options)
    if fixed is not None:
        return fixed
    tiles = check_tiled_request(y.shape, tile=TILE["2d"], overlap=overlap, device=device, **options).tiles()
    rank = min(cfg.nystrom.rank, cfg.nystrom.anchors_for(math.prod(y[tiles[0][0]].shape[:-1])))
    knees = []
    for k in spread_indices(len(tiles), PROBE_TILES):
        st = setup(y[tiles[k][0]], -1, cfg, device, passes=1)
        knees.append(spectrum_knee(cfg.stage_kernel, st.kernel_input(), st.anchors, st.rank))
    measured = [k for k in knees if k is not None]
    if not measured or falls_early(int(np.median(measured)), rank):
        return TILE["2d"]
    return TILE_FINE


#: a noise level, or a function of a tile and its ``channel_axis`` keyword that gives the tile's
TileSigma = Union[float, None, Callable[..., float]]


def iter_denoise_tile(
    tile: np.ndarray, sigma: TileSigma, channel_axis: int | None, **kwargs: Any
) -> Generator[Progress | TwicingStep, None, NTKResult]:
    """One tile's own NTK filter and SURE step, as every tiled path runs it (in memory and in dask
    tasks, so that both give the same result); no intermediate twicing steps are rendered.  A
    callable ``sigma`` is evaluated on the tile (e.g. the noise left by a variance-stabilising
    transform, which depends on the tile's intensities)."""
    if callable(sigma):
        sigma = sigma(tile, channel_axis=channel_axis)
    return iter_denoise_ntk(tile, sigma, channel_axis=channel_axis, **{"stream_steps": 0, **kwargs})


@keeps_freed_memory
def iter_denoise_tiled(
    image: np.ndarray,
    sigma: TileSigma = None,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    tile_z: int = TILE_Z,
    overlap_z: int | None = None,
    channel_axis: int | None = None,
    device: str | None = None,
    keep_filters: bool = False,
    **options: Any,
) -> Generator[Progress, None, TiledResult]:
    """Denoise a (large) image in overlapping tiles, streaming progress.

    Parameters
    ----------
    image : numpy.ndarray
        Noisy image, 2-D or 3-D with ``channel_axis`` (with ``volume``: a ``(Z, Y, X)`` volume,
        4-D with ``channel_axis``); never modified.
    sigma : float or callable, optional
        Noise level; estimated once from the whole image when omitted, so every tile uses the same;
        a callable gives each tile's own (see :func:`iter_denoise_tile`).
    tile : int, optional
        Longest tile side along Y and X in pixels; by default :func:`choose_tile`'s (``TILE_FINE``
        or ``TILE["2d"]`` for planes, ``TILE["3d"]`` for volumes).
    overlap : int, optional
        Overlap of neighbouring tiles along Y and X; default twice the receptive field.  Must be at
        least the receptive field ``(r - 1)(L - 1) + 1`` and smaller than ``tile``; an odd overlap
        is rounded up (tiles overlap by twice a halo).
    tile_z, overlap_z : int
        The same along Z for a volume (default 16, and twice the Z receptive field).
    channel_axis : int, optional
        Colour axis (one filter for all channels of a tile).
    device : str, optional
        As for :func:`~napari_ntk_denoise.engine.denoise.iter_denoise_ntk`.
    keep_filters : bool
        Keep every tile's eigenimages for :meth:`TiledResult.render_offset`: one ``d x k`` float32
        block per tile in host memory, beyond what the memory guard checks.
    **options
        The filter's options (:class:`~napari_ntk_denoise.engine.config.FilterConfig`), as for
        :func:`~napari_ntk_denoise.engine.denoise.iter_denoise_ntk`; ``volume`` for a Z stack.

    Yields
    ------
    Progress
        ``stage="tiles"`` after each tile, and every tile's own progress events with the tile in
        the stage name, scaled to the fraction of the whole image.

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
    if "reference" in options:
        raise ValueError("reference is not supported by the tiled denoiser; compare the blended output instead")
    cfg = FilterConfig.from_options(**options)
    y, layout = prepare_image(image, channel_axis, spatial=cfg.architecture.ndim)
    if tile is None:
        yield Progress("tiles", 0, 1, "choosing the tile size")
        tile = choose_tile(y, -1, device, overlap, **options)
    grid = check_tiled_request(y.shape, tile=tile, overlap=overlap, tile_z=tile_z, overlap_z=overlap_z, device=device,
                               **options)
    sigma_estimated = sigma is None
    if sigma is None:
        sigma = estimate_noise_sigma(image, channel_axis)
    blend = _Blend(y.shape)
    tiles = grid.tiles()
    steps, sigmas, doubts, kept = [], [], [], []
    for k, (sl, weight) in enumerate(tiles):
        gen = iter_denoise_tile(y[sl], sigma, -1, device=device, **options)
        res = yield from forward_progress(gen, f"tile {k + 1}/{len(tiles)}: ", part=(k, len(tiles)))
        blend.add(sl, weight, res.image)
        if keep_filters:  # the final stage in host memory: the next tile's filter needs the device's
            kept.append(res.without_eigenimages(keep_final=True))
        steps.append(res.t)
        sigmas.append(res.sigma)
        doubts += [f"tile {k + 1}: {w}" for w in res.params.get("stop_warnings", ())]
        yield Progress("tiles", k + 1, len(tiles), f"tile {k + 1}/{len(tiles)}: t = {res.t}")
    filters = TileFilters(y.shape, tiles, kept, layout) if keep_filters else None
    return TiledResult(image=layout.restore(blend.result()), sigma=float(np.sqrt(np.mean(np.square(sigmas)))),
                       sigma_estimated=sigma_estimated, tiles=[sl for sl, _ in tiles], t=steps, overlap=grid.overlap,
                       tile_sigma=sigmas, stop_warnings=doubts, filters=filters, tile=tile)


def denoise_tiled(image: np.ndarray, sigma: float | None = None, **kwargs: Any) -> tuple[np.ndarray, TiledResult]:
    """Non-streaming :func:`iter_denoise_tiled`; returns ``(denoised, result)``."""
    result = drain(iter_denoise_tiled(image, sigma, **kwargs))
    return result.image, result
