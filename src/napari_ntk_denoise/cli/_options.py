"""Command-line options shared by ``ntk-denoise denoise``, ``stack`` and ``demo``, defined once.

:func:`add_ntk_options` adds the options of the NTK filter, :func:`add_stack_options` those of the
noise model, the tiling, 3-D patches and channels; :func:`ntk_kwargs` and :func:`stack_kwargs`
turn parsed arguments into the keyword arguments of
:func:`~napari_ntk_denoise.microscopy.stacks.iter_denoise_stack`.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Callable
from typing import Any

from ..engine.config import DEFAULT_OPTIONS
from ..engine.events import Progress
from ..microscopy.noise_estimation import NoiseReport
from ..microscopy.stacks import stack_noise_report
from ..microscopy.tiling import TILE, TILE_FINE
from ..microscopy.vst import PoissonGaussian
from ._progress import ProgressBar

__all__ = ["add_ntk_options", "add_stack_options", "noise_from_args", "ntk_kwargs",
           "progress_handler", "stack_kwargs", "stop_value", "tile_side"]

#: prefixes of progress stages that name the only plane, volume or tile (they tell nothing)
_ONLY_UNIT = re.compile(r"^(?:(?:plane|volume|tile) 1/1: )+")


def stop_value(text: str) -> str | int:
    """``argparse`` type of ``--stop``: ``"sure"``, ``"oracle"`` or a number of twicing steps.

    Parameters
    ----------
    text : str
        The option's value.

    Returns
    -------
    str or int
    """
    if text in ("sure", "oracle"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stop takes 'sure', 'oracle' or an integer, not {text!r}") from None


def add_ntk_options(p: argparse.ArgumentParser) -> None:
    """Add the NTK filter's options (``--sigma``, ``--stop``, ``--kernel-size``, ...) to a parser.

    Parameters
    ----------
    p : argparse.ArgumentParser
        A subcommand's parser.
    """
    p.add_argument("--sigma", type=float, default=None, help="noise level in the image's units (estimated if omitted)")
    d = DEFAULT_OPTIONS
    p.add_argument("--guided", action=argparse.BooleanOptionalAction, default=d["guided"],
                   help="second stage with the kernel of the first estimate, averaged with it (weight by SURE; "
                   "on by default, --no-guided for the one-stage filter)")
    p.add_argument("--guided-kernel", choices=("nngp", "ntk"), default=d["guided_kernel"],
                   help=f"kernel type of both guided stages (default {d['guided_kernel']})")
    for name, what in (("pilot", "the pilot's second anchor draw (with --guided-pilot-draws 2)"),
                       ("stage", "the guided stage")):
        key = f"guided_{name}_share"
        p.add_argument(f"--guided-{name}-share", type=float, default=d[key], metavar="S",
                       help=f"anchors of {what}, as a share of the first stage's (default {d[key]})")
    p.add_argument("--guided-pilot-draws", type=int, choices=(1, 2), default=d["guided_pilot_draws"],
                   help="anchor draws averaged into the pilot (default 1; 2 costs one more run)")
    p.add_argument("--stop", type=stop_value, default=d["stop"],
                   help=f"'sure', 'oracle' (needs --reference) or N (default {d['stop']})")
    p.add_argument("--depth", type=int, default=d["depth"], help=f"weight layers of the CNN (default {d['depth']})")
    p.add_argument("--kernel-size", type=int, default=d["kernel_size"],
                   help=f"convolution size r (odd, default {d['kernel_size']})")
    p.add_argument("--kernel", choices=("ntk", "nngp"), default=d["kernel"])
    p.add_argument("--input", choices=("image", "noise"), default=d["input"],
                   help="kernel from the image or from noise")
    p.add_argument("--fraction", type=float, default=d["fraction"],
                   help=f"fraction of pixels used as anchors (default {d['fraction']})")
    p.add_argument("--rank", type=int, default=d["rank"], help=f"number of eigenimages (default {d['rank']})")
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=d["adaptive"],
                   help="every other anchor and a lower rank in the first stage where the kernel's spectrum "
                   "allows (on by default, --no-adaptive for the full set)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_stack_options(p: argparse.ArgumentParser, *, axes_required: bool) -> None:
    """Add the axes, channel, noise-model, tiling and 3-D patch options to a parser.

    Parameters
    ----------
    p : argparse.ArgumentParser
        A subcommand's parser.
    axes_required : bool
        Whether ``--axes`` must be given (otherwise the command guesses the axes).
    """
    p.add_argument("--axes", required=axes_required, default=None,
                   help="one letter per dimension from TZCYX, e.g. TZYX, CYX, ZYXC"
                   + ("" if axes_required else " (default: YX, YXC for a last axis of 3 or 4, ZYX for other 3-D)"))
    p.add_argument("--channels", choices=("colour", "independent"), default="colour",
                   help="C axis as colour (one filter) or as independent planes")
    p.add_argument("--noise-model", choices=("gaussian", "poisson-gaussian"), default="gaussian")
    p.add_argument("--gain", type=float, default=None, help="Poisson-Gaussian gain (estimated if omitted)")
    p.add_argument("--read-noise", type=float, default=None, help="Gaussian read noise (estimated if omitted)")
    p.add_argument("--offset", type=float, default=None,
                   help="camera offset (estimated with gain and read noise if omitted; 0 when both are given)")
    p.add_argument("--patches", choices=("2d", "3d"), default="2d",
                   help="2d: every Y-X plane on its own; 3d: Z-Y-X volumes with 3-D patches (needs Z)")
    p.add_argument("--kernel-size-z", type=int, default=None, help="patch depth along Z with --patches 3d")
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile side along Y, X (default {TILE['2d']}, or {TILE_FINE} where the kernel's spectrum "
                   f"does not fall within the rank; {TILE['3d']} with 3d)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap (default twice the receptive field)")
    p.add_argument("--tile-z", type=int, default=None, help="tile side along Z with --patches 3d (default 16)")
    p.add_argument("--overlap-z", type=int, default=None,
                   help="tile overlap along Z with --patches 3d (default twice the receptive field)")


def ntk_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`~napari_ntk_denoise.engine.denoise.iter_denoise_ntk` from the NTK options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of a parser with :func:`add_ntk_options`.

    Returns
    -------
    dict
    """
    return dict(depth=args.depth, kernel_size=args.kernel_size, kernel=args.kernel, input=args.input,
                fraction=args.fraction, rank=args.rank, adaptive=args.adaptive, stop=args.stop, guided=args.guided,
                guided_kernel=args.guided_kernel, guided_pilot_share=args.guided_pilot_share,
                guided_stage_share=args.guided_stage_share, guided_pilot_draws=args.guided_pilot_draws,
                device=args.device, seed=args.seed)


