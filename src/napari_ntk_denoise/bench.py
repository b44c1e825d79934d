"""Benchmark against the paper's Table 1 and Figures 4 and 6, with NLM and BM3D baselines (Qt-free).

Protocol (``shared/data/README.md``, the paper's and the deep image prior's): the clean image is
scaled to ``[0, 1]`` (integer images by their dtype's maximum), optionally centre-cropped,
``noisy = clip(clean + N(0, sigma^2), 0, 1)`` with ``sigma`` given on the 0-255 scale and one fixed
seed for every image; PSNR (data range 1) and SSIM are computed on the output clipped to ``[0, 1]``.

Methods are named as in Table 1: ``nystrom-{image,noise,guided}`` (the analytic filter,
:func:`~napari_ntk_denoise.engine.denoise.denoise_ntk`), ``{adam,gd}-{vanilla,unet,ae,skip}-{image,noise}``
(deep image prior, :func:`~napari_ntk_denoise.dip.trainer.train_dip`) and the baselines ``nlm``
(scikit-image) and ``bm3d`` (the ``bm3d`` package, CBM3D for colour).  With ``stop="oracle"`` each
method keeps its best-PSNR step or iteration (the paper's protocol); with ``stop="sure"`` no
clean image is used to stop: the Nyström rows and image-input DIP rows stop by Monte-Carlo SURE and
noise-input DIP rows by the residual on held-out pixels, and the DIP rows also record the
best PSNR over their iterations (``oracle_psnr``) from the same run.

:func:`iter_bench`, :func:`iter_figure4` and :func:`iter_figure6` yield :class:`Record` (and
:class:`Skip`) events and return a :class:`BenchRun`; :func:`markdown_table`, :func:`write_json`,
:func:`plot_curves`, :func:`plot_figure4` and :func:`plot_figure6` turn it into files (matplotlib
is imported only by the plots).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .dip.config import default_style, resolve_criterion
from .dip.trainer import train_dip
from .engine.denoise import denoise_ntk
from .engine.stopping import psnr
from .io.imageio import guess_channel_axis, read_image, to_unit
from .io.samples import add_noise

__all__ = [
    "BASELINES", "FIGURE4_WIDTHS", "FIGURE6_DEPTHS", "IMAGE_SUFFIXES", "METHODS", "NLM_PARAMS", "BenchRun",
    "BenchSettings", "Outcome", "Record", "Skip", "iter_bench", "iter_figure4", "iter_figure6", "list_images",
    "load_clean", "machine_info", "markdown_table", "missing_package", "plot_curves", "plot_figure4", "plot_figure6",
    "write_json",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: scikit-image ``denoise_nl_means``: 5x5 patches, 13x13 search window, ``h = 0.8 sigma`` (the
#: value scikit-image's documentation suggests with ``fast_mode=True``), noise-variance correction
NLM_PARAMS = {"patch_size": 5, "patch_distance": 6, "h_over_sigma": 0.8, "fast_mode": True}
#: Figure 6: depth L -> kernel size r with receptive field (r - 1)(L - 1) + 1 = 13
FIGURE6_DEPTHS = {2: 13, 3: 7, 4: 5, 7: 3}
#: Figure 4: hidden channels of the autoencoder
FIGURE4_WIDTHS = (8, 16, 32, 64, 128)

Stop = Literal["oracle", "sure"]


@dataclass(frozen=True)
class BenchSettings:
    """Settings shared by every method of a run.

    Attributes
    ----------
    sigma : float
        Noise standard deviation on the 0-255 scale.
    stop : {"oracle", "sure"}
        Early stopping (see the module docstring).
    max_iters : int
        Training iterations of the DIP rows.
    seed : int
        Seeds the noise (the same for every image), anchors, weights and probes.
    crop : int, optional
        Side of the centre crop (None: whole images).
    limit : int, optional
        Number of images used (the first in name order).
    device : str, optional
        ``"cpu"``, ``"cuda"`` or None (CUDA when available).
    ntk : dict
        Extra keyword arguments of :func:`~napari_ntk_denoise.engine.denoise.denoise_ntk`
        (``kernel_size``, ``fraction``, ``rank``...).
    width : int
        Hidden channels of the DIP networks.
    every : int
        Iterations between recorded DIP outputs (PSNR curve points and stopping candidates).
    """

    sigma: float = 25.0
    stop: Stop = "oracle"
    max_iters: int = 3000
    seed: int = 0
    crop: int | None = None
    limit: int | None = None
    device: str | None = None
    ntk: dict[str, Any] = field(default_factory=dict)
    width: int = 64
    every: int = 10

    @property
    def sigma_unit(self) -> float:
        """``sigma`` on the ``[0, 1]`` scale of the images."""
        return self.sigma / 255.0


@dataclass(frozen=True)
class Outcome:
    """What one method returns for one image.

    Attributes
    ----------
    image : numpy.ndarray
        Denoised image (not yet clipped).
    t : int or None
        Chosen twicing step or training iteration (None for the baselines).
    stop : str
        How it was chosen: ``"oracle"``, ``"sure"``, ``"holdout"`` or ``"none"``.
    device : str
        Where it ran.
    curve : tuple of numpy.ndarray, optional
        ``(steps, psnr)``: PSNR over twicing steps or training iterations.
    extra : dict
        More fields of the :class:`Record` (a DIP run's ``oracle_psnr``, ``oracle_t`` and weight
        changes).
    """

    image: np.ndarray
    t: int | None
    stop: str
    device: str
    curve: tuple[np.ndarray, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Method = Callable[[np.ndarray, np.ndarray, int | None, BenchSettings], Outcome]


def _nystrom(input: str, guided: bool) -> Method:
    def run(noisy: np.ndarray, clean: np.ndarray, axis: int | None, s: BenchSettings) -> Outcome:
        _, res = denoise_ntk(noisy, s.sigma_unit, channel_axis=axis, input=input, guided=guided, stop=s.stop,
                             reference=clean, device=s.device, seed=s.seed, **s.ntk)
        return Outcome(res.image, res.t, s.stop, res.params["device"], (res.t_grid, res.psnr))

    return run


def _dip(optimizer: str, arch: str, input: str, **net: Any) -> Method:
    def run(noisy: np.ndarray, clean: np.ndarray, axis: int | None, s: BenchSettings) -> Outcome:
        style = net.get("style", default_style(arch, optimizer))
        criterion = resolve_criterion("auto", s.stop == "oracle", input, style)
        res = train_dip(noisy, channel_axis=axis, arch=arch, optimizer=optimizer, input=input, width=s.width,
                        iterations=s.max_iters, every=min(s.every, s.max_iters), reference=clean,
                        sigma=s.sigma_unit, criterion=criterion, device=s.device or "auto", seed=s.seed, **net)
        stop = "oracle" if criterion == "psnr" else criterion
        best = int(np.nanargmax(res.psnr))
        extra = {"oracle_psnr": float(res.psnr[best]), "oracle_t": int(res.iterations[best]),
                 "weight_change_l2": float(res.weight_change_l2[-1]),
                 "weight_change_max": float(res.weight_change_max[-1])}
        return Outcome(res.image, res.best_iteration, stop, str(res.params["device"]), (res.iterations, res.psnr),
                       extra)

    return run


def _nlm(noisy: np.ndarray, clean: np.ndarray, axis: int | None, s: BenchSettings) -> Outcome:
    from skimage.restoration import denoise_nl_means

    p = NLM_PARAMS
    out = denoise_nl_means(noisy, h=p["h_over_sigma"] * s.sigma_unit, sigma=s.sigma_unit, patch_size=p["patch_size"],
                           patch_distance=p["patch_distance"], fast_mode=p["fast_mode"], channel_axis=axis)
    return Outcome(out, None, "none", "cpu")


def _bm3d(noisy: np.ndarray, clean: np.ndarray, axis: int | None, s: BenchSettings) -> Outcome:
    import bm3d

    run = bm3d.bm3d if axis is None else bm3d.bm3d_rgb  # CBM3D (opponent colour space) for RGB
    return Outcome(np.asarray(run(noisy, sigma_psd=s.sigma_unit)), None, "none", "cpu")


#: method name (as in Table 1) -> runner
METHODS: dict[str, Method] = {
    "nystrom-image": _nystrom("image", False),
    "nystrom-noise": _nystrom("noise", False),
    "nystrom-guided": _nystrom("image", True),
    **{f"{o}-{a}-{i}": _dip(o, a, i)
       for o in ("adam", "gd") for a in ("vanilla", "unet", "ae", "skip") for i in ("image", "noise")},
    "nlm": _nlm,
    "bm3d": _bm3d,
}
#: optional modules that a method needs
BASELINES = {"bm3d": "bm3d"}


@dataclass(frozen=True)
class Record:
    """One (image, method) result; :func:`write_json` writes these fields."""

    image: str
    method: str
    psnr: float
    ssim: float
    stop: str
    t: int | None
    seconds: float
    device: str
    noisy_psnr: float
    depth: int | None = None
    kernel_size: int | None = None
    oracle_psnr: float | None = None
    oracle_t: int | None = None
    width: int | None = None
    weight_change_l2: float | None = None
    weight_change_max: float | None = None


@dataclass(frozen=True)
class Skip:
    """A method that could not run, and why."""

    method: str
    reason: str


@dataclass
class BenchRun:
    """Outcome of :func:`iter_bench`, :func:`iter_figure4` or :func:`iter_figure6`.

    Attributes
    ----------
    records : list of Record
    skipped : list of Skip
    curves : dict
        Image name -> method name -> ``(steps, psnr)``.
    settings : dict
        The run's settings, JSON-friendly.
    """

    records: list[Record] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files of ``folder`` (by suffix, sorted by name), the first ``limit`` of them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths[:limit]


def load_clean(path: str | Path, crop: int | None = None) -> tuple[np.ndarray, int | None]:
    """Clean image in ``[0, 1]`` (float32, alpha dropped, centre-cropped to ``crop``) and its channel axis."""
    img = read_image(path)
    axis = guess_channel_axis(img)
    if axis is not None:
        img = img[..., :3]
    clean, _ = to_unit(img)
    if crop is not None:
        h, w = clean.shape[:2]
        if crop > min(h, w):
            raise ValueError(f"crop {crop} is larger than {Path(path).name} ({h} x {w})")
        top, left = (h - crop) // 2, (w - crop) // 2
        clean = clean[top : top + crop, left : left + crop]
    return np.ascontiguousarray(clean), axis


def _score(method: str, fn: Method, name: str, noisy: np.ndarray, clean: np.ndarray, axis: int | None,
           s: BenchSettings, **extra: int) -> tuple[Record, Outcome]:
    from skimage.metrics import structural_similarity

    t0 = time.perf_counter()
    out = fn(noisy, clean, axis, s)
    seconds = time.perf_counter() - t0
    est = np.clip(out.image, 0, 1)
    rec = Record(image=name, method=method, psnr=psnr(est, clean, 1.0),
                 ssim=float(structural_similarity(clean, est, data_range=1.0, channel_axis=axis)),
                 stop=out.stop, t=out.t, seconds=seconds, device=out.device, noisy_psnr=psnr(noisy, clean, 1.0),
                 **out.extra, **extra)
    return rec, out


def missing_package(method: str) -> str | None:
    """Why ``method`` cannot run here (its optional package, :data:`BASELINES`, is not installed), or ``None``."""
    module = BASELINES.get(method)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{method} skipped: the '{module}' package is not installed (pip install {module})"
    return None


def _noisy_pair(path: Path, s: BenchSettings) -> tuple[np.ndarray, np.ndarray, int | None]:
    clean, axis = load_clean(path, s.crop)
    return add_noise(clean, s.sigma_unit, s.seed), clean, axis


def iter_bench(
    paths: Sequence[str | Path], methods: Sequence[str], settings: BenchSettings
) -> Generator[Record | Skip, None, BenchRun]:
    """Run every method on every image, streaming results.

    Parameters
    ----------
    paths : sequence of path
        Clean images.
    methods : sequence of str
        Keys of :data:`METHODS`.
    settings : BenchSettings

    Yields
    ------
    Record or Skip
        A result as soon as it is scored; a :class:`Skip` for a method whose optional package is
        missing (once, before any image).

    Returns
    -------
    BenchRun

    Raises
    ------
    ValueError
        An unknown method name.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    run = BenchRun(settings=asdict(settings) | {"methods": list(methods), "images": [Path(p).name for p in paths]})
    active = []
    for m in methods:
        reason = missing_package(m)
        if reason is None:
            active.append(m)
        else:
            run.skipped.append(Skip(m, reason))
            yield run.skipped[-1]
    for path in paths:
        noisy, clean, axis = _noisy_pair(Path(path), settings)
        name = Path(path).stem
        for m in active:
            rec, out = _score(m, METHODS[m], name, noisy, clean, axis, settings)
            run.records.append(rec)
            if out.curve is not None and out.curve[1] is not None:
                run.curves.setdefault(name, {})[m] = out.curve
            yield rec
    return run


