"""Benchmark of microscopy-scale denoising: tiling, stacks, Poisson-Gaussian noise (issue #6).

Sections (all by default; pick with ``--only``):

``plane``  a synthetic ``N x N`` phantom (default 2048) with Poisson-Gaussian noise (gain 2, read
           noise 3), denoised in 512-pixel tiles with the Poisson-Gaussian model: wall time, peak
           RSS and PSNR against the noiseless phantom.
``stack``  a synthetic ``Z x N x N`` stack (default 32 x 512 x 512), same noise, plane by plane.
``volume`` the same stack with 3-D patches (r = 5, r_z = 3, volume tiles of 16 x 128 x 128) next to
           planes with the same in-plane kernel (r = 5).
``tiles``  the synthetic plane (estimated noise) and the 2-D FMD planes in tiles of 512, 256, 128
           (and 256 with the full and smaller Nystrom sets): time against PSNR, next to scikit-image's NLM (and
           BM3D when installed) after the same transform.
``fmd``    every plane of the FMD samples in ``../shared/data/fmd_samples`` (a single raw frame
           against the 50-frame average) through the same generalized Anscombe transform: NTK
           plain and guided, scikit-image's non-local means and BM3D (the ``bm3d`` package),
           all with the estimated parameters and noise level after the transform.

PSNR uses the phantom's peak (synthetic data) or 255 (FMD), on outputs clipped to that range.
Peak RSS is that of the whole process so far (sections run in order).

Usage::

    python benchmarks/bench_scale.py [--only plane,stack,volume,tiles,fmd] [--size 2048] [--stack-shape 32,512,512]
                                     [--crop 512] [--device cpu|cuda] [--curves sure.png]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ntk_denoise.engine.denoise import denoise_ntk
from napari_ntk_denoise.engine.stopping import DoubtfulStopWarning, psnr
from napari_ntk_denoise.io.imageio import read_image
from napari_ntk_denoise.microscopy.noise_estimation import noise_report
from napari_ntk_denoise.microscopy.stacks import denoise_stack, estimate_stack_noise
from napari_ntk_denoise.microscopy.vst import PoissonGaussian, gat_forward, gat_inverse

FMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fmd_samples"
GAIN, READ_NOISE, PEAK = 2.0, 3.0, 200.0

#: the FMD samples (BPAE_R_Channel stores one channel replicated into RGB)
FMD_SAMPLES = ("Confocal_FISH_3", "BPAE_R_Channel", "WideField_BPAE_rgb_new1", "3D_volume_stack1_32bit")


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def phantom(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Noiseless fluorescence-like phantom in ``[5, PEAK]``: blurred random blobs over a gradient."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    spots = np.zeros(shape)
    n = int(np.prod(shape) / 400)
    spots[tuple(rng.integers(0, s, n) for s in shape)] = 1.0
    sigmas = (1.0,) * (len(shape) - 2) + (3.0, 3.0)
    blobs = ndimage.gaussian_filter(spots, sigmas)
    grid = np.meshgrid(*(np.linspace(0, 1, s) for s in shape[-2:]), indexing="ij")
    img = 0.2 * grid[1] + blobs / blobs.max()
    return 5 + (PEAK - 5) * img / img.max()


def poisson_gaussian_noise(clean: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (GAIN * rng.poisson(clean / GAIN) + READ_NOISE * rng.standard_normal(clean.shape)).astype(np.float32)


def timed(func, *args, **kwargs):
    t0 = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - t0


#: rows of the synthetic sections: label, denoise_stack options
PLANE_RUNS = [
    ("NTK, Poisson-Gaussian (true parameters), tiles of 512",
     dict(noise_model="poisson-gaussian", noise=PoissonGaussian(GAIN, READ_NOISE))),
    ("NTK, Poisson-Gaussian (estimated), tiles of 512", dict(noise_model="poisson-gaussian")),
]
#: tilings of the ``tiles`` section: label, denoise_stack options
TILE_RUNS = [  # 256 (the default's choice on these planes) against the full Nystrom set, 512, 128 and lighter sets
    ("tiles of 512", dict(tile=512)), ("tiles of 256", dict(tile=256)),
    ("tiles of 256, full set (--no-adaptive)", dict(tile=256, adaptive=False)), ("tiles of 128", dict(tile=128)),
    ("tiles of 256, fraction 0.01", dict(tile=256, fraction=0.01)),
    ("tiles of 256, fraction 0.01, rank 128", dict(tile=256, fraction=0.01, rank=128)),
]
VOLUME_RUNS = [  # 3-D patches against planes with the same in-plane kernel size
    ("NTK 2-D patches 5x5, Poisson-Gaussian (estimated), tiles of 512",
     dict(noise_model="poisson-gaussian", kernel_size=5)),
    ("NTK 3-D patches 3x5x5, Poisson-Gaussian (estimated), tiles of 16x128x128",
     dict(noise_model="poisson-gaussian", patches="3d", kernel_size=5, kernel_size_z=3, tile=128, tile_z=16)),
]


def synthetic(shape: tuple[int, ...], axes: str, device: str | None, runs: list[tuple[str, dict]],
              baseline: bool = False) -> None:
    clean = phantom(shape)
    noisy = poisson_gaussian_noise(clean)
    print(f"## synthetic {'x'.join(map(str, shape))} ({axes}), Poisson-Gaussian gain {GAIN}, read noise {READ_NOISE}\n")
    est = estimate_stack_noise(noisy, axes)
    print(f"estimated gain {est.gain:.3f} (true {GAIN}), read noise {est.read_noise:.3f} (true {READ_NOISE})\n")
    print("| method | wall time (s) | peak RSS (GB) | PSNR (dB) |")
    print("|---|---|---|---|")
    print(f"| noisy input | | | {psnr(np.clip(noisy, 0, PEAK), clean, PEAK):.2f} |")
    if baseline:
        scores, sec = timed(stabilised_scores, noisy, clean, PEAK)
        print(f"| skimage NLM (BM3D: {scores['bm3d']:.2f}) after the same GAT, estimated noise | {sec:.1f} | "
              f"{peak_rss_gb():.2f} | {scores['nlm']:.2f} |")
    for label, kw in runs:
        out, sec = timed(denoise_stack, noisy, axes=axes, device=device, **{"tile": 512, "guided": False, **kw})
        print(f"| {label} | {sec:.1f} | {peak_rss_gb():.2f} | {psnr(np.clip(out, 0, PEAK), clean, PEAK):.2f} |")
    print()


def tiles(size: int, device: str | None) -> None:
    """Tile sizes on the synthetic plane and on the single FMD planes, Poisson-Gaussian (estimated)."""
    synthetic((size, size), "YX", device, [(f"NTK, Poisson-Gaussian (estimated), {label}",
                                            dict(noise_model="poisson-gaussian", **kw)) for label, kw in TILE_RUNS],
              baseline=True)
    planes = [p for p in fmd_planes() if not p[0].startswith("3D") or p[0].endswith("[0]")]
    print(f"## FMD planes ({len(planes)}: the 2-D samples, the widefield channels apart, the first plane of "
          "the 3-D stack), Poisson-Gaussian (estimated)\n")
    print("| tiling | mean PSNR (dB) | total wall time (s) |")
    print("|---|---|---|")
    for label, kw in TILE_RUNS:
        scores, t0 = [], time.perf_counter()
        for _, noisy, gt in planes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DoubtfulStopWarning)
                out = denoise_stack(noisy.astype(np.float32), axes="YX", noise_model="poisson-gaussian",
                                    device=device, guided=False, **kw)
            scores.append(psnr(np.clip(out, 0, 255), gt, 255))
        print(f"| {label} | {np.mean(scores):.2f} | {time.perf_counter() - t0:.1f} |")
    t0 = time.perf_counter()
    base = [stabilised_scores(noisy.astype(np.float32), gt, 255.0) for _, noisy, gt in planes]
    print(f"| skimage NLM after the same GAT (BM3D: {np.mean([b['bm3d'] for b in base]):.2f}) | "
          f"{np.mean([b['nlm'] for b in base]):.2f} | {time.perf_counter() - t0:.1f} |")
    print()


def fmd_planes() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every FMD plane as ``(name, noisy, 50-frame average)``: the widefield colour channels apart
    (each has its own gain), BPAE_R's replicated channel once, the 3-D stack's planes."""
    planes = []
    for name in FMD_SAMPLES:
        suffix = ".tif" if name.startswith("3D") else ".png"
        noisy, gt = (read_image(FMD / f"{kind}_{name}{suffix}").astype(np.float64) for kind in ("noisy", "gt"))
        if name == "BPAE_R_Channel":
            noisy, gt = noisy[..., 0], gt[..., 0]
        if noisy.ndim == 2:
            planes.append((name, noisy, gt))
        elif name.startswith("3D"):
            planes += [(f"{name}[{i}]", n, g) for i, (n, g) in enumerate(zip(noisy, gt))]
        else:
            planes += [(f"{name}[{'RGB'[c]}]", noisy[..., c], gt[..., c]) for c in range(noisy.shape[-1])]
    return planes


