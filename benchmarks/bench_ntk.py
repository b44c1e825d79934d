"""Benchmark of the closed-form NTK denoiser (issue: 512x512 RGB in <= 10 s and <= 2 GB).

Default run: the 512x512 RGB astronaut with sigma = 25/255 noise (seed 0), the one-stage filter
(``guided=False``) with Monte-Carlo SURE: wall time (first call in this process, which includes
loading the native fused ops -- or compiling them, once per machine, with the C compiler or numba,
or tracing them with ``torch.compile`` where there is neither; the clean image goes in as the
reference for the PSNR curve and the oracle step) and a second call without a reference (as
napari calls it), peak RSS, PSNR at the SURE step and at the oracle step; then the default guided
filter without a reference; scikit-image's ``denoise_nl_means`` and, when the ``bm3d`` package is
installed, BM3D (CBM3D for colour) timed in the same run as the baselines.

``--datasets set12,mcmaster`` adds the mean PSNR (auto-stopped and oracle, unguided and guided)
over the images of ``../shared/data`` (sigma = 25/255, seed 0; PSNR on outputs clipped to [0, 1]);
with ``--tile N`` the astronaut also goes through tiles (plain and guided) and every NTK call on
the datasets is tiled (``denoise_tiled``, tiles of at most N pixels a
side, each with its own SURE step; no oracle there), next to the same baselines.  ``--tile
auto`` takes the default side (``choose_tile``: 256, or 128 where the kernel's spectrum does not fall
within the rank), and the astronaut also runs in tiles of 256 in the same process.

Usage::

    python benchmarks/bench_ntk.py [--datasets set12,mcmaster] [--tile N|auto] [--limit N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import functools
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_ntk_denoise import denoise_ntk, denoise_tiled
from napari_ntk_denoise.bench import METHODS, BenchSettings, missing_package
from napari_ntk_denoise.engine import _native
from napari_ntk_denoise.engine.nystrom import default_gemm_dtype
from napari_ntk_denoise.engine.stopping import psnr
from napari_ntk_denoise.io.imageio import read_image
from napari_ntk_denoise.io.samples import SIGMA, add_noise, clean_sample

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_ntk(noisy, clean, axis, oracle=True, **kw):
    """One call; with ``oracle`` the clean image goes in as its reference (PSNR curve, oracle step)."""
    t0 = time.perf_counter()
    out, res = denoise_ntk(noisy, SIGMA, channel_axis=axis, reference=clean if oracle else None, **kw)
    elapsed = time.perf_counter() - t0
    auto = psnr(np.clip(out, 0, 1), clean, 1.0)
    if not oracle:
        return dict(time=elapsed, psnr=auto, t=res.t, res=res)
    oracle_t = int(res.t_grid[int(np.argmax(res.psnr))])
    oracle = psnr(np.clip(res.render(oracle_t), 0, 1), clean, 1.0)
    return dict(time=elapsed, psnr=auto, oracle=oracle, t=res.t, oracle_t=oracle_t, res=res)


def run_tiled(noisy, clean, axis, tile, **kw):
    """One tiled call (tiles of at most ``tile`` pixels a side, ``"auto"``: the default); no oracle step."""
    t0 = time.perf_counter()
    out, res = denoise_tiled(noisy, SIGMA, channel_axis=axis, tile=None if tile == "auto" else tile, **kw)
    return dict(time=time.perf_counter() - t0, psnr=psnr(np.clip(out, 0, 1), clean, 1.0), oracle=np.nan, t=res.t,
                tile=res.tile)


#: the baselines as ``ntk-denoise bench`` runs them (NLM with ``bench.NLM_PARAMS``; CBM3D for colour)
BASELINE_LABELS = {"nlm": "skimage denoise_nl_means (fast, 5x5/13x13, h = 0.8 sigma)", "bm3d": "BM3D (bm3d package)"}


def baselines() -> list[str]:
    """NLM, and BM3D where the ``bm3d`` package is installed."""
    return [m for m in BASELINE_LABELS if missing_package(m) is None]


def run_baseline(method, noisy, clean, axis):
    """One baseline of ``ntk-denoise bench`` (:data:`BASELINE_LABELS`), timed."""
    t0 = time.perf_counter()
    out = METHODS[method](noisy, clean, axis, BenchSettings(sigma=SIGMA * 255)).image
    return dict(time=time.perf_counter() - t0, psnr=psnr(np.clip(out, 0, 1), clean, 1.0))


def _seconds(t: float) -> str:
    """Two decimals, three below a second (GPU calls)."""
    return f"{t:.3f}" if t < 1 else f"{t:.2f}"


def astronaut(device, tile: int | str | None = None) -> None:
    clean = clean_sample("astronaut")
    noisy = add_noise(clean, SIGMA, seed=0)
    print(f"## 512x512 RGB astronaut, sigma = 25/255, default settings, MC-SURE ({device or 'auto'})\n")
    first = run_ntk(noisy, clean, -1, device=device, guided=False)
    rss = peak_rss_gb()
    second = run_ntk(noisy, clean, -1, oracle=False, device=device, guided=False)  # as napari calls it
    guided = run_ntk(noisy, clean, -1, oracle=False, device=device, guided=True)
    res = first["res"]
    base = {m: run_baseline(m, noisy, clean, -1) for m in baselines()}
    print("| method | wall time (s) | peak RSS (GB) | PSNR (dB) | t |")
    print("|---|---|---|---|---|")
    print(f"| noisy input | | | {psnr(noisy, clean, 1.0):.2f} | |")
    print(f"| NTK one stage, MC-SURE and PSNR curve, first call in the process | {_seconds(first['time'])} | "
          f"{rss:.2f} | {first['psnr']:.2f} | {first['t']} |")
    print(f"| NTK one stage, MC-SURE, second call (no reference) | {_seconds(second['time'])} | {peak_rss_gb():.2f} | "
          f"{second['psnr']:.2f} | {second['t']} |")
    print(f"| NTK, oracle t (same run) | | | {first['oracle']:.2f} | {first['oracle_t']} |")
    print(f"| NTK guided (the default), MC-SURE, no reference | {_seconds(guided['time'])} | {peak_rss_gb():.2f} | "
          f"{guided['psnr']:.2f} | {guided['t']} |")
    sides = {None: [], "auto": ["auto", 256]}.get(tile, [tile])  # auto: tiles of 256 as its baseline
    for side in sides:
        for label, kw in (("NTK", {"guided": False}), ("NTK guided", {"guided": True})):
            tiled = run_tiled(noisy, clean, -1, side, device=device, **kw)
            how = f"tiles of {tiled['tile']}" + (" (auto)" if side == "auto" else "")
            print(f"| {label}, MC-SURE, {how} (steps {min(tiled['t'])}-{max(tiled['t'])}) | "
                  f"{_seconds(tiled['time'])} | {peak_rss_gb():.2f} | {tiled['psnr']:.2f} | |")
    for m, b in base.items():
        print(f"| {BASELINE_LABELS[m]} | {b['time']:.2f} | | {b['psnr']:.2f} | |")
    on_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    backend = _native.backend() if on_cpu else None
    ops = {"c": f"C ({_native.library()._name})", "numba": "numba"}.get(backend, "torch.compile")
    print(f"\nrank {res.filter.rank}, anchors {res.params['n_anchors']}, timings "
          f"{({k: round(v, 2) for k, v in res.timings.items()})}, fused ops: {ops}\n")


def dataset(name: str, limit: int | None, device, tile: int | str | None = None) -> None:
    folder = DATA / name
    if not folder.is_dir():
        print(f"skipping {name}: {folder} not found (../shared/data beside the repository)")
        return
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))[:limit]
    rows, methods = [], baselines()
    for path in files:
        img = read_image(path)
        clean = img.astype(np.float64) / (255.0 if img.dtype == np.uint8 else float(np.iinfo(img.dtype).max))
        axis = -1 if clean.ndim == 3 else None
        noisy = add_noise(clean, SIGMA, seed=0)
        run = run_ntk if tile is None else functools.partial(run_tiled, tile=tile)
        plain = run(noisy, clean, axis, device=device, guided=False)
        guided = run(noisy, clean, axis, device=device, guided=True)
        base = {m: run_baseline(m, noisy, clean, axis)["psnr"] for m in methods}
        rows.append((plain["psnr"], plain["oracle"], guided["psnr"], guided["oracle"], plain["time"], guided["time"],
                     *base.values()))
        print(f"{name}/{path.name}: auto {plain['psnr']:.2f} oracle {plain['oracle']:.2f} | guided auto "
              f"{guided['psnr']:.2f} oracle {guided['oracle']:.2f} | "
              + " | ".join(f"{m.upper()} {v:.2f}" for m, v in base.items())
              + f" | {plain['time']:.1f} s / {guided['time']:.1f} s", flush=True)
    m = np.mean(rows, axis=0)
    tiling = "whole images" if tile is None else "default tiles (auto)" if tile == "auto" else f"tiles of {tile}"
    print(f"\n| {name} ({len(rows)} images, {tiling}) | auto (SURE) | oracle | gap |\n|---|---|---|---|")
    print(f"| NTK | {m[0]:.2f} | {m[1]:.2f} | {m[1] - m[0]:.2f} |")
    print(f"| NTK guided | {m[2]:.2f} | {m[3]:.2f} | {m[3] - m[2]:.2f} |")
    print(f"| guided - unguided | {m[2] - m[0]:+.2f} | {m[3] - m[1]:+.2f} | |")
    for method, value in zip(methods, m[6:]):
        print(f"| {BASELINE_LABELS[method]} | {value:.2f} | | |")
    print(f"\nmean seconds per image: {m[4]:.1f} (unguided), {m[5]:.1f} (guided)\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="", help="comma-separated: set12,mcmaster")
    p.add_argument("--tile", type=lambda v: v if v == "auto" else int(v), default=None,
                   help="tile the dataset images (tile side, or auto)")
    p.add_argument("--limit", type=int, default=None, help="images per dataset")
    p.add_argument("--device", default=None)
    p.add_argument("--skip-astronaut", action="store_true")
    args = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"large products in {default_gemm_dtype(torch.device('cpu'))} on the CPU, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}\n")
    if not args.skip_astronaut:
        astronaut(args.device, args.tile)
    for name in filter(None, args.datasets.split(",")):
        dataset(name, args.limit, args.device, args.tile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
