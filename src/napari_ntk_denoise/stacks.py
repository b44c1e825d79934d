"""nD microscopy stacks: plane-by-plane NTK denoising of numpy or (lazy) dask arrays.

An axes string such as ``"TZYX"``, ``"CYX"`` or ``"ZYXC"`` names every dimension.  Each Y-X plane is
denoised independently (with tiling above the tile size); channels ``C`` are either colour (one
filter shared by all channels of a plane) or independent planes.  Dask input is processed lazily,
one chunk of whole planes per task, and returns a dask array, so it runs on any dask scheduler,
including a ``dask.distributed`` cluster.  Poisson-Gaussian data go through the generalized
Anscombe transform (:mod:`napari_ntk_denoise.vst`).
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from functools import partial
from typing import Any, Literal

import numpy as np

from .events import Progress, drain, forward_progress
from .tiling import check_tiled_request, iter_denoise_tiled
from .vst import PoissonGaussian, estimate_poisson_gaussian, gat_forward, gat_inverse

__all__ = ["AXES", "check_axes", "estimate_stack_noise", "iter_denoise_stack", "denoise_stack"]

#: recognised axis letters: time, depth, channel, rows, columns
AXES = "TZCYX"

NoiseModel = Literal["gaussian", "poisson-gaussian"]


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


def _plane_order(axes: str, channels: str) -> tuple[list[int], int]:
    """Permutation putting loop axes first, then Y, X (and C when colour); number of loop axes."""
    colour = channels == "colour" and "C" in axes
    inner = ["Y", "X"] + (["C"] if colour else [])
    loop = [i for i, a in enumerate(axes) if a not in inner]
    return loop + [axes.index(a) for a in inner], len(loop)


def _sample_planes(array: np.ndarray | Any, axes: str, count: int = 3) -> np.ndarray:
    """Up to ``count`` evenly spaced Y-X planes (every channel of them), as a numpy ``(n, Y, X)`` stack."""
    order, n_loop = _plane_order(axes, "independent")
    moved = array.transpose(order)  # numpy and dask alike
    loop_shape = moved.shape[:n_loop]
    n = int(np.prod(loop_shape))
    picks = np.unique(np.round(np.linspace(0, n - 1, min(count, n))).astype(int))
    return np.stack([np.asarray(moved[np.unravel_index(p, loop_shape)], dtype=np.float64) for p in picks])


def estimate_stack_noise(array: Any, axes: str, *, offset: float = 0.0) -> PoissonGaussian:
    """Poisson-Gaussian parameters of a stack, from up to three evenly spaced planes.

    Works on numpy and dask arrays (only the sampled planes are computed).  See
    :func:`~napari_ntk_denoise.vst.estimate_poisson_gaussian`.
    """
    ax = check_axes(axes, array.ndim)
    return estimate_poisson_gaussian(_sample_planes(array, ax), offset=offset)


def _check_options(channels: str, noise_model: str, sigma: float | None, noise: PoissonGaussian | None) -> None:
    if channels not in ("colour", "independent"):
        raise ValueError(f"channels must be 'colour' or 'independent', got {channels!r}")
    if noise_model not in ("gaussian", "poisson-gaussian"):
        raise ValueError(f"noise_model must be 'gaussian' or 'poisson-gaussian', got {noise_model!r}")
    if noise_model == "poisson-gaussian" and sigma is not None:
        raise ValueError("sigma is 1 after the variance-stabilising transform; give gain and read noise instead")
    if noise_model == "gaussian" and noise is not None:
        raise ValueError("Poisson-Gaussian parameters were given with noise_model='gaussian'")


def iter_denoise_stack(
    array: np.ndarray,
    sigma: float | None = None,
    *,
    axes: str = "YX",
    channels: Literal["colour", "independent"] = "colour",
    noise_model: NoiseModel = "gaussian",
    noise: PoissonGaussian | None = None,
    tile: int = 512,
    overlap: int | None = None,
    **ntk_kwargs: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Denoise every Y-X plane of an in-memory stack, streaming progress.

    Parameters
    ----------
    array : numpy.ndarray
        The stack; never modified.
    sigma : float, optional
        Gaussian noise level (data units); estimated per plane when omitted.  Not allowed with
        ``noise_model="poisson-gaussian"`` (the transformed data have unit variance).
    axes : str
        One letter per dimension from ``"TZCYX"``, e.g. ``"TZYX"``, ``"CYX"``, ``"ZYXC"``.
    channels : {"colour", "independent"}
        ``C`` as colour (one filter per plane, patches over all channels) or as separate planes.
    noise_model : {"gaussian", "poisson-gaussian"}
        With ``"poisson-gaussian"`` each plane is stabilised by the generalized Anscombe transform,
        denoised with ``sigma = 1`` and mapped back with the exact unbiased inverse.
    noise : PoissonGaussian, optional
        Gain, read noise and offset; estimated from the stack (:func:`estimate_stack_noise`) when
        omitted.
    tile, overlap : int
        Planes larger than ``tile`` are denoised in overlapping tiles
        (:func:`~napari_ntk_denoise.tiling.iter_denoise_tiled`).
    **ntk_kwargs
        Further arguments of :func:`~napari_ntk_denoise.denoise.iter_denoise_ntk`.

    Yields
    ------
    Progress
        ``stage="planes"`` after each plane, and every plane's tile and kernel events.

    Returns
    -------
    numpy.ndarray
        Denoised stack in the input's layout; float32 (float64 for float64 input).

    References
    ----------
    J. Tachella, J. Tang, M. Davies, CVPR 2021.  M. Makitalo, A. Foi, IEEE TIP 22(1), 2013.
    """
    arr = np.asarray(array)
    ax = check_axes(axes, arr.ndim)
    _check_options(channels, noise_model, sigma, noise)
    if noise_model == "poisson-gaussian" and noise is None:
        noise = estimate_stack_noise(arr, ax)
    order, n_loop = _plane_order(ax, channels)
    moved = np.transpose(arr, order)
    colour = moved.ndim - n_loop == 3
    out_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    out = np.empty(moved.shape, out_dtype)
    loop_shape = moved.shape[:n_loop]
    n_planes = int(np.prod(loop_shape))
    for k, idx in enumerate(np.ndindex(*loop_shape)):
        plane, plane_sigma = moved[idx], sigma
        if noise is not None:
            plane, plane_sigma = gat_forward(plane, noise), 1.0
        gen = iter_denoise_tiled(plane, plane_sigma, tile=tile, overlap=overlap,
                                 channel_axis=-1 if colour else None, **ntk_kwargs)
        result = (yield from forward_progress(gen, f"plane {k + 1}/{n_planes}: ")).image
        out[idx] = gat_inverse(result, noise) if noise is not None else result
        yield Progress("planes", k + 1, n_planes, f"plane {k + 1}/{n_planes}")
    return np.ascontiguousarray(np.transpose(out, np.argsort(order)))