_Case = tuple[BenchSettings, str, Method, dict[str, int]]


def _iter_sweep(paths: Sequence[str | Path], settings: BenchSettings, meta: dict[str, Any],
                cases: Sequence[_Case]) -> Generator[Record, None, BenchRun]:
    """Score every case ``(settings, method name, method, record fields)`` on every image."""
    run = BenchRun(settings=asdict(settings) | meta | {"images": [Path(p).name for p in paths]})
    for path in paths:
        noisy, clean, axis = _noisy_pair(Path(path), settings)
        for s, method, fn, fields in cases:
            rec, _ = _score(method, fn, Path(path).stem, noisy, clean, axis, s, **fields)
            run.records.append(rec)
            yield rec
    return run


def iter_figure6(
    paths: Sequence[str | Path], settings: BenchSettings, depths: dict[int, int] | None = None,
    optimizers: Sequence[str] = ("gd", "adam"),
) -> Generator[Record, None, BenchRun]:
    """The paper's Figure 6: vanilla CNNs of several depths with one receptive field, image input.

    For each depth ``L`` and kernel size ``r`` (default :data:`FIGURE6_DEPTHS`, receptive field 13),
    the analytic filter (method ``"nystrom"``, stopped by ``settings.stop``) and the trained network
    for each optimiser (methods ``"gd"``, ``"adam"``, ``settings.max_iters`` iterations) are scored.
    The sweep's ``depth`` and ``kernel_size`` override those of ``settings.ntk``.

    Yields
    ------
    Record
        With ``depth`` and ``kernel_size`` set.

    Returns
    -------
    BenchRun
    """
    depths = dict(FIGURE6_DEPTHS if depths is None else depths)
    cases: list[_Case] = []
    for depth, r in depths.items():
        s = replace(settings, ntk=settings.ntk | {"depth": depth, "kernel_size": r})
        fields = {"depth": depth, "kernel_size": r}
        cases.append((s, "nystrom", _nystrom("image", False), fields))
        cases += [(s, o, _dip(o, "vanilla", "image", depth=depth, kernel_size=r), fields) for o in optimizers]
    meta = {"figure6": {str(k): v for k, v in depths.items()}, "optimizers": list(optimizers)}
    return (yield from _iter_sweep(paths, settings, meta, cases))


