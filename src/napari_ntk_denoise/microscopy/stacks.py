"""nD microscopy stacks: NTK denoising of numpy or (lazy) dask arrays, plane by plane or in 3-D.

An axes string such as ``"TZYX"``, ``"CYX"`` or ``"ZYXC"`` names every dimension.  Each Y-X plane is
denoised independently by default, or, with ``patches="3d"``, each Z-Y-X volume with the kernel of
3-D patches; both are tiled above the tile size (:mod:`napari_ntk_denoise.microscopy.tiling`).  Channels ``C``
are either colour (one filter shared by all channels) or independent.  Dask input is processed
chunk by chunk: chunks are aligned with the tile cores, widened by the tile halo
(``dask.array.overlap.overlap``, the first half of ``map_overlap``), denoised, and the weighted
tiles added back over their overlaps, which gives the in-memory result exactly, lazily, on any
dask scheduler including a ``dask.distributed`` cluster.  Poisson-Gaussian data go through the
generalized Anscombe transform (:mod:`napari_ntk_denoise.microscopy.vst`).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from ..engine._heap import keeps_freed_memory
from ..engine.events import Progress, drain, forward_progress
from ..engine.stopping import estimate_noise_sigma
from .noise_estimation import NoiseReport, noise_report, stabilised_sigma
from .tiling import (
    TILE,
    TileGrid,
    TileSigma,
    check_tiled_request,
    choose_tile,
    fixed_tile,
    iter_denoise_tile,
    iter_denoise_tiled,
    spread_indices,
)
from .vst import PoissonGaussian, gat_forward, gat_inverse

__all__ = ["AXES", "StackOptions", "check_axes", "plane_order", "estimate_stack_noise", "estimate_stack_sigma",
           "stack_noise_report", "iter_denoise_stack", "denoise_stack"]

#: recognised axis letters: time, depth, channel, rows, columns
AXES = "TZCYX"

NoiseModel = Literal["gaussian", "poisson-gaussian"]
Patches = Literal["2d", "3d"]


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string (upper-cased) against an array's number of dimensions.

    Raises
    ------
    ValueError
        Unknown or repeated letters, missing Y or X, or a length different from ``ndim``.
    """
    ax = str(axes).upper()
    if len(ax) != ndim:
        raise ValueError(f"axes {axes!r} has {len(ax)} letters but the array has {ndim} dimensions")
    bad = sorted(set(ax) - set(AXES))
    if bad:
        raise ValueError(f"axes {axes!r} contains unknown letters {bad}; use letters of {AXES!r}")
    if len(set(ax)) != len(ax):
        raise ValueError(f"axes {axes!r} repeats a letter")
    if "Y" not in ax or "X" not in ax:
        raise ValueError(f"axes {axes!r} must contain both Y and X")
    return ax


def plane_order(axes: str, channels: str, patches: str = "2d") -> tuple[list[int], int]:
    """Permutation putting loop axes first, then (Z,) Y, X (and C when colour); number of loop axes."""
    colour = channels == "colour" and "C" in axes
    inner = list("ZYX" if patches == "3d" else "YX") + (["C"] if colour else [])
    loop = [i for i, a in enumerate(axes) if a not in inner]
    return loop + [axes.index(a) for a in inner], len(loop)


def _sample_planes(array: np.ndarray | Any, axes: str, count: int = 3) -> np.ndarray:
    """Up to ``count`` evenly spaced Y-X planes (every channel of them), as a numpy ``(n, Y, X)`` stack."""
    order, n_loop = plane_order(axes, "independent")
    moved = array.transpose(order)  # numpy and dask alike
    loop_shape = moved.shape[:n_loop]
    n = int(np.prod(loop_shape))
    return np.stack([np.asarray(moved[np.unravel_index(p, loop_shape)], dtype=np.float64)
                     for p in spread_indices(n, count)])


def stack_noise_report(
    array: Any, axes: str, noise: PoissonGaussian | None = None, *, offset: float | None = None
) -> NoiseReport:
    """Poisson-Gaussian parameters of a stack (estimated unless given) and the noise level they
    leave after the transform, from up to three evenly spaced planes (every channel of them).

    Works on numpy and dask arrays (only the sampled planes are computed).  See
    :func:`~napari_ntk_denoise.microscopy.noise_estimation.noise_report`.
    """
    ax = check_axes(axes, array.ndim)
    return noise_report(_sample_planes(array, ax), noise, offset=offset)


