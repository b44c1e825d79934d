"""The C and numba versions of the fused kernel ops (``_native``) against their torch twins."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from napari_ntk_denoise.engine import _native
from napari_ntk_denoise.engine.kernel_ops import _EAGER, fused_op

N, W = 37, 70
NO_COMPILER = pytest.mark.skipif(_native._compiler() is None, reason="no C compiler for the C kernel ops")


@pytest.fixture(params=[pytest.param("c", marks=NO_COMPILER), "numba"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend of the native ops in turn."""
    monkeypatch.setattr(_native, "backend", lambda: request.param)
    return request.param


def _operands(low_dtype: torch.dtype, n_principal: int, seed: int = 0):
    """A Gram block of patches (cosines over the whole range, including exact +-1) split as the
    kernels split it, a float32 principal part ``ar @ pt`` of ``n_principal`` terms plus a low-precision rest,
    with row and column norms; and a small perturbation of the Gram."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize(torch.randn(N + W - 8, 9, generator=g), dim=1)
    nr, nc = 3 * torch.rand(N, generator=g) + 1, 3 * torch.rand(W, generator=g) + 1
    p = unit[:N] * nr[:, None]
    q = torch.cat([unit[:5], -unit[5:8], unit[N:]]) * nc[:, None]  # cos t = +-1 for some pairs
    basis = torch.linalg.qr(torch.randn(9, 9, generator=g))[0][:, :n_principal]
    ar, pt = p @ basis, (q @ basis).T.contiguous()
    g_low = (p @ q.T - ar @ pt).to(low_dtype)
    dg = (1e-3 * torch.randn(N, W, generator=g)).to(low_dtype)
    dg_moved = (1e-3 * torch.randn(N, 25, generator=g)).to(low_dtype)  # dG's second term, on 25 columns
    return (ar, pt, g_low), (dg, dg_moved), nr, nc, nr * 1.001, nc * 0.999


def _scalars():
    return 1.0, 2.0, 2.0  # Gram scale, output factor (NTK), sigma_w^2


@pytest.mark.parametrize("low_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n_principal", [6, 0])
def test_native_ops_match_their_torch_twins(backend, low_dtype, n_principal):
    gram, dg, nr, nc, nre, nce = _operands(low_dtype, n_principal)
    scale, factor, sw2 = _scalars()
    ref, out = torch.empty(N, W), torch.empty(N, W)
    _EAGER["single"](ref, *gram, nr, nc, scale, factor, sw2)
    assert _native.op("single")(out, *gram, nr, nc, scale, factor, sw2) is None
    tol = 2e-6 * float(ref.abs().max())
    assert float((out - ref).abs().max()) < tol

    ref_d, out_d = torch.empty(N, W, dtype=low_dtype), torch.empty(N, W, dtype=low_dtype)
    _EAGER["pair"](ref, ref_d, *gram, *dg, nr, nc, nre, nce, scale, factor, sw2)
    _native.op("pair")(out, out_d, *gram, *dg, nr, nc, nre, nce, scale, factor, sw2)
    assert float((out - ref).abs().max()) < tol
    # the change is rounded to low_dtype: one unit of its last place at most, plus float32 noise
    ulp = float(ref_d.float().abs().max()) * (2**-7 if low_dtype == torch.bfloat16 else 2**-22)
    assert float((out_d.float() - ref_d.float()).abs().max()) <= ulp + 4 * tol

    parts = [torch.empty(N, W, dtype=torch.bfloat16) for _ in range(4)]
    _EAGER["single_split"](*parts[:2], *gram, nr, nc, scale, factor, sw2)
    _native.op("single_split")(*parts[2:], *gram, nr, nc, scale, factor, sw2)
    ref_sum, out_sum = (parts[i].double() + parts[i + 1].double() for i in (0, 2))
    assert float((out_sum - ref_sum).abs().max()) < tol + 2**-15 * float(ref_sum.abs().max())


def test_native_principal_part_reads_a_strided_slice(backend):
    """The moved columns' principal part is a column slice of the full one (row stride > width)."""
    (ar, pt, g_low), _, nr, nc, _, _ = _operands(torch.bfloat16, 6)
    scale, factor, sw2 = _scalars()
    ref, out = torch.empty(N, 20), torch.empty(N, 20)
    _EAGER["single"](ref, ar, pt[:, :20].contiguous(), g_low[:, :20].contiguous(), nr, nc[:20], scale, factor, sw2)
    low = g_low[:, :20].contiguous()
    assert _native.op("single")(out, ar, pt[:, :20], low, nr, nc[:20], scale, factor, sw2) is None
    assert float((out - ref).abs().max()) < 2e-6 * float(ref.abs().max())


