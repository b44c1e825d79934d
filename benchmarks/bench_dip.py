"""Speed of deep-image-prior training: iterations per second per architecture, and where the time goes.

1. The trainer itself (:func:`~napari_ntk_denoise.dip.iter_dip`, Adam, noise input, default
   design and evaluation every 50 iterations) at 128 x 128 and 256 x 256 RGB.
2. One training step of the bare network (forward, backward, Adam) in the default memory
   layout and in channels-last layout; for one architecture also compiled with
   ``torch.compile`` (its start-up apart).
3. The operators that take the time there (``torch.profiler``, self CPU time over 10 steps).

PSNR tables are made by ``ntk-denoise bench`` (``benchmarks/results/README.md``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_ntk_denoise.dip import ARCHITECTURES, build_network, default_style, iter_dip


def trainer_rate(arch: str, size: int, width: int, iters: int) -> float:
    """Iterations per second of :func:`iter_dip` on a ``size`` x ``size`` RGB image (setup not timed)."""
    image = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    gen = iter_dip(image, channel_axis=-1, arch=arch, input="noise", width=width, iterations=iters, every=50,
                   criterion="holdout", device="cpu")
    next(gen)
    start = time.perf_counter()
    for _ in gen:
        pass
    return iters / (time.perf_counter() - start)


def _step_fn(arch: str, size: int, width: int, layout: str):
    """A closure taking one Adam step of the bare network in ``layout``: default, channels_last or compile."""
    net = build_network(arch, 32, 3, width, style=default_style(arch, "adam"))
    x, y = torch.rand(1, 32, size, size) * 0.1, torch.rand(1, 3, size, size)
    if layout == "channels_last":
        net, x, y = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last), y
    forward = torch.compile(net) if layout == "compile" else net
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.9, 0.99))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (0.5 * (forward(x) - y).square().sum()).backward()
        opt.step()

    return step


def step_rate(arch: str, size: int, width: int, layout: str, iters: int) -> tuple[float, float]:
    """Steps per second of the bare network and the seconds of its first (warm-up / compile) step."""
    step = _step_fn(arch, size, width, layout)
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return iters / (time.perf_counter() - start), first


def profile(arch: str, size: int, width: int, rows: int = 8) -> str:
    """Table of the operators with the most self CPU time over 10 steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = _step_fn(arch, size, width, "default")
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--profile", default="ae", choices=ARCHITECTURES,
                        help="architecture compiled and profiled at the first size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, width {args.width}\n")
    print("| arch | size | trainer it/s | step/s | step/s channels-last |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        for size in args.sizes:
            rates = [step_rate(arch, size, args.width, lay, args.iters)[0] for lay in ("default", "channels_last")]
            print(f"| {arch} | {size} | {trainer_rate(arch, size, args.width, args.iters):.2f} | "
                  + " | ".join(f"{r:.2f}" for r in rates) + " |", flush=True)
    size = args.sizes[0]
    if not args.no_compile:
        rate, first = step_rate(args.profile, size, args.width, "compile", args.iters)
        print(f"\ntorch.compile, {args.profile} {size} x {size}: {rate:.2f} step/s after a first step of {first:.0f} s")
    print(f"\n## Where the time goes: {args.profile}, {size} x {size}, one Adam step x 10\n")
    print("```\n" + profile(args.profile, size, args.width) + "```")


if __name__ == "__main__":
    main()
