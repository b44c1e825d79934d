"""Benchmark of deep-image-prior training: speed per architecture and PSNR after a fixed budget.

1. Iterations per second of each architecture (Adam, image input) on a 256 x 256 RGB image, on
   the CPU and, when one is present, on the GPU.
2. PSNR after a fixed budget on McMaster images (``../shared/data/mcmaster`` from the repository
   root), with the data protocol of ``shared/data/README.md``: clean image in [0, 1],
   ``noisy = clip(clean + N(0, sigma^2), 0, 1)``, sigma = 25/255, fixed seed, PSNR with data range
   1 on the output clipped to [0, 1].  Reported: the best recorded output (oracle, as the paper),
   the one of least MC-SURE (image input), and the last.

The defaults run in a few minutes on two CPU cores (width 32; centre crops of 128 x 128, 800
iterations, autoencoder and vanilla CNN with Adam and image input); flags give the paper's
settings, e.g.
``--crop 0 --iters 3000 --width 128 --archs vanilla unet ae --optims adam gd --inputs image noise``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from napari_ntk_denoise.dip import ARCHITECTURES, DIPStep, iter_dip

SIGMA = 25 / 255
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mcmaster"


def psnr(image: np.ndarray, clean: np.ndarray) -> float:
    """PSNR [dB] of ``image`` clipped to [0, 1] against ``clean``, data range 1."""
    return float(10 * np.log10(1.0 / np.mean((np.clip(image, 0, 1) - clean) ** 2)))


def speed(arch: str, width: int, iters: int, device: str) -> float:
    """Iterations per second on a 256 x 256 RGB image (Adam, image input), after one warm-up step."""
    image = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
    kw = dict(channel_axis=-1, arch=arch, width=width, sigma=SIGMA, criterion="last", device=device)
    for _ in iter_dip(image, iterations=1, every=1, **kw):  # warm-up: allocations, kernels
        pass
    gen = iter_dip(image, iterations=iters, every=iters, **kw)
    next(gen)  # iteration 0 and setup are not timed
    start = time.perf_counter()
    for _ in gen:
        pass
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - start)


def denoise(clean: np.ndarray, arch: str, optim: str, mode: str, args: argparse.Namespace) -> dict:
    """Train on one noisy image and score the oracle, MC-SURE and last outputs by PSNR."""
    noisy = np.clip(clean + np.random.default_rng(args.seed).normal(0, SIGMA, clean.shape), 0, 1).astype(np.float32)
    scores, sures = {}, {}
    start = time.perf_counter()
    for event in iter_dip(
        noisy, channel_axis=-1, arch=arch, optimizer=optim, input=mode, width=args.width, iterations=args.iters,
        every=args.every, sigma=SIGMA, criterion="last", device=args.device, seed=args.seed,
    ):
        if isinstance(event, DIPStep) and event.iteration > 0:
            scores[event.iteration] = psnr(event.image, clean)
            if event.sure is not None:
                sures[event.iteration] = event.sure
    seconds = time.perf_counter() - start
    best = max(scores, key=scores.get)
    by_sure = min(sures, key=sures.get) if sures else None
    return {
        "noisy": psnr(noisy, clean), "oracle": scores[best], "oracle_it": best,
        "sure": scores[by_sure] if by_sure else float("nan"), "sure_it": by_sure,
        "last": scores[args.iters], "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="hidden channels (paper/DIP: 128)")
    parser.add_argument("--speed-iters", type=int, default=3, help="timed iterations per architecture")
    parser.add_argument("--iters", type=int, default=800, help="training budget for the PSNR table")
    parser.add_argument("--every", type=int, default=50, help="iterations between evaluations")
    parser.add_argument("--crop", type=int, default=128, help="centre crop side (0: whole 500 x 500 image)")
    parser.add_argument("--images", nargs="+", default=["1", "2"], help="McMaster image names (without .tif)")
    parser.add_argument("--archs", nargs="+", default=["ae", "vanilla"], choices=ARCHITECTURES)
    parser.add_argument("--optims", nargs="+", default=["adam"], choices=("adam", "gd"))
    parser.add_argument("--inputs", nargs="+", default=["image"], choices=("image", "noise"))
    parser.add_argument("--device", default="cpu", help="device of the PSNR runs (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, width {args.width}\n")
    if not args.skip_speed:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        print("## Iterations per second, 256 x 256 RGB, Adam, image input\n")
        print("| arch | " + " | ".join(devices) + " |")
        print("|---|" + "---|" * len(devices))
        for arch in ARCHITECTURES:
            rates = [speed(arch, args.width, args.speed_iters, dev) for dev in devices]
            print(f"| {arch} | " + " | ".join(f"{r:.2f}" for r in rates) + " |", flush=True)
        print()

    paths = [DATA / f"{name}.tif" for name in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"PSNR table skipped: McMaster images not found ({', '.join(missing)}); "
              "expected ../shared/data/mcmaster/ beside the repository")
        return
    import tifffile

    crop = f"centre {args.crop} x {args.crop}" if args.crop else "whole 500 x 500"
    print(f"## PSNR [dB] after {args.iters} iterations, McMaster {', '.join(args.images)} ({crop}), "
          f"sigma 25, evaluated every {args.every}, device {args.device}\n")
    print("| image | arch | optim | input | noisy | oracle (it) | MC-SURE (it) | last | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, arch, optim, mode in itertools.product(paths, args.archs, args.optims, args.inputs):
        clean = tifffile.imread(path).astype(np.float32) / 255
        if args.crop:
            top, left = (clean.shape[0] - args.crop) // 2, (clean.shape[1] - args.crop) // 2
            clean = clean[top:top + args.crop, left:left + args.crop]
        r = denoise(clean, arch, optim, mode, args)
        sure = f"{r['sure']:.2f} ({r['sure_it']})" if r["sure_it"] else "-"
        print(f"| {path.stem} | {arch} | {optim} | {mode} | {r['noisy']:.2f} | {r['oracle']:.2f} ({r['oracle_it']}) "
              f"| {sure} | {r['last']:.2f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
