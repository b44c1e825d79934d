"""Analytic CNN kernels: closed forms, deep-kernel neighbourhoods and the empirical-NTK referee."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_ntk_denoise.engine.fast_blocks import block_fast, columns, patch_basis
from napari_ntk_denoise.engine.kernels import CNNKernel, relu_expectations
from napari_ntk_denoise.engine.networks import VanillaCNN, empirical_ntk


def _image(c, *shape, seed=0, dtype=torch.float64):
    return torch.rand(c, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _full(kernel, x):
    idx = torch.arange(math.prod(x.shape[1:]))
    return kernel.block(x, idx, idx)


@pytest.mark.parametrize("shape,ndim", [((6, 6), 2), ((3, 4, 5), 3)])
def test_empirical_ntk_matches_bruteforce_autograd(shape, ndim):
    x = _image(3, *shape)[None]
    net = VanillaCNN(3, width=8, depth=3, kernel_size=3, generator=torch.Generator().manual_seed(0), ndim=ndim).double()
    z = net(x)[0, 0].reshape(-1)
    params = list(net.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(z[i], params, retain_graph=True)])
            for i in range(len(z))]
    jac = torch.stack(rows)
    torch.testing.assert_close(empirical_ntk(net, x), jac @ jac.T)
    jo = jac[:, -params[-1].numel():]
    torch.testing.assert_close(empirical_ntk(net, x, layers="output"), jo @ jo.T)


@pytest.mark.parametrize(
    "depth,r,channels,kind,rz",
    [(2, 3, 1, "ntk", None), (2, 5, 3, "ntk", None), (2, 5, 1, "nngp", None), (3, 3, 1, "ntk", None),
     (3, 3, 3, "ntk", None), (3, 3, 3, "nngp", None),
     (2, 3, 1, "ntk", 3), (2, 3, 2, "nngp", 1), (3, 3, 2, "ntk", 3)],
)
def test_referee_empirical_ntk_converges_to_analytic(depth, r, channels, kind, rz):
    """Relative Frobenius error of J J^T against the closed form falls with width (~ c^-1/2).

    The statistic is the root-mean-square over independent initialisations (16 for L = 2, 8 for
    L = 3) of the per-network relative error, which estimates the c^-1/2 fluctuation; 16x the
    width should divide it by ~4.  Widths are 64/256/1024 for L = 2 and 32/128/512 for L = 3 (to
    keep the suite fast); the seeds are fixed, so the test is deterministic.  ``rz`` set: a 3-D
    network (``rz x r x r`` convolutions) on a 4 x 5 x 5 volume against the 3-D kernel.
    """
    ndim = 2 if rz is None else 3
    x = _image(channels, *((7, 7) if ndim == 2 else (4, 5, 5)), seed=depth * 10 + r)
    arch = CNNKernel(depth=depth, kernel_size=r, kind=kind, ndim=ndim, kernel_size_z=rz)  # one description of both
    analytic = _full(arch, x).float()
    layers = "all" if kind == "ntk" else "output"
    widths, seeds = ((64, 256, 1024), 16) if depth == 2 else ((32, 128, 512), 8)
    rms = []
    for width in widths:
        errs = [
            float((empirical_ntk(VanillaCNN.from_architecture(arch, channels, width=width,
                                                              generator=torch.Generator().manual_seed(s)),
                                 x[None].float(),
                                 layers=layers).float() - analytic).norm() / analytic.norm())
            for s in range(seeds)
        ]
        rms.append(float(np.sqrt(np.mean(np.square(errs)))))
    assert rms[0] > rms[1] > rms[2], rms
    assert rms[2] < rms[0] / 2.5, rms
    assert rms[2] < (0.1 if depth == 2 else 0.25), rms


@pytest.mark.parametrize("shape,rz", [((9, 11), None), ((3, 5, 7), 3)])
def test_kernel_block_is_slice_of_full_matrix_deep(shape, rz):
    """Deep kernels expand neighbourhoods per layer; any block must equal the full matrix slice."""
    x = _image(2, *shape, seed=3)
    for depth in (3, 4):
        kern = CNNKernel(depth=depth, kernel_size=3, ndim=len(shape), kernel_size_z=rz)
        full = _full(kern, x)
        rows = torch.tensor([0, 5, 17, 50, 98])
        cols = torch.tensor([3, 40, 41, 77])
        torch.testing.assert_close(kern.block(x, rows, cols), full[rows][:, cols])
        torch.testing.assert_close(full, full.T)
        assert torch.linalg.eigvalsh(full).min() > -1e-8 * full.diag().max()
        _, _, kdiag = kern.diagonals(x)
        torch.testing.assert_close(full.diag(), kdiag.reshape(-1))


def test_volume_kernel_of_one_plane_with_flat_patches_is_the_image_kernel():
    """A 3-D kernel with ``r_z = 1`` on a one-plane volume is the 2-D kernel (same patches, same scale)."""
    x = _image(2, 6, 7, seed=5)
    for depth in (2, 3):
        flat = CNNKernel(depth=depth, kernel_size=3, ndim=3, kernel_size_z=1)
        torch.testing.assert_close(_full(flat, x[:, None]), _full(CNNKernel(depth=depth, kernel_size=3), x))


def test_two_layer_closed_forms_eq16():
    """L = 2: NNGP is eq. 16 and the NTK adds V'(Sigma) o Sigma, on reflect-padded patches."""
    x = _image(1, 7, 7, seed=5)
    r = 3
    padded = torch.nn.functional.pad(x[None], (1, 1, 1, 1), mode="reflect")[0]
    patches = torch.nn.functional.unfold(padded[None], r)[0].T  # (49, 9)
    s1 = 2.0 * patches @ patches.T / r**2
    n = s1.diag().sqrt()
    cos = (s1 / n[:, None] / n[None, :]).clamp(-1, 1)
    th = torch.acos(cos)
    nngp = n[:, None] * n[None, :] / math.pi * (torch.sin(th) + (math.pi - th) * cos)
    ntk = n[:, None] * n[None, :] / math.pi * (torch.sin(th) + 2 * (math.pi - th) * cos)
    torch.testing.assert_close(_full(CNNKernel(2, r, "nngp"), x), nngp)
    torch.testing.assert_close(_full(CNNKernel(2, r, "ntk"), x), ntk)