def tile_side(args: argparse.Namespace) -> int:
    """``--tile``, or the largest default side for the kind of patches (``--stop oracle``'s bound on
    an untiled image).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of a parser with :func:`add_stack_options`.

    Returns
    -------
    int
    """
    return TILE[args.patches] if args.tile is None else args.tile


def _tiling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Tile geometry and 3-D patch depth; the Z options are refused without ``--patches 3d``."""
    z = {k: v for k, v in dict(kernel_size_z=args.kernel_size_z, tile_z=args.tile_z, overlap_z=args.overlap_z).items()
         if v is not None}
    if z and args.patches != "3d":
        raise ValueError("--kernel-size-z, --tile-z and --overlap-z need --patches 3d")
    return dict(tile=args.tile, overlap=args.overlap, **z)


def noise_from_args(args: argparse.Namespace, data: Any, axes: str) -> PoissonGaussian | NoiseReport | None:
    """Poisson-Gaussian parameters from the options, estimated (and printed) when not given.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of a parser with :func:`add_ntk_options` and :func:`add_stack_options`.
    data : numpy.ndarray or dask.array.Array
        The stack, for the estimate.
    axes : str
        Its checked axes.

    Returns
    -------
    PoissonGaussian or NoiseReport or None
        The given parameters, the estimate's report (which also carries the blur of spatially
        correlated noise; its doubts are issued as warnings), or ``None`` with the Gaussian model.

    Raises
    ------
    ValueError
        Poisson-Gaussian options with the Gaussian model, ``--sigma`` with the Poisson-Gaussian
        one, or only one of ``--gain`` and ``--read-noise``.
    """
    given = (args.gain is not None, args.read_noise is not None)
    if args.noise_model == "gaussian":
        if any(given) or args.offset is not None:
            raise ValueError("--gain, --read-noise and --offset need --noise-model poisson-gaussian")
        return None
    if args.sigma is not None:
        raise ValueError("--sigma applies to the Gaussian model; give --gain and --read-noise instead")
    if all(given):
        return PoissonGaussian(args.gain, args.read_noise, 0.0 if args.offset is None else args.offset)
    if any(given):
        raise ValueError("give both --gain and --read-noise, or neither to estimate them")
    report = stack_noise_report(data, axes, offset=args.offset)
    print(f"estimated {report.summary()}")
    for doubt in report.warnings:
        warnings.warn(doubt, UserWarning, stacklevel=1)
    return report


def stack_kwargs(args: argparse.Namespace, axes: str) -> dict[str, Any]:
    """Keyword arguments of :func:`~napari_ntk_denoise.microscopy.stacks.iter_denoise_stack`, but
    ``sigma`` and ``noise``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of a parser with :func:`add_ntk_options` and :func:`add_stack_options`.
    axes : str
        The stack's checked axes.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        Z options without ``--patches 3d``.
    """
    return dict(axes=axes, channels=args.channels, noise_model=args.noise_model, patches=args.patches,
                **_tiling_kwargs(args), **ntk_kwargs(args))


def progress_handler(quiet: bool) -> Callable[[Any], None] | None:
    """Event handler drawing a progress bar of the outermost stage that has several steps.

    The planes of a stack, else the tiles of its only plane, else the kernel stages of its only
    tile; ``None`` when ``quiet``.

    Parameters
    ----------
    quiet : bool
        No progress bar.

    Returns
    -------
    callable or None
        For :func:`~napari_ntk_denoise.engine.events.drain`.
    """
    if quiet:
        return None
    bar = ProgressBar()

    def show(event: Any) -> None:
        if isinstance(event, Progress) and event.total > 1:
            label = _ONLY_UNIT.sub("", event.stage)
            if ": " not in label:
                bar.update(label, event.done, event.total)

    return show
