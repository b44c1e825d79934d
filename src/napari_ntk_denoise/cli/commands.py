"""Command line: ``ntk-denoise denoise | demo | sample``.

Every subcommand drives the same streaming generators as the napari widgets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..engine._input import resolve_device
from ..engine.denoise import NTKResult, iter_denoise_ntk
from ..engine.events import drain
from ..engine.stopping import psnr
from ..io.imageio import read_image, write_image
from ..io.samples import SAMPLES, SIGMA, noisy_sample
from ..microscopy.noise_estimation import NoiseReport
from ..microscopy.stacks import check_axes, estimate_stack_sigma, iter_denoise_stack
from ..microscopy.vst import PoissonGaussian
from . import bench as bench_cli
from . import dip as dip_cli
from . import stacks as stacks_cli
from ._options import (
    add_ntk_options,
    add_stack_options,
    noise_from_args,
    ntk_kwargs,
    progress_handler,
    stack_kwargs,
    tile_side,
)

__all__ = ["main", "build_parser"]

#: where the package's own warnings come from
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "")


def _run_ntk(noisy: np.ndarray, sigma: float | None, reference: np.ndarray | None, channel_axis: int | None,
             kwargs: dict[str, Any], quiet: bool) -> NTKResult:
    """One untiled image through :func:`~napari_ntk_denoise.engine.denoise.iter_denoise_ntk`."""
    gen = iter_denoise_ntk(noisy, sigma, channel_axis=channel_axis, reference=reference, **kwargs)
    return drain(gen, progress_handler(quiet))


def _report(res: NTKResult, elapsed: float, reference_psnr: float | None) -> None:
    """The figures of one untiled run: steps, noise level, clipping, time and PSNR."""
    stages = " -> ".join(str(s.t) for s in res.stages)
    print(f"t = {res.t}" + (f" (stages: {stages})" if len(res.stages) > 1 else ""))
    print(f"sigma = {res.sigma:.6g}" + (" (estimated)" if res.sigma_estimated else ""))
    bounds = [f"{b:g}" for b in res.params.get("clip_bounds", ()) if b is not None]
    if bounds:
        print(f"SURE for data clipped at {' and '.join(bounds)} (less noise near the bounds)")
    rank = res.filter.rank if res.filter is not None else 0
    print(f"time = {elapsed:.2f} s  rank = {rank}  device = {res.params.get('device', 'none')}")
    if reference_psnr is not None:
        print(f"PSNR = {reference_psnr:.2f} dB")


def guess_axes(shape: tuple[int, ...]) -> str:
    """Axes of an image file's array: ``YX``, ``YXC`` for a last axis of 3 or 4, else ``ZYX``.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Arrays that are not 2-D or 3-D.
    """
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "YXC" if shape[-1] in (3, 4) else "ZYX"
    raise ValueError(f"cannot guess the axes of an image of shape {shape}; give --axes, e.g. --axes TZYX")


def _load(path: str, axes: str | None) -> tuple[np.ndarray, str]:
    """An image or stack file and its axes (given, or guessed with RGBA dropped to RGB)."""
    img = read_image(path)
    if axes is not None:
        return img, check_axes(axes, img.ndim)
    guessed = guess_axes(img.shape)
    return (img[..., :3] if guessed == "YXC" else img), guessed


def _load_reference(path: str, axes: str | None, shape: tuple[int, ...]) -> np.ndarray:
    reference, _ = _load(path, axes)
    if reference.shape != shape:
        raise ValueError(f"the reference's shape {reference.shape} differs from the input's {shape}")
    return reference


def _check_output(path: str, dtype: np.dtype) -> None:
    """Refuse before any work what :func:`~napari_ntk_denoise.io.imageio.write_image` would refuse after it."""
    if not np.issubdtype(dtype, np.integer) and Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"the input holds {dtype} values, which only TIFF files store; write the output as .tif")


def _grey_as_colour(data: np.ndarray) -> bool:
    """Whether every channel of a ``YXC`` image holds the same plane."""
    return all(np.array_equal(data[..., 0], data[..., c]) for c in range(1, data.shape[-1]))


def _data_range(reference: np.ndarray) -> float:
    """The peak of the reference's scale: its integer dtype's maximum; for floats 1, or 255 for
    values on the 8-bit scale, or else its maximum."""
    if np.issubdtype(reference.dtype, np.integer):
        return float(np.iinfo(reference.dtype).max)
    top = float(reference.max())
    return 1.0 if top <= 1 else 255.0 if top <= 255 else top


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of the output against the reference over the reference's scale (:func:`_data_range`)."""
    rng = _data_range(reference)
    return psnr(np.clip(image, 0, rng), reference, rng)


def _steps(ts: list[int]) -> str:
    """The ``t`` line from the steps of every tile of every plane."""
    if len(set(ts)) == 1:
        return f"t = {ts[0]}"
    return f"t = {min(ts)}-{max(ts)} over {len(ts)} tiles (median {np.median(ts):g})"


def _denoise_oracle(args: argparse.Namespace, data: np.ndarray, axes: str, reference: np.ndarray | None) -> int:
    """``--stop oracle``: one untiled image through the engine, which picks the PSNR-best step."""
    if reference is None:
        raise ValueError("--stop oracle needs --reference")
    single = axes == "YX" or (axes == "YXC" and args.channels == "colour")
    if args.noise_model != "gaussian" or args.patches != "2d" or not single or max(data.shape[:2]) > tile_side(args):
        raise ValueError("--stop oracle works on one untiled image (YX or YXC, at most --tile pixels a side) with "
                         "the Gaussian noise model; use --stop sure or a number of steps")
    t0 = time.perf_counter()
    res = _run_ntk(data, args.sigma, reference, -1 if axes == "YXC" else None, ntk_kwargs(args), args.quiet)
    write_image(args.output, res.image, data.dtype)
    _report(res, time.perf_counter() - t0, _psnr(res.image, reference))
    return 0


