"""Command line for stacks: ``ntk-denoise stack INPUT -o OUTPUT --axes AXES ...``.

Reads zarr arrays (lazily, with dask) and multi-page TIFF files, writes zarr or TIFF, and runs
locally or on an existing ``dask.distributed`` cluster (``--scheduler ADDRESS``).  The main parser
(:mod:`napari_ntk_denoise.cli`) registers it with :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import cli  # module import: cli.py imports this module to register the subcommand
from ._textbar import TextBar
from .events import Progress, drain
from .imageio import read_image, write_image
from .stacks import _plane_order, check_axes, denoise_stack, estimate_stack_noise, iter_denoise_stack
from .vst import PoissonGaussian

__all__ = ["add_parser", "run"]

_ZARR = {".zarr", ".zarr2", ".zarr3"}


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() in _ZARR


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``stack`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("stack", help="denoise an nD stack (zarr or multi-page TIFF) by planes or volumes")
    p.add_argument("input_path", metavar="INPUT", help="zarr array (folder ending .zarr) or TIFF file")
    p.add_argument("-o", "--output", required=True, help="output .zarr folder or .tif file (float32)")
    p.add_argument("--axes", required=True, help="one letter per dimension from TZCYX, e.g. TZYX, CYX, ZYXC")
    p.add_argument("--component", default=None, help="array inside a zarr group")
    p.add_argument("--channels", choices=("colour", "independent"), default="colour",
                   help="C axis as colour (one filter) or as independent planes")
    p.add_argument("--noise-model", choices=("gaussian", "poisson-gaussian"), default="gaussian")
    p.add_argument("--gain", type=float, default=None, help="Poisson-Gaussian gain (estimated if omitted)")
    p.add_argument("--read-noise", type=float, default=None, help="Gaussian read noise (estimated if omitted)")
    p.add_argument("--offset", type=float, default=0.0, help="camera offset (default 0)")
    p.add_argument("--patches", choices=("2d", "3d"), default="2d",
                   help="2d: every Y-X plane on its own; 3d: Z-Y-X volumes with 3-D patches (needs Z)")
    p.add_argument("--kernel-size-z", type=int, default=None, help="patch depth along Z with --patches 3d")
    p.add_argument("--tile", type=int, default=None, help="tile side along Y, X (default 512, 128 with 3d)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap (default twice the receptive field)")
    p.add_argument("--tile-z", type=int, default=16, help="tile side along Z with --patches 3d (default 16)")
    p.add_argument("--overlap-z", type=int, default=None, help="tile overlap along Z (default twice the receptive field)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running dask.distributed scheduler, e.g. tcp://10.0.0.1:8786")
    cli._add_ntk_options(p)
    p.set_defaults(func=run)
    return p


def _noise(args: argparse.Namespace, data: Any, axes: str) -> PoissonGaussian | None:
    given = (args.gain is not None, args.read_noise is not None)
    if args.noise_model == "gaussian":
        if any(given):
            raise ValueError("--gain and --read-noise need --noise-model poisson-gaussian")
        return None
    if given == (True, True):
        return PoissonGaussian(args.gain, args.read_noise, args.offset)
    if any(given):
        raise ValueError("give both --gain and --read-noise, or neither to estimate them")
    est = estimate_stack_noise(data, axes, offset=args.offset)
    print(f"estimated gain = {est.gain:.4g}, read noise = {est.read_noise:.4g}")
    return est


def _plane_bar() -> Callable[[Progress], None]:
    """Event handler drawing a text bar over the planes of a stack."""
    bar = TextBar()

    def show(event: Progress) -> None:
        if event.stage == "planes":
            bar.update("planes", event.done, event.total)

    return show


def _read(args: argparse.Namespace) -> Any:
    path = Path(args.input_path)
    if not _is_zarr(path):
        return read_image(path)
    if not path.exists():
        raise FileNotFoundError(f"no such zarr store: {path}")
    import dask.array as da

    return da.from_zarr(str(path), component=args.component)


def run(args: argparse.Namespace) -> int:
    """Execute the ``stack`` subcommand; returns the exit status."""
    data = _read(args)
    axes = check_axes(args.axes, data.ndim)
    out_path = Path(args.output)
    if not (_is_zarr(out_path) or out_path.suffix.lower() in (".tif", ".tiff")):
        raise ValueError(f"output must end in .zarr or .tif, got {out_path}")
    if args.noise_model == "poisson-gaussian" and args.sigma is not None:
        raise ValueError("--sigma applies to the Gaussian model; give --gain and --read-noise instead")
    noise = _noise(args, data, axes)
    kw = dict(axes=axes, channels=args.channels, noise_model=args.noise_model, noise=noise, patches=args.patches,
              tile=args.tile, overlap=args.overlap, **cli._ntk_kwargs(args))
    if args.patches == "3d":
        kw.update(kernel_size_z=args.kernel_size_z, tile_z=args.tile_z, overlap_z=args.overlap_z)
    elif (args.kernel_size_z, args.overlap_z) != (None, None):
        raise ValueError("--kernel-size-z and --overlap-z need --patches 3d")
    client = None
    if args.scheduler is not None:
        from distributed import Client

        client = Client(args.scheduler)
    t0 = time.perf_counter()
    try:
        if isinstance(data, np.ndarray) and client is None:
            result = drain(iter_denoise_stack(data, args.sigma, **kw), None if args.quiet else _plane_bar())
        else:
            if isinstance(data, np.ndarray):  # one task per plane (or volume) on the cluster
                import dask.array as da

                order, n_loop = _plane_order(axes, args.channels, args.patches)
                data = da.from_array(data, chunks=tuple(1 if i in order[:n_loop] else -1 for i in range(data.ndim)))
            result = denoise_stack(data, args.sigma, **kw)
        if _is_zarr(out_path):
            import dask.array as da

            da.to_zarr(da.asarray(result), str(out_path), overwrite=True)
        else:
            write_image(out_path, np.asarray(result), np.float32)
    finally:
        if client is not None:
            client.close()
    print(f"denoised {data.shape} ({axes}) in {time.perf_counter() - t0:.2f} s -> {out_path}")
    return 0