def test_relu_expectations_monte_carlo():
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    white = torch.randn(400000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = white @ torch.linalg.cholesky(cov).T
    v, vp = relu_expectations(cov, cov.diag(), cov.diag(), sigma_w2=2.0)
    mc_v = 2 * (torch.relu(h[:, 0]) * torch.relu(h[:, 1])).mean()
    mc_vp = 2 * ((h[:, 0] > 0) & (h[:, 1] > 0)).double().mean()
    assert abs(float(v[0, 1] - mc_v)) < 0.01
    assert abs(float(vp[0, 1] - mc_vp)) < 0.01


@pytest.mark.parametrize("depth,shape", [(2, (12, 12)), (3, (12, 12)), (2, (4, 6, 6)), (3, (4, 6, 6))])
def test_block_fast_pair_matches_two_exact_blocks(depth, shape):
    x = _image(3, *shape, seed=7, dtype=torch.float32)
    x_eps = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    kern = CNNKernel(depth=depth, kernel_size=3, ndim=len(shape))
    rows, cols = torch.arange(0, 144, 3), torch.tensor([1, 30, 77, 100, 143])
    d, de = kern.diagonals(x), kern.diagonals(x_eps)
    exact = kern.block(x.double(), rows, cols)
    exact_eps = kern.block(x_eps.double(), rows, cols)
    k, dk = block_fast(kern, x, rows, columns(kern, x, cols, d, x_eps, de))
    torch.testing.assert_close(k.double(), exact, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dk.double(), exact_eps - exact, rtol=2e-2, atol=2e-6)
    if depth == 2:  # bfloat16 products with a float32 principal part stay close
        basis = patch_basis(kern, x, cols)
        kb, dkb = block_fast(kern, x, rows, columns(kern, x, cols, d, x_eps, de, torch.bfloat16, basis))
        torch.testing.assert_close(kb.double(), exact, rtol=2e-3, atol=1e-4)
        torch.testing.assert_close(dkb.double(), exact_eps - exact, rtol=5e-2, atol=2e-5)


@pytest.mark.parametrize("gemm_dtype", [torch.float32, torch.bfloat16])
def test_rows_the_perturbation_misses_change_only_on_moved_columns(gemm_dtype):
    """A perturbation on image rows 0-1 misses the patches (r = 3) of rows 3-9: there ``K_eps - K``
    is computed on the moved anchor columns only (rows 0-2), and equals the full paired block."""
    from napari_ntk_denoise.engine.fast_blocks import MovedColumns

    x = _image(3, 10, 12, seed=4, dtype=torch.float32)
    x_eps = x.clone()
    x_eps[:, :2] += 1e-3 * torch.randn(3, 2, 12, generator=torch.Generator().manual_seed(2))
    kern = CNNKernel(kernel_size=3)
    cols = torch.tensor([5, 14, 30, 47, 66, 90, 119])  # rows 0, 1, 2, 3, 5, 7, 9
    basis = patch_basis(kern, x, cols) if gemm_dtype == torch.bfloat16 else None
    side = columns(kern, x, cols, kern.diagonals(x), x_eps, kern.diagonals(x_eps), gemm_dtype, basis)
    assert side.moved == 3  # anchors on rows 0-2 come first here, so they are a slice
    rows = torch.arange(36, 120)
    k_full, dk_full = block_fast(kern, x, rows, side)
    k, dk = block_fast(kern, x, rows, side, rows_moved=False)
    assert isinstance(dk, MovedColumns) and dk.columns.tolist() == [0, 1, 2]
    torch.testing.assert_close(k, k_full)
    ulp = torch.finfo(torch.float32).eps * float(k_full.abs().max())  # K_eps - K is a difference of such entries
    torch.testing.assert_close(dk.values.float(), dk_full[:, :3].float(), rtol=1e-2, atol=2 * ulp)
    assert float(dk_full[:, 3:].abs().max()) == 0.0
    hi, lo = block_fast(kern, x, rows, side, rows_moved=False, split=True)[0]
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert isinstance(block_fast(kern, x, rows, side, split=True)[0], torch.Tensor)
    torch.testing.assert_close(hi.double() + lo.double(), k.double(), rtol=2**-15, atol=1e-9)
    unordered = columns(kern, x, cols.flip(0), kern.diagonals(x), x_eps, kern.diagonals(x_eps), gemm_dtype, basis)
    assert unordered.moved == 7  # moved anchors last: every column is computed, the others exactly zero
    k2, dk2 = block_fast(kern, x, rows, unordered, rows_moved=False)
    assert float(dk2.values[:, :4].float().abs().max()) == 0.0
    torch.testing.assert_close(dk2.values[:, 4:].float(), dk.values.flip(1).float(), rtol=1e-2,
                               atol=1e-2 * float(dk.values.abs().max()))


@pytest.mark.parametrize("bad", [dict(depth=1), dict(kernel_size=4), dict(kernel_size=0), dict(kind="rbf"),
                                 dict(ndim=4), dict(kernel_size_z=3), dict(ndim=3, kernel_size_z=2)])
def test_kernel_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        CNNKernel(**bad)


def test_kernel_rejects_image_smaller_than_kernel():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        CNNKernel(kernel_size=11).check_image((4, 30))
    with pytest.raises(ValueError, match="along Z"):
        CNNKernel(kernel_size=3, ndim=3, kernel_size_z=5).check_image((2, 30, 30))
    with pytest.raises(ValueError, match="spatial axes"):
        CNNKernel(kernel_size=3, ndim=3).check_image((30, 30))


def test_network_matches_kernel_size_and_receptive_field():
    net = VanillaCNN(1, width=4, depth=3, kernel_size=5)
    assert CNNKernel(depth=3, kernel_size=5).receptive_field == 9
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    out = net(x)[0, 0]
    support = np.argwhere(out.detach().numpy() != 0)
    assert support.min() >= 10 - 4 and support.max() <= 10 + 4


def test_bfloat16_split_keeps_sixteen_bits_compiled_or_not():
    from napari_ntk_denoise.engine.kernel_ops import _compiled, fused_op, split_bf16

    a = torch.randn(300, 200, generator=torch.Generator().manual_seed(3))
    for split in (split_bf16, _compiled("split"), fused_op("split")):  # eager, torch.compile, C where built
        hi, lo = split(a[:, :150])  # a strided view, as the padded kernel blocks are
        assert hi.dtype == lo.dtype == torch.bfloat16
        err = (hi.double() + lo.double() - a[:, :150].double()).abs() / a[:, :150].double().abs()
        assert float(err.max()) < 2**-15


def test_compiled_output_layer_matches_eager():
    """The torch.compile'd paired op (GPUs; CPUs without a C compiler) against eager torch."""
    from napari_ntk_denoise.engine.kernel_ops import _EAGER, _compiled

    g = torch.Generator().manual_seed(5)
    p, q = torch.randn(40, 9, generator=g), torch.randn(70, 9, generator=g)
    nr, nc = p.norm(dim=1), q.norm(dim=1)
    ar, pt = p[:, :4], q[:, :4].T.contiguous()  # principal part: the first 4 coordinates
    g_low = (p[:, 4:] @ q[:, 4:].T).bfloat16()
    dg = (1e-3 * torch.randn(40, 70, generator=g)).bfloat16()
    outs = [(torch.empty(40, 70), torch.empty(40, 70, dtype=torch.bfloat16)) for _ in range(2)]
    dg_moved = (1e-3 * torch.randn(40, 25, generator=g)).bfloat16()
    for op, (k, dk) in zip((_EAGER["pair"], _compiled("pair")), outs):
        op(k, dk, ar, pt, g_low, dg, dg_moved, nr, nc, nr * 1.001, nc, 1.0, 2.0, 2.0)
    atol = 1e-6 * float(outs[0][0].abs().max())  # float32 rounding of K; the change is a difference of two
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=atol)
    torch.testing.assert_close(outs[1][1].float(), outs[0][1].float(), rtol=2**-7, atol=atol)


def test_polynomial_arccos_matches_the_library():
    from napari_ntk_denoise.engine.kernel_ops import _acos

    x = torch.linspace(-1, 1, 200001, dtype=torch.float64)
    assert float((_acos(x) - torch.acos(x)).abs().max()) < 3e-8
    assert float((_acos(x.float()).double() - torch.acos(x.float()).double()).abs().max()) < 5e-7
