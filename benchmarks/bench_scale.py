"""Benchmark of microscopy-scale denoising: tiling, stacks, Poisson-Gaussian noise (issue #6).

Sections (all by default; pick with ``--only``):

``plane``  a synthetic ``N x N`` phantom (default 2048) with Poisson-Gaussian noise (gain 2, read
           noise 3), denoised in 512-pixel tiles with the Poisson-Gaussian model: wall time, peak
           RSS and PSNR against the noiseless phantom.
``stack``  a synthetic ``Z x N x N`` stack (default 32 x 512 x 512), same noise, plane by plane.
``volume`` the same stack with 3-D patches (r = 5, r_z = 3, volume tiles of 16 x 128 x 128) next to
           planes with the same in-plane kernel (r = 5).
``fmd``    the FMD samples in ``../shared/data/fmd_samples`` (a single raw frame against the
           50-frame average): NTK with the Gaussian model (sigma estimated) and with the
           Poisson-Gaussian model (gain and read noise estimated), next to scikit-image's
           non-local means and BM3D (the ``bm3d`` package, when installed).

PSNR uses the phantom's peak (synthetic data) or 255 (FMD), on outputs clipped to that range.
Peak RSS is that of the whole process so far (sections run in order).

Usage::

    python benchmarks/bench_scale.py [--only plane,stack,volume,fmd] [--size 2048] [--stack-shape 32,512,512]
                                     [--crop 512] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from napari_ntk_denoise.imageio import read_image
from napari_ntk_denoise.stacks import denoise_stack, estimate_stack_noise
from napari_ntk_denoise.stopping import estimate_noise_sigma, psnr
from napari_ntk_denoise.vst import PoissonGaussian

FMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fmd_samples"
GAIN, READ_NOISE, PEAK = 2.0, 3.0, 200.0

#: FMD sample name -> (axes, channels); BPAE_R_Channel stores one channel replicated into RGB
FMD_SAMPLES = {
    "Confocal_FISH_3": ("YX", "colour"),
    "BPAE_R_Channel": ("YX", "colour"),
    "WideField_BPAE_rgb_new1": ("YXC", "colour"),
    "3D_volume_stack1_32bit": ("CYX", "independent"),
}


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
VOLUME_RUNS = [  # 3-D patches against planes with the same in-plane kernel size
    ("NTK 2-D patches 5x5, Poisson-Gaussian (estimated), tiles of 512",
     dict(noise_model="poisson-gaussian", kernel_size=5)),
    ("NTK 3-D patches 3x5x5, Poisson-Gaussian (estimated), tiles of 16x128x128",
     dict(noise_model="poisson-gaussian", patches="3d", kernel_size=5, kernel_size_z=3, tile=128, tile_z=16)),
]


def synthetic(shape: tuple[int, ...], axes: str, device: str | None, runs: list[tuple[str, dict]]) -> None:
    clean = phantom(shape)
    noisy = poisson_gaussian_noise(clean)
    print(f"## synthetic {'x'.join(map(str, shape))} ({axes}), Poisson-Gaussian gain {GAIN}, read noise {READ_NOISE}\n")
    est = estimate_stack_noise(noisy, axes)
    print(f"estimated gain {est.gain:.3f} (true {GAIN}), read noise {est.read_noise:.3f} (true {READ_NOISE})\n")
    print("| method | wall time (s) | peak RSS (GB) | PSNR (dB) |")
    print("|---|---|---|---|")
    print(f"| noisy input | | | {psnr(np.clip(noisy, 0, PEAK), clean, PEAK):.2f} |")
    for label, kw in runs:
        out, sec = timed(denoise_stack, noisy, axes=axes, device=device, **{"tile": 512, **kw})
        print(f"| {label} | {sec:.1f} | {peak_rss_gb():.2f} | {psnr(np.clip(out, 0, PEAK), clean, PEAK):.2f} |")
    print()


def nlm(noisy: np.ndarray, axes: str, channels: str) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    planes = np.moveaxis(noisy, axes.index("C"), 0) if channels == "independent" else noisy[None]
    axis = -1 if axes == "YXC" else None
    out = []
    for p in planes:
        s = estimate_noise_sigma(p, axis)
        out.append(denoise_nl_means(p, h=0.8 * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True,
                                    channel_axis=axis))
    return np.moveaxis(np.stack(out), 0, axes.index("C")) if channels == "independent" else out[0]


def bm3d_denoise(noisy: np.ndarray, axes: str, channels: str) -> np.ndarray:
    import bm3d

    planes = np.moveaxis(noisy, axes.index("C"), 0) if channels == "independent" else noisy[None]
    out = []
    for p in planes:
        if axes == "YXC":
            out.append(bm3d.bm3d_rgb(p / 255.0, estimate_noise_sigma(p, -1) / 255.0) * 255.0)
        else:
            out.append(bm3d.bm3d(p, estimate_noise_sigma(p)))
    return np.moveaxis(np.stack(out), 0, axes.index("C")) if channels == "independent" else out[0]


def fmd(crop: int, device: str | None) -> None:
    print(f"## FMD samples (single raw frame vs 50-frame average, PSNR in dB at peak 255, crop {crop})\n")
    try:
        import bm3d  # noqa: F401

        has_bm3d = True
    except ImportError:
        has_bm3d = False
    print("| sample | noisy | NTK Gaussian | NTK Poisson-Gaussian (estimated) | NLM | BM3D | NTK G / PG time (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, (axes, channels) in FMD_SAMPLES.items():
        suffix = ".tif" if name.startswith("3D") else ".png"
        noisy = read_image(FMD / f"noisy_{name}{suffix}").astype(np.float32)
        gt = read_image(FMD / f"gt_{name}{suffix}").astype(np.float32)
        if name == "BPAE_R_Channel":
            noisy, gt = noisy[..., 0], gt[..., 0]
        yx = [axes.index("Y"), axes.index("X")]
        crop_sl = tuple(slice(0, crop) if i in yx else slice(None) for i in range(noisy.ndim))
        noisy, gt = noisy[crop_sl], gt[crop_sl]

        def score(out: np.ndarray) -> str:
            return f"{psnr(np.clip(out, 0, 255), gt, 255.0):.2f}"

        gauss, t_g = timed(denoise_stack, noisy, axes=axes, channels=channels, device=device)
        try:
            pg, t_pg = timed(denoise_stack, noisy, axes=axes, channels=channels, noise_model="poisson-gaussian",
                             device=device)
            pg_cell, t_cell = score(pg), f"{t_g:.1f} / {t_pg:.1f}"
        except ValueError as exc:  # e.g. no signal-dependent noise found in the image
            pg_cell, t_cell = f"estimation failed: {exc}", f"{t_g:.1f} / -"
        bm3d_cell = score(bm3d_denoise(noisy, axes, channels)) if has_bm3d else "not installed"
        print(f"| {name} | {score(noisy)} | {score(gauss)} | {pg_cell} | {score(nlm(noisy, axes, channels))} | "
              f"{bm3d_cell} | {t_cell} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="plane,stack,volume,fmd", help="comma-separated sections")
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic plane")
    parser.add_argument("--stack-shape", default="32,512,512", help="Z,Y,X of the synthetic stack")
    parser.add_argument("--crop", type=int, default=512, help="crop FMD samples to this many rows and columns")
    parser.add_argument("--device", default=None)
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
    if "fmd" in sections:
        fmd(args.crop, args.device)


if __name__ == "__main__":
    main()
