"""A recorded set of calls whose outputs a refactoring must keep (within float tolerance).

``record`` runs every call and writes the outputs and chosen steps to ``results/behaviour.npz``;
``check`` runs them again and compares: each case prints its largest absolute difference and
whether its chosen step is the same.  The images are small and synthetic, so it runs in about a
minute on two CPU threads.

Usage::

    python benchmarks/behaviour.py record|check [--file PATH]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_ntk_denoise import denoise_ntk, denoise_stack, denoise_tiled
from napari_ntk_denoise.dip import train_dip

RECORD = Path(__file__).resolve().parent / "results" / "behaviour.npz"
#: outputs are in [0, 1]; differences below this are float round-off of a reordered sum
ATOL = 2e-4


def _scene(shape: tuple[int, ...], seed: int = 0, sigma: float = 0.1) -> np.ndarray:
    """A smooth test image with edges under Gaussian noise (float32)."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape[:2]], indexing="ij")
    base = 0.5 + 0.3 * np.sin(6 * grids[0]) * np.cos(4 * grids[1]) + 0.2 * (grids[1] > 0.5)
    clean = np.broadcast_to(base.reshape(base.shape + (1,) * (len(shape) - 2)), shape)
    rng = np.random.default_rng(seed)
    return (clean + sigma * rng.standard_normal(shape)).astype(np.float32)


def _ntk(image: np.ndarray, **kw) -> tuple[np.ndarray, float]:
    out, res = denoise_ntk(image, 0.1, kernel_size=5, fraction=0.1, **{"guided": False, **kw})
    return out, res.t


def _volume() -> tuple[np.ndarray, float]:
    vol = np.moveaxis(_scene((32, 32, 8), seed=5), -1, 0)
    out, res = denoise_ntk(vol, 0.1, kernel_size=5, kernel_size_z=3, volume=True, fraction=0.05,
                           guided=False)
    return out, res.t


def _tiled() -> tuple[np.ndarray, float]:
    out, res = denoise_tiled(_scene((96, 96), seed=3), 0.1, tile=64, kernel_size=5, fraction=0.1, guided=False)
    return out, float(np.mean(res.t))


def _stack() -> tuple[np.ndarray, float]:
    counts = np.random.default_rng(4).poisson(40 * _scene((2, 48, 48), sigma=0.0).clip(0.05))
    out = denoise_stack(counts.astype(np.float32), axes="TYX", noise_model="poisson-gaussian", kernel_size=5,
                        fraction=0.1, guided=False)
    return out, 0.0


def _dip_gd() -> tuple[np.ndarray, float]:
    res = train_dip(_scene((32, 32), seed=6), arch="vanilla", optimizer="gd", width=16, iterations=40, every=10,
                    sigma=0.1, seed=0)
    return res.image, float(res.best_iteration)


CASES: dict[str, Callable[[], tuple[np.ndarray, float]]] = {
    "gray": lambda: _ntk(_scene((48, 48))),
    "rgb": lambda: _ntk(_scene((48, 48, 3), seed=1), channel_axis=-1),
    "guided": lambda: _ntk(_scene((48, 48), seed=2), guided=True, guided_pilot_draws=2),
    "noise_input": lambda: _ntk(_scene((48, 48)), input="noise"),
    "fixed_step": lambda: _ntk(_scene((48, 48)), stop=7),
    "guided_oracle": lambda: _ntk(_scene((48, 48), seed=2), guided=True, guided_pilot_draws=2, stop="oracle",
                                  reference=_scene((48, 48), sigma=0.0)),
    "noise_blur": lambda: _ntk(_scene((64, 64), seed=7), noise_blur=1.0, kernel="nngp", depth=3),
    "volume": _volume,
    "tiled": _tiled,
    "stack_poisson": _stack,
    "dip_vanilla_gd": _dip_gd,
}


def run_all() -> dict[str, np.ndarray]:
    """Every case's output and chosen step, as arrays named ``<case>`` and ``<case>_t``."""
    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    for name, case in CASES.items():
        image, t = case()
        out[name], out[f"{name}_t"] = np.asarray(image), np.asarray(t)
    return out


def check(record: dict[str, np.ndarray], now: dict[str, np.ndarray]) -> bool:
    """Print each case's difference against the record; ``True`` when all are within tolerance."""
    ok = True
    for name in CASES:
        diff = float(np.max(np.abs(record[name].astype(np.float64) - now[name])))
        same_t = bool(np.allclose(record[f"{name}_t"], now[f"{name}_t"]))
        good = diff <= ATOL and same_t
        ok &= good
        print(f"{name:16s} max |diff| {diff:.2e}  step {'same' if same_t else 'CHANGED'}  {'ok' if good else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("record", "check"))
    p.add_argument("--file", type=Path, default=RECORD)
    args = p.parse_args(argv)
    now = run_all()
    if args.mode == "record":
        np.savez_compressed(args.file, **now)
        print(f"recorded {len(CASES)} cases to {args.file}")
        return 0
    with np.load(args.file) as record:
        return 0 if check(dict(record), now) else 1


if __name__ == "__main__":
    sys.exit(main())
