"""``ntk-denoise bench``: the paper's Table 1 (or Figure 4 or 6) on a folder of clean images.

:func:`add_parser` registers the subcommand on the package CLI's subparsers and sets
``func=run``.  The run prints a markdown table (PSNR per image and method, means, seconds per
image), writes the JSON of :func:`~napari_ntk_denoise.bench.write_json` to ``--json``, the same
table beside it (``.md``) and, unless ``--no-plots``, PNG plots beside it: per image, PSNR against
iteration of the DIP rows and the analytic twicing curve (``<stem>_<image>_curves.png``), PSNR and
weight changes against width (``<stem>_figure4.png``) or PSNR against depth (``<stem>_figure6.png``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch

from ..bench import (
    FIGURE4_WIDTHS,
    METHODS,
    BenchSettings,
    Record,
    Skip,
    iter_bench,
    iter_figure4,
    iter_figure6,
    list_images,
    machine_info,
    markdown_table,
    plot_curves,
    plot_figure4,
    plot_figure6,
    write_json,
)
from ..engine.events import drain

__all__ = ["add_parser", "run"]

DEFAULT_METHODS = "nystrom-image,nystrom-guided,nlm,bm3d"
#: side of the centre crop that ``--figure4`` and ``--figure6`` use unless ``--crop`` is given
#: (deep analytic kernels and wide networks are slow on whole images on a CPU)
FIGURE_CROP = 64


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    widths = tuple(_positive(w) for w in text.split(",") if w.strip())
    if not widths:
        raise argparse.ArgumentTypeError("needs at least one width")
    return widths


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` on the ``ntk-denoise`` subparsers."""
    p = subparsers.add_parser("bench", help="PSNR table of NTK, DIP, NLM and BM3D on a folder of clean images",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of clean images (PNG, TIFF, JPEG)")
    p.add_argument("--json", required=True, metavar="OUT", help="where to write the results (JSON)")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0-255 scale (default 25)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: {DEFAULT_METHODS})")
    p.add_argument("--max-iters", type=_positive, default=3000, help="DIP training iterations (default 3000)")
    p.add_argument("--stop", choices=("oracle", "sure"), default="oracle",
                   help="oracle: best PSNR over steps/iterations, as in the paper (default); sure: MC-SURE")
    p.add_argument("--seed", type=int, default=0, help="noise, anchor and weight seed (default 0)")
    p.add_argument("--crop", type=_positive, default=None, help="centre crop of N x N pixels (CPU budget)")
    p.add_argument("--limit", type=_positive, default=None, help="only the first N images (by name)")
    figure = p.add_mutually_exclusive_group()
    figure.add_argument("--figure4", action="store_true",
                        help=f"Figure 4: autoencoder with noise input at the --widths, GD and Adam, PSNR and weight "
                             f"changes; --crop defaults to {FIGURE_CROP}")
    figure.add_argument("--figure6", action="store_true",
                        help=f"Figure 6: vanilla CNN depths 2, 3, 4, 7 (receptive field 13), Nystrom, GD and Adam; "
                             f"--crop defaults to {FIGURE_CROP}")
    p.add_argument("--widths", type=_widths, default=FIGURE4_WIDTHS, metavar="C,C,...",
                   help=f"--figure4: hidden channels (default {','.join(map(str, FIGURE4_WIDTHS))})")
    p.add_argument("--kernel-size", type=_positive, default=None, help="Nystrom rows: convolution size (default 11)")
    p.add_argument("--fraction", type=float, default=None, help="Nystrom rows: anchor fraction (default 0.02)")
    p.add_argument("--rank", type=_positive, default=None, help="Nystrom rows: eigenimages (default 256)")
    p.add_argument("--width", type=_positive, default=64, help="DIP rows: hidden channels (default 64)")
    p.add_argument("--every", type=_positive, default=10, help="DIP rows: iterations between PSNR points (default 10)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--quiet", action="store_true", help="no line per result on stderr")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> BenchSettings:
    ntk = {k: getattr(args, k) for k in ("kernel_size", "fraction", "rank") if getattr(args, k) is not None}
    crop = FIGURE_CROP if (args.figure4 or args.figure6) and args.crop is None else args.crop
    return BenchSettings(sigma=args.sigma, stop=args.stop, max_iters=args.max_iters, seed=args.seed, crop=crop,
                         limit=args.limit, device=args.device, ntk=ntk, width=args.width, every=args.every)


def _log(stream: TextIO, quiet: bool) -> Callable[[Record | Skip], None]:
    def on_event(event: Record | Skip) -> None:
        if isinstance(event, Skip):
            stream.write(f"ntk-denoise bench: {event.reason}\n")
        elif not quiet:
            depth = "" if event.depth is None else f" L={event.depth} r={event.kernel_size}"
            depth += "" if event.width is None else f" c={event.width}"
            stream.write(f"{event.image:>12s} {event.method}{depth}: {event.psnr:.2f} dB"
                         f" (noisy {event.noisy_psnr:.2f}),"
                         f" t={event.t}, {event.seconds:.1f} s\n")
        stream.flush()

    return on_event


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Execute ``ntk-denoise bench``; returns the exit status."""
    err = sys.stderr if stream is None else stream
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    paths = list_images(args.images, args.limit)
    if args.figure4:
        result = drain(iter_figure4(paths, settings, args.widths), _log(err, args.quiet))
    elif args.figure6:
        result = drain(iter_figure6(paths, settings), _log(err, args.quiet))
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        result = drain(iter_bench(paths, methods, settings), _log(err, args.quiet))
    out = Path(args.json)
    write_json(out, result, machine_info())
    table = markdown_table(result.records)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    if args.no_plots:
        return 0
    if importlib.util.find_spec("matplotlib") is None:
        err.write("ntk-denoise bench: no plots: matplotlib is not installed (pip install matplotlib)\n")
        return 0
    if args.figure4:
        plot_figure4(out.with_name(f"{out.stem}_figure4.png"), result.records)
    if args.figure6:
        plot_figure6(out.with_name(f"{out.stem}_figure6.png"), result.records)
    for image, curves in result.curves.items():
        plot_curves(out.with_name(f"{out.stem}_{image}_curves.png"), image, curves)
    return 0