def estimate_stack_noise(array: Any, axes: str, *, offset: float | None = None) -> PoissonGaussian:
    """Poisson-Gaussian parameters of a stack: :func:`stack_noise_report`'s estimate."""
    return stack_noise_report(array, axes, offset=offset).noise


def estimate_stack_sigma(array: Any, axes: str) -> float:
    """Gaussian noise level of a stack: the mean wavelet estimate of up to three evenly spaced
    Y-X planes (every channel of them), so that one value serves every plane and every chunk.

    Works on numpy and dask arrays (only the sampled planes are computed).
    """
    ax = check_axes(axes, array.ndim)
    return float(np.mean([estimate_noise_sigma(p) for p in _sample_planes(array, ax)]))


def _check_options(channels: str, noise_model: str, sigma: float | None,
                   noise: PoissonGaussian | NoiseReport | None, patches: str, axes: str) -> None:
    if channels not in ("colour", "independent"):
        raise ValueError(f"channels must be 'colour' or 'independent', got {channels!r}")
    if noise_model not in ("gaussian", "poisson-gaussian"):
        raise ValueError(f"noise_model must be 'gaussian' or 'poisson-gaussian', got {noise_model!r}")
    if noise_model == "poisson-gaussian" and sigma is not None:
        raise ValueError("the variance-stabilising transform sets the noise level; give gain and read noise instead")
    if noise_model == "gaussian" and noise is not None:
        raise ValueError("Poisson-Gaussian parameters were given with noise_model='gaussian'")
    if patches not in ("2d", "3d"):
        raise ValueError(f"patches must be '2d' or '3d', got {patches!r}")
    if patches == "3d" and "Z" not in axes:
        raise ValueError(f"patches='3d' needs a Z axis, but axes are {axes!r}")


