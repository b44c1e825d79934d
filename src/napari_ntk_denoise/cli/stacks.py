"""Command line for stacks: ``ntk-denoise stack INPUT -o OUTPUT --axes AXES ...``.

Reads zarr arrays (lazily, with dask) and multi-page TIFF files, writes zarr or TIFF, and runs
locally or on an existing ``dask.distributed`` cluster (``--scheduler ADDRESS``).  The main parser
(:mod:`napari_ntk_denoise.cli.commands`) registers it with :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.events import drain
from ..io.imageio import read_image, write_image
from ..microscopy.stacks import check_axes, denoise_stack, iter_denoise_stack, plane_order
from ._options import add_ntk_options, add_stack_options, noise_from_args, progress_handler, stack_kwargs

__all__ = ["add_parser", "run"]

_ZARR = {".zarr", ".zarr2", ".zarr3"}


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() in _ZARR


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``stack`` subcommand to an ``argparse`` subparsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From :meth:`argparse.ArgumentParser.add_subparsers`.

    Returns
    -------
    argparse.ArgumentParser
        The subcommand's parser.
    """
    p = subparsers.add_parser("stack", help="denoise an nD stack (zarr or multi-page TIFF) by planes or volumes")
    p.add_argument("input_path", metavar="INPUT", help="zarr array (folder ending .zarr) or TIFF file")
    p.add_argument("-o", "--output", required=True, help="output .zarr folder or .tif file (float32)")
    p.add_argument("--component", default=None, help="array inside a zarr group")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running dask.distributed scheduler, e.g. tcp://10.0.0.1:8786")
    add_stack_options(p, axes_required=True)
    add_ntk_options(p)
    p.set_defaults(func=run)
    return p


def _read(args: argparse.Namespace) -> Any:
    path = Path(args.input_path)
    if not _is_zarr(path):
        return read_image(path)
    if not path.exists():
        raise FileNotFoundError(f"no such zarr store: {path}")
    import dask.array as da

    return da.from_zarr(str(path), component=args.component)


def _check_output(path: Path) -> None:
    if not (_is_zarr(path) or path.suffix.lower() in (".tif", ".tiff")):
        raise ValueError(f"output must end in .zarr or .tif, got {path}")


def _denoise(data: Any, args: argparse.Namespace, kw: dict[str, Any], client: Any) -> Any:
    """In memory with a progress bar, or through dask (lazily for dask input, on ``client`` if any)."""
    if isinstance(data, np.ndarray) and client is None:
        return drain(iter_denoise_stack(data, args.sigma, **kw), progress_handler(args.quiet))
    if isinstance(data, np.ndarray):  # one task per plane (or volume) on the cluster
        import dask.array as da

        order, n_loop = plane_order(kw["axes"], args.channels, args.patches)
        data = da.from_array(data, chunks=tuple(1 if i in order[:n_loop] else -1 for i in range(data.ndim)))
    return denoise_stack(data, args.sigma, **kw)


def _write(result: Any, path: Path) -> None:
    if _is_zarr(path):
        import dask.array as da

        da.to_zarr(da.asarray(result), str(path), overwrite=True)
    else:
        write_image(path, np.asarray(result), np.float32)


def run(args: argparse.Namespace) -> int:
    """Execute the ``stack`` subcommand.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of the parser from :func:`add_parser`.

    Returns
    -------
    int
        The exit status, 0.
    """
    data = _read(args)
    axes = check_axes(args.axes, data.ndim)
    out_path = Path(args.output)
    _check_output(out_path)
    kw = stack_kwargs(args, axes)
    kw["noise"] = noise_from_args(args, data, axes)
    client = None
    if args.scheduler is not None:
        from distributed import Client

        client = Client(args.scheduler)
    t0 = time.perf_counter()
    try:
        _write(_denoise(data, args, kw, client), out_path)
    finally:
        if client is not None:
            client.close()
    print(f"denoised {data.shape} ({axes}) in {time.perf_counter() - t0:.2f} s -> {out_path}")
    return 0
