"""``ntk-denoise dip``: deep-image-prior training from the command line.

:func:`add_parser` registers the subcommand on the package CLI's subparsers and sets
``func=run``; :func:`run` executes it.  Images are read with ``tifffile`` (``.tif``/``.tiff``) or
``skimage.io`` (PNG and the rest); integer images are trained on in ``[0, 1]`` and written back
in their own dtype and range (``uint8`` stays ``uint8``), float images as they are, float32.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import numpy as np

from .._textbar import TextBar
from ..events import drain
from ..imageio import read_image, write_image
from .architectures import ARCHITECTURES
from .trainer import DIPProgress, DIPResult, DIPStep, MAX_ITERATIONS, MAX_WIDTH, iter_dip

__all__ = ["add_parser", "run"]

def _to_unit(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Float32 working copy and the factor that maps it back (the integer dtype's maximum, or 1)."""
    if image.dtype.kind in "ui":
        peak = float(np.iinfo(image.dtype).max)
        return image.astype(np.float32) / peak, peak
    return image.astype(np.float32), 1.0


def _from_unit(image: np.ndarray, peak: float, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "ui":
        return np.clip(np.rint(image * peak), 0, peak).astype(dtype)
    return image.astype(np.float32)


def _channel_axis(image: np.ndarray, option: str) -> int | None:
    """``--channel-axis``: an integer, ``none``, or ``auto`` (a last or first axis of 3 or 4)."""
    if option == "none":
        return None
    if option != "auto":
        return int(option)
    if image.ndim == 2:
        return None
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return -1
    if image.ndim == 3 and image.shape[0] in (3, 4):
        return 0
    raise ValueError(f"cannot tell the channel axis of an image of shape {image.shape}; pass --channel-axis")


def _positive_int(upper: int):
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``dip`` subcommand (its handler is ``args.func``, i.e. :func:`run`)."""
    p = subparsers.add_parser(
        "dip",
        help="denoise by training a deep image prior (vanilla CNN, U-Net or autoencoder)",
        description="Train a network on one noisy image (Tachella et al. 2021, sections 5-6) and "
        "write the best output: by PSNR against --reference, else by MC-SURE (image input), else the last.",
    )
    p.add_argument("input", metavar="INPUT", help="noisy image (.tif/.tiff, .png, ...)")
    p.add_argument("-o", "--output", required=True, help="where to write the denoised image")
    p.add_argument("--arch", choices=ARCHITECTURES, default="ae", help="architecture (default: ae)")
    p.add_argument("--optim", choices=("adam", "gd"), default="adam", help="optimiser (default: adam)")
    p.add_argument("--input", dest="input_mode", choices=("image", "noise"), default="image",
                   help="network input: the noisy image or i.i.d. noise (default: image)")
    p.add_argument("--iters", type=_positive_int(MAX_ITERATIONS), default=3000, help="iterations (default: 3000)")
    p.add_argument("--reference", metavar="CLEAN", help="clean image: report PSNR and keep the best by it")
    p.add_argument("--width", type=_positive_int(MAX_WIDTH), default=64, help="hidden channels (default: 64)")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: 0.01 for Adam, 1/lambda_max(NTK) for GD)")
    p.add_argument("--every", type=_positive_int(MAX_ITERATIONS), default=100,
                   help="iterations between evaluations (default: 100)")
    p.add_argument("--sigma", type=_positive_float,
                   help="noise standard deviation in the input file's units (e.g. 25 for 8-bit); estimated if omitted")
    p.add_argument("--channel-axis", default="auto",
                   help="axis of the colour channels, 'none', or 'auto' (a first or last axis of 3 or 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps (default: auto)")
    p.set_defaults(func=run)


def _figures(step: DIPStep, peak: float) -> str:
    text = f"loss {step.loss * peak**2:.4g}"
    if step.psnr is not None:
        text += f"  PSNR {step.psnr:.2f} dB"
    if step.sure is not None:
        text += f"  SURE {step.sure * peak**2:.4g}"
    return text


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Execute ``ntk-denoise dip``; returns the process exit status.

    The progress bar goes to ``stream`` (standard error by default), the best iteration's
    figures to standard output.
    """
    stream = sys.stderr if stream is None else stream
    raw = read_image(args.input)
    axis = _channel_axis(raw, args.channel_axis)
    image, peak = _to_unit(raw)
    reference = None
    if args.reference is not None:
        reference, _ = _to_unit(read_image(args.reference))
    gen = iter_dip(
        image, channel_axis=axis, arch=args.arch, optimizer=args.optim, input=args.input_mode,
        width=args.width, lr=args.lr, iterations=args.iters, every=args.every, reference=reference,
        sigma=None if args.sigma is None else args.sigma / peak, device=args.device, seed=args.seed,
    )
    bar, extra, tick = TextBar(stream), "", max(1, args.iters // 200)

    def show(event) -> None:
        nonlocal extra
        if isinstance(event, DIPStep):
            extra = _figures(event, peak)
            bar.update(f"{args.arch} {args.optim}", event.iteration, args.iters, extra)
        elif isinstance(event, DIPProgress) and event.iteration % tick == 0:
            bar.update(f"{args.arch} {args.optim}", event.iteration, args.iters, extra)

    result: DIPResult = drain(gen, show)
    out = _from_unit(result.image, peak, raw.dtype)
    write_image(args.output, out, out.dtype)
    best = int(np.flatnonzero(result.iterations == result.best_iteration)[0])
    p = result.params
    line = (
        f"best iteration {result.best_iteration} of {args.iters} (by {result.criterion}): "
        f"mean squared residual {result.loss[best] * peak**2:.4g}"
    )
    if result.psnr is not None:
        line += f", PSNR {result.psnr[best]:.2f} dB"
    if result.sure is not None:
        line += f", MC-SURE {result.sure[best] * peak**2:.4g}"
    if "sigma" in p:
        line += f", sigma {p['sigma'] * peak:.4g}{' (estimated)' if p['sigma_estimated'] else ''}"
    print(line)
    print(
        f"{p['arch']} / {p['optimizer']} / {p['input']} input, width {p['width']}, lr {p['lr']:.3g}, "
        f"{result.timings['iterations_per_s']:.1f} it/s on {p['device']}; wrote {args.output}"
    )
    return 0
