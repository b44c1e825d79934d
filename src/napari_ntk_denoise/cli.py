"""Command line: ``ntk-denoise denoise | demo | sample``.

Every subcommand drives the same streaming generators as the napari widgets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .denoise import iter_denoise_ntk
from . import bench_cli, stacks_cli
from .dip import cli as dip_cli
from ._textbar import TextBar
from .events import Progress, drain
from .imageio import guess_channel_axis, read_image, write_image
from .samples import SAMPLES, SIGMA, noisy_sample
from .stopping import psnr

__all__ = ["main", "build_parser"]


def _stop_value(text: str) -> str | int:
    if text in ("sure", "oracle"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stop takes 'sure', 'oracle' or an integer, not {text!r}") from None


def _add_ntk_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sigma", type=float, default=None, help="noise level in the image's units (estimated if omitted)")
    p.add_argument("--guided", action="store_true",
                   help="second stage with the kernel of the first estimate, averaged with it (weight by SURE)")
    p.add_argument("--guided-kernel", choices=("nngp", "ntk"), default="nngp",
                   help="kernel type of both guided stages (default nngp: the larger gains)")
    p.add_argument("--stop", type=_stop_value, default="sure", help="'sure' (default), 'oracle' (needs --reference) or N")
    p.add_argument("--depth", type=int, default=2, help="weight layers of the CNN (default 2)")
    p.add_argument("--kernel-size", type=int, default=11, help="convolution size r (odd, default 11)")
    p.add_argument("--kernel", choices=("ntk", "nngp"), default="ntk")
    p.add_argument("--input", choices=("image", "noise"), default="image", help="kernel from the image or from noise")
    p.add_argument("--fraction", type=float, default=0.02, help="fraction of pixels used as anchors (default 0.02)")
    p.add_argument("--rank", type=int, default=None, help="number of eigenimages")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _ntk_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(depth=args.depth, kernel_size=args.kernel_size, kernel=args.kernel, input=args.input,
              fraction=args.fraction, stop=args.stop, guided=args.guided,
              guided_kernel=args.guided_kernel, device=args.device, seed=args.seed)
    if args.rank is not None:
        kw["rank"] = args.rank
    return kw


def _run_ntk(noisy: np.ndarray, sigma, reference, channel_axis, kwargs: dict, quiet: bool):
    gen = iter_denoise_ntk(noisy, sigma, channel_axis=channel_axis, reference=reference, **kwargs)
    bar = TextBar()

    def show(event) -> None:
        if isinstance(event, Progress):
            bar.update(event.stage, event.done, event.total)

    return drain(gen, None if quiet else show)


def _report(res, elapsed: float, reference_psnr: float | None) -> None:
    stages = " -> ".join(str(s.t) for s in res.stages)
    print(f"t = {res.t}" + (f" (stages: {stages})" if len(res.stages) > 1 else ""))
    print(f"sigma = {res.sigma:.6g}" + (" (estimated)" if res.sigma_estimated else ""))
    bounds = [f"{b:g}" for b in res.params.get("clip_bounds", ()) if b is not None]
    if bounds:
        print(f"SURE for data clipped at {' and '.join(bounds)} (less noise near the bounds)")
    print(f"time = {elapsed:.2f} s  rank = {res.filter.rank}  device = {res.params['device']}")
    if reference_psnr is not None:
        print(f"PSNR = {reference_psnr:.2f} dB")


def _load(path: str) -> tuple[np.ndarray, int | None]:
    img = read_image(path)
    axis = guess_channel_axis(img)
    if axis is not None and img.shape[-1] == 4:
        img = img[..., :3]
    return img, axis


def _dtype_range(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def cmd_denoise(args: argparse.Namespace) -> int:
    noisy, axis = _load(args.input_path)
    reference = None
    if args.reference:
        reference, _ = _load(args.reference)
    t0 = time.perf_counter()
    res = _run_ntk(noisy, args.sigma, reference, axis, _ntk_kwargs(args), args.quiet)
    elapsed = time.perf_counter() - t0
    value = None
    if reference is not None:
        rng = _dtype_range(reference.dtype)
        value = psnr(np.clip(res.image, 0, rng), reference, rng)
    write_image(args.output, res.image, noisy.dtype)
    _report(res, elapsed, value)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    noisy, clean = noisy_sample(args.name, args.sigma / 255, args.seed)
    write_image(args.output, noisy * 255, np.uint8)
    if args.clean:
        write_image(args.clean, clean * 255, np.uint8)
    print(f"wrote {args.output} ({args.name}, sigma = {args.sigma}/255, seed {args.seed})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    noisy, clean = noisy_sample(args.sample, SIGMA, args.seed)
    noisy8 = np.round(noisy * 255).astype(np.uint8)
    axis = -1 if noisy.ndim == 3 else None
    t0 = time.perf_counter()
    res = _run_ntk(noisy8.astype(np.float32), 25.0, None, axis, _ntk_kwargs(args), args.quiet)
    elapsed = time.perf_counter() - t0
    den8 = np.clip(np.round(res.image), 0, 255).astype(np.uint8)
    write_image(out / "clean.png", clean * 255, np.uint8)
    write_image(out / "noisy.png", noisy8, np.uint8)
    write_image(out / "denoised.png", den8, np.uint8)
    write_image(out / "side_by_side.png", np.concatenate([noisy8, den8], axis=1), np.uint8)
    ref8 = np.round(clean * 255)
    print(f"sample = {args.sample} {noisy.shape}, noise sigma = 25/255")
    print(f"noisy PSNR = {psnr(noisy8, ref8, 255):.2f} dB")
    _report(res, elapsed, psnr(den8, ref8, 255))
    print(f"wrote {out}/noisy.png, denoised.png, side_by_side.png, clean.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ntk-denoise`` argument parser."""
    parser = argparse.ArgumentParser(prog="ntk-denoise", description="Closed-form NTK denoising (Tachella et al. 2021)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("denoise", help="denoise an image file with the analytic NTK filter")
    p.add_argument("input_path", metavar="INPUT", help="noisy image (PNG, JPEG, TIFF)")
    p.add_argument("-o", "--output", required=True, help="output image (same dtype as the input)")
    p.add_argument("--reference", default=None, help="clean image: print PSNR (and allow --stop oracle)")
    _add_ntk_options(p)
    p.set_defaults(func=cmd_denoise)
    p = sub.add_parser("demo", help="denoise a built-in noisy sample and write PNGs")
    p.add_argument("-o", "--output", default="demo_output", help="output folder")
    p.add_argument("--sample", choices=sorted(SAMPLES), default="astronaut")
    _add_ntk_options(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("sample", help="write a built-in sample with Gaussian noise as an 8-bit PNG")
    p.add_argument("name", choices=sorted(SAMPLES))
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--clean", default=None, help="also write the clean image here")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0-255 scale (default 25)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)
    dip_cli.add_parser(sub)
    stacks_cli.add_parser(sub)
    bench_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ntk-denoise``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, MemoryError, FileNotFoundError) as exc:
        print(f"ntk-denoise: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