@dataclass(frozen=True)
class StackOptions:
    """How a stack is read and denoised (the options of :func:`iter_denoise_stack` that are not
    those of the tiles or of the NTK filter).

    Attributes
    ----------
    axes : str
        One letter per dimension from ``"TZCYX"``, e.g. ``"TZYX"``, ``"CYX"``, ``"ZYXC"``.
    channels : {"colour", "independent"}
        ``C`` as colour (one filter per plane, patches over all channels) or as separate planes.
    noise_model : {"gaussian", "poisson-gaussian"}
        With ``"poisson-gaussian"`` the data are stabilised by the generalized Anscombe transform,
        denoised with the noise level the transform leaves in each tile
        (:func:`~napari_ntk_denoise.microscopy.noise_estimation.stabilised_sigma`, below 1 at low
        counts) and mapped back with the exact unbiased inverse.
    noise : PoissonGaussian or NoiseReport, optional
        Gain, read noise and offset; estimated from the stack (:func:`stack_noise_report`) when
        omitted.  A :class:`~napari_ntk_denoise.microscopy.noise_estimation.NoiseReport` also
        carries the blur of spatially correlated noise.
    patches : {"2d", "3d"}
        ``"2d"``: every Y-X plane on its own; ``"3d"``: every Z-Y-X volume with the kernel of 3-D
        patches (``kernel_size_z`` sets their depth; needs a ``Z`` axis).
    tile : int, optional
        Longest tile side along Y and X: by default, for planes, what
        :func:`~napari_ntk_denoise.microscopy.tiling.choose_tile` picks on the middle plane (256,
        or 128 where its kernel's spectrum does not fall within the rank); 128 for volumes, whose
        tiles are also cut along Z at ``tile_z = 16``.  See
        :func:`~napari_ntk_denoise.microscopy.tiling.iter_denoise_tiled` for ``overlap``,
        ``tile_z`` and ``overlap_z``.
    """

    axes: str = "YX"
    channels: Literal["colour", "independent"] = "colour"
    noise_model: NoiseModel = "gaussian"
    noise: PoissonGaussian | NoiseReport | None = None
    patches: Patches = "2d"
    tile: int | None = None

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple["StackOptions", dict[str, Any]]:
        """The stack options among ``options``, and the rest (tiling and NTK options)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in options.items() if k in names}), {
            k: v for k, v in options.items() if k not in names}


@dataclass(frozen=True)
class _Plan:
    """A checked stack request: layout, noise and the keyword arguments of every tile."""

    axes: str
    order: list[int]
    n_loop: int
    colour: bool
    sigma: float | None
    noise: PoissonGaussian | None
    tiling: dict[str, Any]
    grid: TileGrid

    @property
    def channel_axis(self) -> int | None:
        return -1 if self.colour else None

    def stabilise(self, unit: np.ndarray) -> np.ndarray:
        return unit if self.noise is None else gat_forward(unit, self.noise)

    def restore(self, unit: np.ndarray) -> np.ndarray:
        return unit if self.noise is None else gat_inverse(unit, self.noise)

    @property
    def unit_sigma(self) -> TileSigma:
        """The noise level of a tile: ``sigma``, or after the transform the one it leaves in the tile."""
        return self.sigma if self.noise is None else partial(stabilised_sigma, noise=self.noise)

    def with_default_tile(self, array: Any) -> _Plan:
        """The plan with the default tile side: :func:`fixed_tile`'s, or what :func:`choose_tile`
        picks on the middle plane of ``array`` (read only then)."""
        options = dict(self.ntk)
        device, overlap = options.pop("device", None), self.tiling.get("overlap")
        shape = tuple(array.shape[i] for i in self.order[self.n_loop :])
        tile = fixed_tile(shape[:-1] if self.colour else shape, overlap, **options)
        if tile is None:
            unit = self.stabilise(_middle_unit(array, self))
            tile = choose_tile(unit, self.channel_axis, device, overlap, **options)
        tiling = {**self.tiling, "tile": tile}
        return dataclasses.replace(self, tiling=tiling,
                                   grid=check_tiled_request(shape if self.colour else shape + (1,), **tiling))

    @property
    def ntk(self) -> dict[str, Any]:
        """The engine options of one tile: :attr:`tiling` without the tile geometry."""
        return {k: v for k, v in self.tiling.items() if k not in ("tile", "overlap", "tile_z", "overlap_z")}


def _middle_unit(array: Any, plan: _Plan) -> np.ndarray:
    """The middle plane (or volume) of the stack, in the plan's layout."""
    moved = np.transpose(array, plan.order)
    loop = moved.shape[: plan.n_loop]
    return np.asarray(moved[np.unravel_index(int(np.prod(loop)) // 2, loop)] if loop else moved)


def _plan(array: Any, sigma: float | None, options: dict[str, Any]) -> _Plan:
    """Check everything (memory guard included) and estimate the noise, before any denoising."""
    opts, kwargs = StackOptions.split(options)
    axes, channels, noise_model, noise, patches, tile = (opts.axes, opts.channels, opts.noise_model, opts.noise,
                                                         opts.patches, opts.tile)
    ax = check_axes(axes, array.ndim)
    _check_options(channels, noise_model, sigma, noise, patches, ax)
    order, n_loop = plane_order(ax, channels, patches)
    shape = tuple(array.shape[i] for i in order[n_loop:])
    colour = channels == "colour" and "C" in ax
    volume = patches == "3d"
    tiling = dict(kwargs, tile=tile, volume=volume)
    grid = check_tiled_request(shape if colour else shape + (1,),  # the largest default side until one is chosen
                               **{**tiling, "tile": TILE["2d"] if tile is None else tile})
    if noise_model == "poisson-gaussian" and not isinstance(noise, PoissonGaussian):
        report = stack_noise_report(array, ax) if noise is None else noise
        noise = report.noise
        if report.blur > 0:  # spatially correlated noise: SURE's probe coloured alike
            tiling["noise_blur"] = report.blur
    if noise_model == "gaussian" and sigma is None:
        sigma = estimate_stack_sigma(array, ax)
    plan = _Plan(ax, order, n_loop, colour, sigma, noise, tiling, grid)
    return plan if tile is not None else plan.with_default_tile(array)


@keeps_freed_memory
def iter_denoise_stack(
    array: np.ndarray, sigma: float | None = None, **options: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Denoise every Y-X plane (or Z-Y-X volume) of an in-memory stack, streaming progress.

    Parameters
    ----------
    array : numpy.ndarray
        The stack; never modified.
    sigma : float, optional
        Gaussian noise level (data units); estimated once for the stack
        (:func:`estimate_stack_sigma`) when omitted.  Not allowed with
        ``noise_model="poisson-gaussian"`` (the transformed data have unit variance).
    **options
        The fields of :class:`StackOptions` (``axes``, ``channels``, ``noise_model``, ``noise``,
        ``patches``, ``tile``), the tiling options of
        :func:`~napari_ntk_denoise.microscopy.tiling.iter_denoise_tiled` and the NTK options of
        :func:`~napari_ntk_denoise.engine.denoise.iter_denoise_ntk`.

    Yields
    ------
    Progress
        ``stage="planes"`` after each plane (or volume), and every plane's tile and kernel events.

    Returns
    -------
    numpy.ndarray
        Denoised stack in the input's layout; float32 (float64 for float64 input).

    References
    ----------
    J. Tachella, J. Tang, M. Davies, CVPR 2021.  M. Makitalo, A. Foi, IEEE TIP 22(1), 2013.
    """
    arr = np.asarray(array)
    plan = _plan(arr, sigma, options)
    moved = np.transpose(arr, plan.order)
    out = np.empty(moved.shape, np.float64 if arr.dtype == np.float64 else np.float32)
    loop_shape = moved.shape[: plan.n_loop]
    n_units, unit = int(np.prod(loop_shape)), "volume" if plan.tiling["volume"] else "plane"
    for k, idx in enumerate(np.ndindex(*loop_shape)):
        gen = iter_denoise_tiled(plan.stabilise(moved[idx]), plan.unit_sigma, channel_axis=plan.channel_axis,
                                 **plan.tiling)
        result = yield from forward_progress(gen, f"{unit} {k + 1}/{n_units}: ", part=(k, n_units))
        out[idx] = plan.restore(result.image)
        steps = ", ".join(map(str, result.t))
        yield Progress("planes", k + 1, n_units, f"{unit} {k + 1}/{n_units}: t = {steps}", steps=tuple(result.t))
    return np.ascontiguousarray(np.transpose(out, np.argsort(plan.order)))


def _denoise_block(block: np.ndarray, plan: _Plan, block_info: dict | None = None) -> np.ndarray:
    """Weighted denoised tile(s) of one halo-widened chunk: ``w z`` per unit, float64, moved layout."""
    location = block_info[0]["chunk-location"][plan.n_loop : plan.n_loop + len(plan.grid.halos)]
    weight = plan.grid.window(location)
    if plan.colour:
        weight = weight[..., None]
    out = np.empty(block.shape)
    for idx in np.ndindex(*block.shape[: plan.n_loop]):
        res = drain(iter_denoise_tile(plan.stabilise(block[idx]), plan.unit_sigma, plan.channel_axis, **plan.ntk))
        out[idx] = weight * res.image
    return out


def _overlap_add(plan: _Plan, dtype: np.dtype, location: tuple[int, ...], *parts: np.ndarray) -> np.ndarray:
    """One output chunk: the weighted tiles over it (its own and its neighbours', ``parts`` in
    :func:`_neighbours` order) summed, normalised by the summed weights and restored."""
    core = tuple(slice(b[i], b[i + 1]) for b, i in zip(plan.grid.cores, location))
    loop = (slice(None),) * plan.n_loop
    total = np.zeros(parts[0].shape[: plan.n_loop] + tuple(c.stop - c.start for c in core)
                     + parts[0].shape[plan.n_loop + len(core) :])
    wsum = np.zeros(total.shape[plan.n_loop : plan.n_loop + len(core)])
    for loc, part in zip(_neighbours(plan.grid, location), parts):
        tile = plan.grid.tile(loc)
        lo = [max(c.start, t.start) for c, t in zip(core, tile)]
        hi = [min(c.stop, t.stop) for c, t in zip(core, tile)]
        src = tuple(slice(a - t.start, b - t.start) for a, b, t in zip(lo, hi, tile))
        dst = tuple(slice(a - c.start, b - c.start) for a, b, c in zip(lo, hi, core))
        total[loop + dst] += part[loop + src]
        wsum[dst] += plan.grid.window(loc)[src]
    return plan.restore(total / (wsum[..., None] if plan.colour else wsum)).astype(dtype)


def _neighbours(grid: TileGrid, location: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-axis indices of the tiles that overlap the core at ``location`` (itself included)."""
    return [tuple(i + o for i, o in zip(location, off)) for off in itertools.product((-1, 0, 1), repeat=len(location))
            if all(0 <= i + o < len(b) - 1 for i, o, b in zip(location, off, grid.cores))]


def denoise_stack(array: Any, sigma: float | None = None, **options: Any) -> Any:
    """Denoise a numpy or dask stack; dask in, (lazy) dask out, chunk by chunk.

    Parameters are those of :func:`iter_denoise_stack`.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        For dask input, a lazy array with the same result as the in-memory path.  Along the
        spatial axes the input is rechunked to the tile cores (:class:`~napari_ntk_denoise.microscopy.tiling.
        TileGrid`, the same cuts as in memory), along the loop axes (``T``, independent ``C``) it
        keeps its chunks; colour ``C`` is one chunk.  Every chunk widened by the tile halo (half
        the overlap, at least half the receptive field on each side) is one task, like
        ``map_overlap``; instead of trimming the halos, each output chunk adds the raised-cosine
        weighted tiles that cover it (its own and its neighbours'), so there are no seams.  Compute
        it with any scheduler, e.g. a ``dask.distributed.Client``.

    Notes
    -----
    The noise level (``sigma``, or the Poisson-Gaussian parameters) is estimated once, eagerly,
    from up to three planes when not given, so every task uses the same; the memory guard also
    runs eagerly, on this machine's memory, before the graph is built, and so does the choice of
    the tile side when ``tile`` is not given (it reads the middle plane).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stack = np.tile(np.linspace(0, 1, 32), (2, 32, 1)) + 0.1 * rng.standard_normal((2, 32, 32))
    >>> out = denoise_stack(stack, 0.1, axes="ZYX", kernel_size=5, fraction=0.1)
    >>> out.shape
    (2, 32, 32)
    """
    da = sys.modules.get("dask.array")  # an array cannot be a dask array unless dask.array was imported
    if da is None or not isinstance(array, da.Array):
        return drain(iter_denoise_stack(array, sigma, **options))
    import dask

    plan = _plan(array, sigma, options)
    n_sp = len(plan.grid.halos)
    for name, cores, halo in zip("ZYX"[-n_sp:], plan.grid.cores, plan.grid.halos):
        if len(cores) > 2 and min(b - a for a, b in zip(cores, cores[1:])) < halo:
            raise ValueError(f"the tiles along {name} leave chunks narrower than the halo {halo} of their overlap; "
                             "use larger tiles or a smaller overlap")
    moved = array.transpose(plan.order)
    chunks = moved.chunks[: plan.n_loop] + tuple(tuple(np.diff(b)) for b in plan.grid.cores) + moved.shape[
        plan.n_loop + n_sp :]
    moved = moved.rechunk(chunks)
    depth = {plan.n_loop + a: h for a, h in enumerate(plan.grid.halos)}
    widened = da.overlap.overlap(moved, depth=depth, boundary="none")
    weighted = widened.map_blocks(_denoise_block, plan=plan, dtype=np.float64)
    parts = weighted.to_delayed()
    dtype = np.dtype(np.float64 if array.dtype == np.float64 else np.float32)
    blocks = np.empty(parts.shape, dtype=object)
    assemble = dask.delayed(partial(_overlap_add, plan, dtype), pure=True)
    for index in np.ndindex(*parts.shape):
        n_loop = plan.n_loop
        loop, location, rest = index[:n_loop], index[n_loop : n_loop + n_sp], index[n_loop + n_sp :]
        neighbours = [parts[loop + loc + rest] for loc in _neighbours(plan.grid, location)]
        shape = tuple(c[i] for c, i in zip(moved.chunks, index))
        blocks[index] = da.from_delayed(assemble(location, *neighbours), shape=shape, dtype=dtype)
    return da.block(blocks.tolist()).transpose(np.argsort(plan.order).tolist())
