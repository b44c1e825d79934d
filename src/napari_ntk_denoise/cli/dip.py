"""``ntk-denoise dip``: deep-image-prior training from the command line.

:func:`add_parser` registers the subcommand on the package CLI's subparsers and sets
``func=run``.  Files are read and written by :mod:`napari_ntk_denoise.io.imageio`, in the file's
units (``--sigma 25`` for an 8-bit image; the trainer scales internally), and the output keeps
the input's dtype (``uint8`` stays ``uint8``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import numpy as np

from ..dip.architectures import ARCHITECTURES
from ..dip.config import MAX_ITERATIONS, MAX_WIDTH, PATIENCE, DIPConfig
from ..dip.events import DIPProgress, DIPResult, DIPStep
from ..dip.trainer import iter_dip
from ..engine.events import drain
from ..io.imageio import guess_channel_axis, read_image, write_image
from ._progress import ProgressBar

__all__ = ["add_parser", "run"]


def _bounded_int(upper: int):
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= upper:
            raise argparse.ArgumentTypeError(f"must be an integer in [1, {upper}], got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _channel_axis(text: str) -> str | int | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--channel-axis takes an integer, 'auto' or 'none', not {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``dip`` subcommand (its handler is ``args.func``, i.e. :func:`run`)."""
    p = subparsers.add_parser(
        "dip",
        help="denoise by training a deep image prior (vanilla CNN, U-Net or autoencoder)",
        description="Train a network on one noisy image (Tachella et al. 2021, sections 5-6) and write the "
        "best output: by PSNR against --reference, else by MC-SURE (image input to the vanilla CNN or gradient "
        "descent), else by the residual on 5%% of the pixels held out of the loss (and of the input).",
    )
    p.add_argument("input_path", metavar="INPUT", help="noisy image (PNG, JPEG, TIFF)")
    p.add_argument("-o", "--output", required=True, help="output image (same dtype as the input)")
    d = DIPConfig()
    p.add_argument("--arch", choices=ARCHITECTURES, default=d.arch, help=f"architecture (default: {d.arch})")
    p.add_argument("--optim", choices=("adam", "gd"), default=d.optimizer, help=f"optimiser (default: {d.optimizer})")
    p.add_argument("--input", choices=("noise", "image"), default="noise",
                   help="network input: noise (the DIP; default) or the noisy image")
    p.add_argument("--iters", type=_bounded_int(MAX_ITERATIONS), default=d.iterations,
                   help=f"iterations (default: {d.iterations})")
    p.add_argument("--reference", default=None, help="clean image: print PSNR and keep the best output by it")
    p.add_argument("--width", type=_bounded_int(MAX_WIDTH), default=d.width,
                   help=f"hidden channels (default: {d.width})")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: Adam 0.01 for unet/ae/skip, 0.001 for vanilla; GD 1/lambda_max "
                        "of the NTK at initialisation)")
    p.add_argument("--patience", type=_bounded_int(MAX_ITERATIONS), default=PATIENCE,
                   help=f"stop after this many iterations without a better output (default: {PATIENCE})")
    p.add_argument("--time-limit", type=_positive_float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of training, keeping the best output (default: no limit)")
    p.add_argument("--every", type=_bounded_int(MAX_ITERATIONS), default=d.every,
                   help=f"iterations between evaluations (default: {d.every})")
    p.add_argument("--sigma", type=_positive_float, default=None,
                   help="noise level in the image's units (estimated if omitted)")
    p.add_argument("--channel-axis", type=_channel_axis, default="auto",
                   help="axis of the colour channels, 'none', or 'auto' (RGB(A) last axis; alpha dropped)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _load(path: str, channel_axis: str | int | None) -> tuple[np.ndarray, int | None]:
    image = read_image(path)
    if channel_axis != "auto":
        return image, channel_axis
    axis = guess_channel_axis(image)
    return (image[..., :3] if axis is not None and image.shape[-1] == 4 else image), axis


def _dtype_range(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _figures(loss: float, psnr: float | None, sure: float | None) -> str:
    text = f"loss {loss:.4g}"
    if psnr is not None and np.isfinite(psnr):
        text += f"  PSNR {psnr:.2f} dB"
    if sure is not None and np.isfinite(sure):
        text += f"  SURE {sure:.4g}"
    return text


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Execute ``ntk-denoise dip``; returns the exit status.

    The progress bar goes to ``stream`` (standard error by default) unless ``--quiet``; the best
    iteration's figures (data units) go to standard output.
    """
    stream = sys.stderr if stream is None else stream
    noisy, axis = _load(args.input_path, args.channel_axis)
    reference, data_range = None, None
    if args.reference:
        reference, _ = _load(args.reference, args.channel_axis)
        data_range = _dtype_range(reference.dtype)
    gen = iter_dip(
        noisy, channel_axis=axis, arch=args.arch, optimizer=args.optim, input=args.input, width=args.width,
        lr=args.lr, iterations=args.iters, every=args.every, reference=reference, sigma=args.sigma,
        data_range=data_range, patience=args.patience, device=args.device, seed=args.seed,
        time_limit=None if args.time_limit is None else 60 * args.time_limit,
    )
    bar, figures, tick = ProgressBar(stream), "", max(1, args.iters // 200)

    def show(event) -> None:
        nonlocal figures
        if isinstance(event, DIPStep):
            figures = _figures(event.loss, event.psnr, event.sure)
        shown = isinstance(event, DIPStep) or (isinstance(event, DIPProgress) and event.iteration % tick == 0)
        if shown and not args.quiet:
            bar.update(f"dip {args.arch} {args.optim}", event.iteration, args.iters, figures)

    result: DIPResult = drain(gen, show)
    write_image(args.output, result.image, noisy.dtype)
    best = int(np.flatnonzero(result.iterations == result.best_iteration)[0])
    p = result.params
    print(f"best iteration {result.best_iteration} of {args.iters} (by {result.criterion}): "
          + _figures(float(result.loss[best]), None if result.psnr is None else float(result.psnr[best]),
                     None if result.sure is None else float(result.sure[best])))
    if p["stopped"]:
        print(f"stopped at iteration {p['iterations_run']}: {p['stopped']}")
    if "sigma" in p:
        print(f"sigma = {p['sigma']:.6g}" + (" (estimated)" if p["sigma_estimated"] else ""))
    print(f"{p['arch']} / {p['optimizer']} / {p['input']} input, width {p['width']}, lr {p['lr']:.3g}, "
          f"{result.timings['iterations_per_s']:.2f} it/s on {p['device']}; wrote {args.output}")
    return 0