def iter_figure4(
    paths: Sequence[str | Path], settings: BenchSettings, widths: Sequence[int] | None = None,
    optimizers: Sequence[str] = ("gd", "adam"),
) -> Generator[Record, None, BenchRun]:
    """The paper's Figure 4: the autoencoder with noise input at several widths, GD and Adam.

    Both optimisers train the same network, the autoencoder in the NTK style (bias-free ReLU, He
    initialisation, linear output), for ``settings.max_iters`` iterations, so that their weight
    changes compare; ``settings.width`` is overridden by each of ``widths`` (default
    :data:`FIGURE4_WIDTHS`).  Each record carries the PSNR (stopped by ``settings.stop``) and the
    change of the weights after the last iteration.

    Yields
    ------
    Record
        Methods ``"gd"`` and ``"adam"``, with ``width``, ``weight_change_l2`` and
        ``weight_change_max`` set.

    Returns
    -------
    BenchRun
    """
    widths = tuple(FIGURE4_WIDTHS if widths is None else widths)
    cases: list[_Case] = [(replace(settings, width=c), o, _dip(o, "ae", "noise", style="ntk"), {"width": c})
                         for c in widths for o in optimizers]
    return (yield from _iter_sweep(paths, settings, {"figure4": list(widths), "optimizers": list(optimizers)}, cases))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Host, accelerator, thread count and package versions, for the JSON's ``machine``."""
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("napari-ntk-denoise", "torch", "numpy", "scikit-image", "bm3d",
                                              "matplotlib")},
    }