def _denoise_block(block: np.ndarray, **kwargs: Any) -> np.ndarray:
    return drain(iter_denoise_stack(block, **kwargs))


def denoise_stack(
    array: Any,
    sigma: float | None = None,
    *,
    axes: str = "YX",
    channels: Literal["colour", "independent"] = "colour",
    noise_model: NoiseModel = "gaussian",
    noise: PoissonGaussian | None = None,
    **kwargs: Any,
) -> Any:
    """Denoise a numpy or dask stack plane by plane; dask in, (lazy) dask out.

    Parameters are those of :func:`iter_denoise_stack` (``tile``, ``overlap`` and the NTK
    options in ``kwargs``).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        For dask input, a lazy array with one task per chunk of whole planes: the input is
        rechunked to single chunks along Y, X (and C for colour) and keeps its chunks along the
        other axes.  Compute it with any scheduler, e.g. a ``dask.distributed.Client``.

    Notes
    -----
    Y-X chunks are merged rather than processed with ``map_overlap``: the tiles of a plane are
    blended with smooth weights (:mod:`~napari_ntk_denoise.tiling`), which needs the neighbouring
    tiles' outputs, and a 2048 x 2048 float32 plane is only 16 MiB.  Poisson-Gaussian parameters
    not given are estimated once, eagerly, from three planes, so every task uses the same ones.
    The memory guard also runs eagerly, on this machine's memory, before the graph is built.

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
        return drain(iter_denoise_stack(array, sigma, axes=axes, channels=channels, noise_model=noise_model,
                                        noise=noise, **kwargs))
    ax = check_axes(axes, array.ndim)
    _check_options(channels, noise_model, sigma, noise)
    colour_channels = array.shape[ax.index("C")] if "C" in ax and channels == "colour" else 1
    check_tiled_request((array.shape[ax.index("Y")], array.shape[ax.index("X")], colour_channels), **kwargs)
    if noise_model == "poisson-gaussian" and noise is None:
        noise = estimate_stack_noise(array, ax)
    whole = {"Y", "X"} | ({"C"} if channels == "colour" else set())
    chunks = {i: -1 for i, a in enumerate(ax) if a in whole}
    out_dtype = np.float64 if array.dtype == np.float64 else np.float32
    func = partial(_denoise_block, sigma=sigma, axes=ax, channels=channels, noise_model=noise_model, noise=noise,
                   **kwargs)
    return array.rechunk(chunks).map_blocks(func, dtype=out_dtype, meta=np.empty((0,) * array.ndim, out_dtype))