def test_native_split_rounds_like_torch_on_strided_blocks(backend):
    a = torch.randn(300, 200, generator=torch.Generator().manual_seed(3))[:, :150]  # as the padded blocks are
    hi, lo = _native.op("split")(a)
    ref_hi, ref_lo = _EAGER["split"](a)
    assert torch.equal(hi, ref_hi) and torch.equal(lo, ref_lo)


def test_native_ops_decline_operands_they_do_not_handle(backend):
    gram, _, nr, nc, _, _ = _operands(torch.bfloat16, 6)
    scale, factor, sw2 = _scalars()
    single = _native.op("single")
    out = torch.empty(W, N).T  # not contiguous
    assert single(out, *gram, nr, nc, scale, factor, sw2) is NotImplemented
    assert single(torch.empty(N, W, dtype=torch.float64), *gram, nr, nc, scale, factor, sw2) is NotImplemented
    assert single(torch.empty(N, W), *gram, nr[:-1], nc, scale, factor, sw2) is NotImplemented
    assert single(torch.empty(N, W), *gram[:2], gram[2].double(), nr, nc, scale, factor, sw2) is NotImplemented
    assert single(torch.empty(N, W), gram[0], gram[1].T.contiguous().T, gram[2], nr, nc, scale, factor, sw2) \
        is NotImplemented  # principal part with strided columns
    assert _native.op("split")(torch.randn(4, 6).T) is NotImplemented
    # ... and the kernels then use the torch op: same values as on contiguous operands
    ref = torch.empty(N, W)
    fused_op("single")(ref, *gram, nr, nc, scale, factor, sw2)
    fused_op("single")(out, *gram, nr, nc, scale, factor, sw2)
    assert float((out - ref).abs().max()) < 2e-6 * float(ref.abs().max())


@NO_COMPILER
def test_build_compiles_once_into_the_cache_and_only_with_a_compiler(tmp_path):
    compiler = _native._compiler()
    path = _native.build(tmp_path, compiler)
    assert path is not None and path.parent == tmp_path
    stamp = path.stat().st_mtime_ns
    assert _native.build(tmp_path, compiler) == path and path.stat().st_mtime_ns == stamp  # cached
    assert _native.build(tmp_path / "none", None) is None


def test_build_with_a_failing_compiler_leaves_nothing(tmp_path):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` executable to stand in for a broken compiler")
    assert _native.build(tmp_path, false) is None
    assert os.listdir(tmp_path) == []


def test_denoising_with_the_native_ops_matches_the_torch_ops(backend, monkeypatch):
    """End to end on a 256 x 128 image (banded SURE probe, moved-column blocks, paired blocks): the C
    or numba ops and the torch twins (what a GPU runs) give the same step and the same image up to rounding."""
    from napari_ntk_denoise import denoise_ntk
    from napari_ntk_denoise.engine.stopping import psnr
    from napari_ntk_denoise.io.samples import add_noise, clean_sample

    clean = clean_sample("camera")[::2, ::4]  # 256 rows: the banded probe
    noisy = add_noise(clean, 25 / 255, seed=1)
    out_c, res_c = denoise_ntk(noisy, 25 / 255, guided=False)
    monkeypatch.setattr(_native, "op", lambda name: None)
    monkeypatch.setenv("NTK_DENOISE_COMPILE", "0")  # eager: the compiled op is tested against it elsewhere
    out_t, res_t = denoise_ntk(noisy, 25 / 255, guided=False)
    grid = list(res_c.t_grid)
    assert abs(grid.index(res_c.t) - grid.index(res_t.t)) <= 1
    assert abs(psnr(np.clip(out_c, 0, 1), clean, 1.0) - psnr(np.clip(out_t, 0, 1), clean, 1.0)) < 0.01
    assert float(np.abs(out_c - out_t).max()) < 0.005  # measured 0.0007 (same step)