def stabilised_baselines(g: np.ndarray, sigma: float) -> dict[str, np.ndarray]:
    """scikit-image NLM and, when the ``bm3d`` package is installed, BM3D on a transformed plane,
    with the NTK filter's noise level (BM3D missing: NaN)."""
    from skimage.restoration import denoise_nl_means

    out = {"nlm": denoise_nl_means(g, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)}
    try:
        import bm3d
    except ImportError:
        return {**out, "bm3d": np.full_like(g, np.nan)}
    return {**out, "bm3d": bm3d.bm3d(g, sigma)}


def stabilised_scores(noisy: np.ndarray, clean: np.ndarray, peak: float) -> dict[str, float]:
    """PSNR of :func:`stabilised_baselines` after the GAT with the plane's estimated noise."""
    rep = noise_report(noisy)
    base = stabilised_baselines(gat_forward(noisy, rep.noise).astype(np.float64), rep.sigma)
    return {k: psnr(np.clip(gat_inverse(v, rep.noise), 0, peak), clean, peak) for k, v in base.items()}


def fmd(crop: int, device: str | None, curves: Path | None) -> None:
    """The FMD planes through the generalized Anscombe transform (parameters estimated once per
    plane, :func:`noise_report`), then NTK plain and guided, NLM and BM3D with the same parameters
    and noise level, back by the exact unbiased inverse; PSNR against the 50-frame average."""
    print(f"## FMD samples: one raw frame against its 50-frame average, every method after the same GAT "
          f"(PSNR in dB at peak 255, crop {crop})\n")
    print("| plane | noise after GAT: model / measured | noisy | NTK (t; oracle t) | NTK guided (t) | NLM | BM3D | "
          "NTK / guided / BM3D time (s) | stop warnings |")
    print("|---|---|---|---|---|---|---|---|---|")
    scores: dict[str, list[float]] = {k: [] for k in ("noisy", "ntk", "guided", "nlm", "bm3d")}
    plotted = []
    for name, noisy, gt in fmd_planes():
        noisy, gt = noisy[:crop, :crop], gt[:crop, :crop]
        rep = noise_report(noisy)
        g, g_gt = gat_forward(noisy, rep.noise), gat_forward(gt, rep.noise)
        measured = float(np.std(g.astype(np.float64) - g_gt))
        runs = {}
        for key, guided in (("ntk", False), ("guided", True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DoubtfulStopWarning)  # reported in the table
                (out, res), sec = timed(denoise_ntk, g, rep.sigma, reference=g_gt, guided=guided, device=device,
                                        noise_blur=rep.blur)
            runs[key] = (gat_inverse(out, rep.noise), res, sec)
        t0 = time.perf_counter()
        base = {k: gat_inverse(v, rep.noise) for k, v in stabilised_baselines(g.astype(np.float64), rep.sigma).items()}
        t_bm3d = time.perf_counter() - t0
        outs = {"noisy": noisy, **{k: v[0] for k, v in runs.items()}, **base}
        cell = {k: psnr(np.clip(v, 0, 255), gt, 255.0) for k, v in outs.items()}
        for k, v in cell.items():
            scores[k].append(v)
        plain, guided = runs["ntk"][1], runs["guided"][1]
        oracle_t = int(plain.t_grid[int(np.argmin(plain.stages[0].mse))])
        doubts = "; ".join(plain.params["stop_warnings"] + guided.params["stop_warnings"]) or "-"
        print(f"| {name} | {rep.sigma:.3f} / {measured:.3f} | {cell['noisy']:.2f} | {cell['ntk']:.2f} ({plain.t}; "
              f"{oracle_t}) | {cell['guided']:.2f} ({guided.t}) | {cell['nlm']:.2f} | {cell['bm3d']:.2f} | "
              f"{runs['ntk'][2]:.1f} / {runs['guided'][2]:.1f} / {t_bm3d:.1f} | {doubts} |")
        plotted.append((name, plain))
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    print(f"| **mean** | | {means['noisy']:.2f} | {means['ntk']:.2f} | {means['guided']:.2f} | {means['nlm']:.2f} | "
          f"{means['bm3d']:.2f} | | |\n")
    if curves is not None:
        plot_sure_curves(plotted, curves)


def plot_sure_curves(results: list[tuple[str, Any]], path: Path) -> None:
    """SURE and the true MSE (both in the transformed domain) of every plane, the chosen t marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    fig, axes = plt.subplots((len(results) + cols - 1) // cols, cols, figsize=(4 * cols, 3 * len(results) / cols + 1),
                             squeeze=False)
    for ax, (name, res) in zip(axes.flat, results):
        st = res.stages[0]
        ax.semilogx(res.t_grid, st.sure.sure, label="SURE")
        ax.semilogx(res.t_grid, st.mse, "--", label="true MSE")
        ax.axvline(res.t, color="k", lw=0.8)
        ax.set_title(f"{name} (t = {res.t})", fontsize=8)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"SURE curves: {path}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="plane,stack,volume,fmd", help="comma-separated sections")
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic plane")
    parser.add_argument("--stack-shape", default="32,512,512", help="Z,Y,X of the synthetic stack")
    parser.add_argument("--crop", type=int, default=512, help="crop FMD samples to this many rows and columns")
    parser.add_argument("--device", default=None)
    parser.add_argument("--curves", type=Path, default=None, help="save the FMD planes' SURE curves to this PNG")
    args = parser.parse_args()
    print(f"# bench_scale on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device or 'auto'}\n")
    sections = set(args.only.split(","))
    stack_shape = tuple(int(v) for v in args.stack_shape.split(","))
    if "plane" in sections:
        synthetic((args.size, args.size), "YX", args.device, PLANE_RUNS)
    if "stack" in sections:
        synthetic(stack_shape, "ZYX", args.device, PLANE_RUNS)
    if "volume" in sections:
        synthetic(stack_shape, "ZYX", args.device, VOLUME_RUNS)
    if "tiles" in sections:
        tiles(args.size, args.device)
    if "fmd" in sections:
        fmd(args.crop, args.device, args.curves)


if __name__ == "__main__":
    main()