def _noise_line(sigma: float | None, estimated: bool, noise: PoissonGaussian | NoiseReport | None) -> str:
    if isinstance(noise, NoiseReport):
        noise = noise.noise
    if noise is not None:
        return f"noise = poisson-gaussian ({noise.describe()})"
    return f"sigma = {sigma:.6g}" + (" (estimated)" if estimated else "")


def cmd_denoise(args: argparse.Namespace) -> int:
    """Execute the ``denoise`` subcommand: one image or stack file, tiled above the tile size.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of the ``denoise`` parser.

    Returns
    -------
    int
        The exit status, 0.
    """
    data, axes = _load(args.input_path, args.axes)
    _check_output(args.output, data.dtype)
    reference = None if args.reference is None else _load_reference(args.reference, args.axes, data.shape)
    channels = data.shape[-1] if axes == "YXC" and args.axes is None and _grey_as_colour(data) else 0
    if channels:  # one grey plane stored in every channel: its noise too, which a colour filter's SURE cannot see
        data, axes = data[..., 0], "YX"
        reference = None if reference is None else reference[..., 0]
    if args.stop == "oracle":
        return _denoise_oracle(args, data, axes, reference)
    kw = stack_kwargs(args, axes)
    t0 = time.perf_counter()
    if np.ptp(data) == 0:  # nothing to denoise, and no noise to estimate
        image, lines = data, ["t = 0 (constant image)"]
    else:
        kw["noise"] = noise_from_args(args, data, axes)
        sigma = args.sigma
        if args.noise_model == "gaussian" and sigma is None:
            sigma = estimate_stack_sigma(data, axes)
        image, lines = _denoise_stack(data, sigma, kw, args)
        lines.append(_noise_line(sigma, args.sigma is None, kw["noise"]))
    write_image(args.output, np.repeat(image[..., None], channels, axis=-1) if channels else image, data.dtype)
    for line in lines:
        print(line)
    print(f"time = {time.perf_counter() - t0:.2f} s  device = {resolve_device(args.device)}")
    if reference is not None:
        print(f"PSNR = {_psnr(image, reference):.2f} dB")
    return 0


def _denoise_stack(data: np.ndarray, sigma: float | None, kw: dict[str, Any],
                   args: argparse.Namespace) -> tuple[np.ndarray, list[str]]:
    """:func:`~napari_ntk_denoise.microscopy.stacks.iter_denoise_stack` with a progress bar; the
    image and its ``t`` line."""
    show = progress_handler(args.quiet)
    steps: list[int] = []

    def on_event(event: Any) -> None:
        if getattr(event, "stage", None) == "planes":
            steps.extend(event.steps)
        if show is not None:
            show(event)

    image = drain(iter_denoise_stack(data, sigma, **kw), on_event)
    return image, [_steps(steps)]


def cmd_sample(args: argparse.Namespace) -> int:
    """Execute the ``sample`` subcommand: a built-in sample with Gaussian noise as an 8-bit PNG."""
    noisy, clean = noisy_sample(args.name, args.sigma / 255, args.seed)
    write_image(args.output, noisy * 255, np.uint8)
    if args.clean:
        write_image(args.clean, clean * 255, np.uint8)
    print(f"wrote {args.output} ({args.name}, sigma = {args.sigma}/255, seed {args.seed})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Execute the ``demo`` subcommand: denoise a built-in noisy sample and write PNGs."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    noisy, clean = noisy_sample(args.sample, SIGMA, args.seed)
    noisy8 = np.round(noisy * 255).astype(np.uint8)
    axis = -1 if noisy.ndim == 3 else None
    t0 = time.perf_counter()
    res = _run_ntk(noisy8.astype(np.float32), 25.0, None, axis, ntk_kwargs(args), args.quiet)
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
    p = sub.add_parser("denoise", help="denoise an image or stack file with the analytic NTK filter, tiled")
    p.add_argument("input_path", metavar="INPUT", help="noisy image or stack (PNG, JPEG, TIFF)")
    p.add_argument("-o", "--output", required=True, help="output image (same dtype as the input)")
    p.add_argument("--reference", default=None, help="clean image: print PSNR (and allow --stop oracle)")
    add_stack_options(p, axes_required=False)
    add_ntk_options(p)
    p.set_defaults(func=cmd_denoise)
    p = sub.add_parser("demo", help="denoise a built-in noisy sample and write PNGs")
    p.add_argument("-o", "--output", default="demo_output", help="output folder")
    p.add_argument("--sample", choices=sorted(SAMPLES), default="astronaut")
    add_ntk_options(p)
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


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """The package's own warnings (doubtful stops, fallbacks), one line each and once; those of
    the libraries it calls are dropped."""
    shown: set[str] = set()
    for w in caught:
        text = _one_line(str(w.message))
        ours = issubclass(w.category, (UserWarning, RuntimeWarning)) and w.filename.startswith(_PACKAGE_DIR)
        if ours and text not in shown:
            shown.add(text)
            print(f"ntk-denoise: warning: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ntk-denoise``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 for an error in the input or the run (one line on standard error), 2 for
        a usage error (from ``argparse``, which exits).
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):  # no NumPy arithmetic warnings
        warnings.simplefilter("always")
        try:
            status = args.func(args)
        except (ValueError, MemoryError, OSError) as exc:
            print(f"ntk-denoise: error: {_one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
            return 1
    _print_warnings(caught)
    return status


if __name__ == "__main__":
    sys.exit(main())