def write_json(path: str | Path, run: BenchRun, machine: dict[str, Any] | None = None) -> None:
    """Write ``{"machine": ..., "settings": ..., "skipped": [...], "results": [...]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info() if machine is None else machine, "settings": run.settings,
           "skipped": [s.reason for s in run.skipped], "results": [asdict(r) for r in run.records]}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def _table(rows: list[str], columns: list[str], cell: Callable[[str, str], str], head: str) -> list[str]:
    lines = [f"| {head} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return lines


def _column(r: Record) -> str:
    return r.method + ("" if r.depth is None else f" L={r.depth}") + ("" if r.width is None else f" c={r.width}")


def markdown_table(records: Sequence[Record]) -> str:
    """PSNR (dB) per image and method, the noisy input's, the means and the seconds per image.

    Figure-6 records (with a depth) get one column per method and depth (``nystrom L=2``...), and
    Figure-4 records (with a width) one per method and width (``adam c=64``...); DIP records add
    the mean weight changes ("–" where undefined, as the hidden-layer change of a network with one
    hidden layer).
    """
    columns = list(dict.fromkeys(_column(r) for r in records))
    images = list(dict.fromkeys(r.image for r in records))
    by = {(r.image, _column(r)): r for r in records}
    noisy = {r.image: r.noisy_psnr for r in records}

    def mean(c: str, key: str, fmt: str = ".2f") -> str:
        vals = [v for r in records if _column(r) == c and (v := getattr(r, key)) is not None]
        finite = [v for v in vals if np.isfinite(v)]
        return f"{np.mean(finite):{fmt}}" if finite else ("–" if vals else "")

    def row(head: str, key: str, fmt: str = ".2f") -> str:
        return f"| {head} | | " + " | ".join(mean(c, key, fmt) for c in columns) + " |"

    lines = _table(images, ["noisy", *columns],
                   lambda i, c: f"{noisy[i]:.2f}" if c == "noisy" else
                   (f"{by[i, c].psnr:.2f}" if (i, c) in by else ""), "image")
    lines.append("| **mean PSNR** | " + f"{np.mean(list(noisy.values())):.2f} | " +
                 " | ".join(f"**{mean(c, 'psnr')}**" for c in columns) + " |")
    if any(r.oracle_psnr is not None and r.stop != "oracle" for r in records):
        lines.append(row("mean PSNR, best iteration", "oracle_psnr"))
    lines.append(row("mean SSIM", "ssim"))
    if any(r.weight_change_l2 is not None for r in records):
        lines += [row("mean ‖w − w⁰‖₂, last iteration", "weight_change_l2", ".3g"),
                  row("mean max \\|Δw\\| of hidden layers", "weight_change_max", ".3g")]
    lines.append(row("seconds / image", "seconds"))
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: str | Path, image: str, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """PSNR against iteration (log axis) for the DIP runs and twicing step for the Nyström ones.

    With gradient descent at step ``1 / lambda_max`` (the trainer's default), iteration ``t`` is
    twicing step ``t`` of the analytic filter (paper eq. 9), so both share one axis.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, (steps, values) in curves.items():
        keep = np.asarray(steps) > 0
        style = "-" if method.startswith("nystrom") else "-o"
        label = f"{method} (analytic twicing)" if method.startswith("nystrom") else method
        ax.plot(np.asarray(steps)[keep], np.asarray(values)[keep], style, ms=2, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("iteration / twicing step t")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(image)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_figure6(path: str | Path, records: Sequence[Record]) -> None:
    """PSNR against depth per method: the mean over images (bold) and each image (thin), so that the
    trend shows beside its spread over images (the paper's Figure 6)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    images = list(dict.fromkeys(r.image for r in records))
    for method in dict.fromkeys(r.method for r in records):
        depths = sorted({r.depth for r in records if r.method == method})
        psnr = {(r.image, r.depth): r.psnr for r in records if r.method == method}
        (line,) = ax.plot(depths, [np.mean([psnr[i, d] for i in images if (i, d) in psnr]) for d in depths],
                          "-o", lw=2, label=f"{method} (mean)")
        for image in images:
            ax.plot(depths, [psnr.get((image, d), np.nan) for d in depths], "-", lw=0.8, alpha=0.4,
                    color=line.get_color())
    ax.set_xlabel("depth L (receptive field 13 x 13)")
    ax.set_ylabel("PSNR (dB); thin: one image each")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def plot_figure4(path: str | Path, records: Sequence[Record]) -> None:
    """PSNR and the two weight changes against width, mean and range over images (the paper's Figure 4).

    The weight-change legends carry the fitted log-log slope (eqs. 8 and 21: gradient descent
    ``-1/2`` and ``-3/2``, Adam ``0`` and ``-1``).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    keys = [("psnr", "PSNR (dB)"), ("weight_change_l2", "‖w − w⁰‖₂"), ("weight_change_max", "mean max |Δw|, hidden")]
    for method in dict.fromkeys(r.method for r in records):
        widths = sorted({r.width for r in records if r.method == method})
        for ax, (key, label) in zip(axes, keys):
            vals = [[getattr(r, key) for r in records if r.method == method and r.width == c] for c in widths]
            mid = np.array([np.mean(v) for v in vals])
            err = np.array([mid - [min(v) for v in vals], [max(v) for v in vals] - mid])
            name = method if key == "psnr" else f"{method} (slope {_loglog_slope(widths, mid):.2f})"
            ax.errorbar(widths, mid, yerr=err, fmt="-o", ms=3, capsize=3, label=name)
    for ax, (key, label) in zip(axes, keys):
        ax.set_xscale("log", base=2)
        ax.set_yscale("linear" if key == "psnr" else "log")
        ax.set_xlabel("channels c")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
