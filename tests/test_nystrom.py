"""Nyström eigenimages, the low-rank filter object and twicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import smooth_image
from napari_ntk_denoise.engine.denoise import denoise_ntk
from napari_ntk_denoise.engine.kernels import CNNKernel
from napari_ntk_denoise.engine.nystrom import LowRankFilter, iter_nystrom, light_set, sample_anchors
from napari_ntk_denoise.engine.twicing import twicing_factors, twicing_schedule


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _x(shape=(16, 16), channels=1, seed=0):
    rng = np.random.default_rng(seed)
    img = smooth_image(shape, channels if channels > 1 else None) + 0.1 * rng.standard_normal(
        shape + ((channels,) if channels > 1 else ()))
    arr = img[None] if channels == 1 else np.moveaxis(img, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def test_sample_anchors_spread_unique_reproducible():
    a = sample_anchors((40, 60), 48, seed=3)
    assert len(a) == 48 and len(np.unique(a)) == 48 and a.min() >= 0 and a.max() < 2400
    np.testing.assert_array_equal(a, sample_anchors((40, 60), 48, seed=3))
    assert not np.array_equal(a, sample_anchors((40, 60), 48, seed=4))
    rows, cols = a // 60, a % 60  # one anchor per cell of a jittered grid: every band is hit
    assert len(np.unique(rows // 10)) == 4 and len(np.unique(cols // 10)) == 6
    for shape, m in [((5, 7), 35), ((3, 50), 20), ((1, 9), 4)]:
        assert len(np.unique(sample_anchors(shape, m))) == m
    with pytest.raises(ValueError):
        sample_anchors((4, 4), 17)


def test_all_anchors_full_rank_reproduces_kernel():
    """With every pixel as an anchor, Nyström is exact: Q diag(lam) Q^T = K."""
    x = _x((10, 10), channels=3)
    kern = CNNKernel(kernel_size=3)
    idx = torch.arange(100)
    full = kern.block(x.double(), idx, idx)
    first, second = _drain(iter_nystrom(kern, x, np.arange(100), rank=100, gemm_dtype=torch.float32))
    assert second is None
    f = first.filter
    q = f.basis.double()
    torch.testing.assert_close(q.T @ q, torch.eye(f.rank, dtype=torch.float64), atol=1e-4, rtol=0)
    approx = q @ torch.diag(torch.as_tensor(f.eigenvalues)) @ q.T
    assert float((approx - full).norm() / full.norm()) < 1e-4
    top = torch.linalg.eigvalsh(full).flip(0)[:10].numpy()
    np.testing.assert_allclose(f.eigenvalues[:10], top, rtol=1e-4, atol=2e-6 * top[0])


def test_nystrom_low_rank_is_good_and_reproducible():
    x = _x((20, 20))
    kern = CNNKernel(kernel_size=5)
    anchors = sample_anchors((20, 20), 80, seed=0)
    a, _ = _drain(iter_nystrom(kern, x, anchors, rank=40, seed=0))
    b, _ = _drain(iter_nystrom(kern, x, anchors, rank=40, seed=0))
    np.testing.assert_allclose(a.filter.eigenvalues, b.filter.eigenvalues)
    idx = torch.arange(400)
    full = kern.block(x.double(), idx, idx)
    exact = torch.linalg.eigvalsh(full).flip(0)[:5].numpy()
    # Nystrom underestimates (K - C W^+ C^T is PSD) and is close for the leading eigenvalues
    assert np.all(a.filter.eigenvalues[:5] <= exact * (1 + 1e-5))
    np.testing.assert_allclose(a.filter.eigenvalues[:3], exact[:3], rtol=0.06)
    assert np.all(np.diff(a.filter.eigenvalues) <= 0)


def _weights(p) -> torch.Tensor:
    return p.filter.basis @ torch.diag(torch.as_tensor(p.filter.eigenvalues).float()) @ p.filter.basis.T


def test_projections_and_perturbed_pass():
    """Projections equal Q^T v; the paired perturbed pass equals an independent pass on x_eps
    (float32 products); with bfloat16 products the filter and, above all, the paired difference
    that Monte-Carlo SURE reads stay within a fraction of a percent of the float32 ones."""
    x = _x((16, 16), channels=3)
    x_eps = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    kern = CNNKernel(kernel_size=3)
    anchors = sample_anchors((16, 16), 64)
    v = torch.randn(256, 3, generator=torch.Generator().manual_seed(5))
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        main, pert = _drain(iter_nystrom(kern, x, anchors, 32, project=[v], x_eps=x_eps, project_eps=[v],
                                         keep_basis_eps=True, gemm_dtype=dtype))
        torch.testing.assert_close(main.projections[0], (main.filter.basis.T @ v).double(), rtol=1e-4, atol=1e-4)
        runs[dtype] = _weights(main), _weights(pert)
    solo, _ = _drain(iter_nystrom(kern, x_eps, anchors, 32, project=[v], gemm_dtype=torch.float32))
    # the filters (not the bases, which may rotate) agree
    w_main, w_pert = runs[torch.float32]
    w_solo = _weights(solo)
    assert float((w_pert - w_solo).norm() / w_solo.norm()) < 1e-3
    b_main, b_pert = runs[torch.bfloat16]
    assert float((b_main - w_main).norm() / w_main.norm()) < 1e-2
    change = w_pert - w_main
    assert float(change.norm() / w_main.norm()) > 1e-4  # the perturbation is seen at all
    assert float(((b_pert - b_main) - change).norm() / change.norm()) < 0.02


def test_low_rank_filter_methods():
    x = _x((12, 14))
    main, _ = _drain(iter_nystrom(CNNKernel(kernel_size=3), x, sample_anchors((12, 14), 60), 20))
    f: LowRankFilter = main.filter
    assert f.shape == (12, 14) and f.rank <= 20
    ei = f.eigenimages(3)
    assert ei.shape == (3, 12, 14) and ei.dtype == np.float32
    np.testing.assert_allclose(np.sum(ei[0] ** 2), 1.0, rtol=1e-4)
    w = f.weights((5, 6))
    assert w.shape == (12, 14)
    # W is symmetric: weight of j in row i equals weight of i in row j
    np.testing.assert_allclose(w[2, 3], f.weights((2, 3))[5, 6], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError):
        f.weights((12, 0))
    y = x[0].numpy()
    np.testing.assert_allclose(f.apply(y, 0), 0 * y, atol=1e-7)


def test_twicing_closed_form_equals_explicit_steps():
    """z(t) = Q diag(1 - (1 - lam)^t) Q^T y equals t steps of z <- z + W (y - z)."""
    x = _x((12, 12), channels=3)
    main, _ = _drain(iter_nystrom(CNNKernel(kernel_size=3), x, sample_anchors((12, 12), 50), 30))
    f = main.filter
    q = f.basis.double()
    wmat = q @ torch.diag(torch.as_tensor(f.normalized_eigenvalues)) @ q.T
    y = np.moveaxis(x.numpy(), 0, -1).astype(np.float64)
    yt = torch.from_numpy(y.reshape(144, 3))
    z = torch.zeros_like(yt)
    for t in range(1, 26):
        z = z + wmat @ (yt - z)
        if t in (1, 5, 25):
            np.testing.assert_allclose(f.apply(y, t).reshape(144, 3), z.numpy(), rtol=1e-4, atol=1e-5)


def test_twicing_factors_edge_cases():
    lam = np.array([1.0, 0.5, 1e-3, 0.0])
    f = twicing_factors(lam, np.array([0, 1, 2, 10**6]))
    np.testing.assert_allclose(f[0], 0)
    np.testing.assert_allclose(f[1], lam)
    np.testing.assert_allclose(f[2], 1 - (1 - lam) ** 2)
    np.testing.assert_allclose(f[3], [1, 1, 1, 0], atol=1e-12)
    assert np.all(np.isfinite(f))
    with pytest.raises(ValueError):
        twicing_factors(lam, -1)
    assert twicing_schedule(100, 6)[-1] == 100 and twicing_schedule(100, 6)[0] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_split_bfloat16_product_has_float32_accuracy():
    from napari_ntk_denoise.engine.nystrom import _has_float32_output_bf16_products, _SplitProduct

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1000, 544, generator=g), torch.randn(544, 64, generator=g).bfloat16()  # b: exact in bf16
    assert _has_float32_output_bf16_products(torch.device("cuda"))
    got = _SplitProduct(b.cuda())(a.cuda()).cpu().double()
    exact = a.double() @ b.double()
    assert float((got - exact).abs().max() / exact.abs().max()) < 1e-4


def test_split_product_on_cpu_reuses_its_buffers_for_blocks_of_any_height():
    from napari_ntk_denoise.engine.kernel_ops import split_bf16
    from napari_ntk_denoise.engine.nystrom import _SplitProduct

    g = torch.Generator().manual_seed(1)
    b = torch.randn(96, 16, generator=g).bfloat16()
    product = _SplitProduct(b)
    for n in (50, 20, 50):  # the last block of a sweep is shorter
        a = torch.rand(n, 96, generator=g)
        hi, lo = split_bf16(a)
        expected = torch.mm(hi, b).float() + torch.mm(lo, b).float()
        assert torch.equal(product(a), expected)
    assert product.buffers["sum"].shape[0] == 50  # grown once, then reused


def test_tiled_symmetrize_equals_the_mean_with_the_transpose():
    from napari_ntk_denoise.engine.nystrom import _symmetrize

    a = torch.randn(2, 70, 70, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_symmetrize(a.clone(), 16), (a + a.mT) * 0.5)  # tiles that do not divide the size


@pytest.mark.parametrize("volume", [False, True])
def test_banded_perturbation_skips_work_without_changing_the_filters(monkeypatch, volume):
    """With a perturbation on a few rows (Y), the sweep computes ``K_eps - K`` only on the rows whose
    patches it reaches, and the kernel does not change on the others (so skipping them is exact);
    the perturbed filter is that of an independent pass on ``x_eps``."""
    import napari_ntk_denoise.engine.nystrom as nystrom

    shape = (2, 40, 12) if volume else (40, 24)
    plane = smooth_image(shape[-2:])
    img = np.stack([plane, np.roll(plane, 3, 1)]) if volume else plane
    x = torch.from_numpy(np.stack([img, img[..., ::-1, :], img.T.T ** 2])).float()
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    x_eps = x.clone()
    x_eps[..., 20:22, :] += 1e-3 * torch.randn(x[..., 20:22, :].shape, generator=torch.Generator().manual_seed(2))
    kern = CNNKernel(kernel_size=5) if not volume else CNNKernel(kernel_size=5, ndim=3, kernel_size_z=1)
    anchors = sample_anchors(shape, 120)
    v = torch.randn(960, 3, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(nystrom, "BLOCK_BYTES", 2**15)  # several row blocks
    main, pert = _drain(iter_nystrom(kern, x, anchors, 40, project=[v], x_eps=x_eps, project_eps=[v],
                                     keep_basis_eps=True, gemm_dtype=torch.float32))
    # rows 18-23 reach the perturbation (rows 20-21, 5 x 5 patches), in every plane
    assert main.perturbed_pixels is None and pert.perturbed_pixels == 6 * int(np.prod(shape)) // shape[-2]
    # between pixels it does not reach, the kernel does not change (the sweep takes the change only on
    # the rows it reaches, and on the anchors it reaches as columns of their own)
    y_of = torch.arange(960).reshape(shape)
    unreached = torch.cat([y_of[..., :18, :].reshape(-1), y_of[..., 24:, :].reshape(-1)])
    cols = torch.as_tensor(anchors)[torch.isin(torch.as_tensor(anchors), unreached)]
    assert torch.equal(kern.block(x_eps.double(), unreached, cols), kern.block(x.double(), unreached, cols))
    reached = y_of[..., 18:24, :].reshape(-1)
    assert not torch.equal(kern.block(x_eps.double(), reached, cols), kern.block(x.double(), reached, cols))
    solo = _drain(iter_nystrom(kern, x_eps, anchors, 40, project=[v], gemm_dtype=torch.float32))[0]
    assert float((_weights(pert) - _weights(solo)).norm() / _weights(solo).norm()) < 1e-3
    def projected(p):  # Q Q^T v: independent of how the eigenimages rotate
        return p.filter.basis.double() @ p.projections[0].double()

    assert float((projected(pert) - projected(solo)).norm() / projected(solo).norm()) < 1e-2


def test_core_in_any_anchor_order_has_the_exact_diagonal():
    """The anchor core is the same whatever the anchors' order (the sweep puts probed anchors
    first), with exact self-pairs on its diagonal."""
    from napari_ntk_denoise.engine.nystrom import _column_sides, _core

    x = _x((20, 20), channels=3)
    x_eps = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    kern = CNNKernel(kernel_size=5)
    s = torch.as_tensor(sample_anchors((20, 20), 60))
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    d, de = kern.diagonals(x), kern.diagonals(x_eps)
    ordered = _core(_column_sides(kern, x, s, d, 60, x_eps, de), kern, x, 16)
    shuffled = _core(_column_sides(kern, x, s[perm], d, 60, x_eps, de), kern, x, 16)
    torch.testing.assert_close(shuffled, ordered[:, perm][:, :, perm])
    torch.testing.assert_close(shuffled[0].diagonal(), d[2].reshape(-1)[s[perm]], rtol=1e-6, atol=0)
    torch.testing.assert_close(shuffled[1].diagonal(), de[2].reshape(-1)[s[perm]], rtol=1e-6, atol=0)


@pytest.mark.parametrize("m", [80, 200, 2100])  # exact, float32 subspace, randomised above 2048
def test_core_keeps_every_eigenpair_float32_resolves(m):
    """Eigenimages are kept down to ``lambda_1 eps`` (float32 ``eps``): a fast-decaying spectrum
    such as the guided stage's keeps its 1e-6 tail, and what lies below float32's resolution goes."""
    from napari_ntk_denoise.engine.nystrom import _core_projections

    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    lam = torch.full((m,), 1e-10, dtype=torch.float64)
    lam[:40] = torch.logspace(0, -6, 40, dtype=torch.float64)
    cores = ((u * lam) @ u.T).float()[None]
    (_, kept, proj), = _core_projections(cores, 64, seed=0)
    assert proj.shape == (m, 40)
    torch.testing.assert_close(kept, lam[:40], rtol=0.05, atol=0)



def test_subspace_eigen_solve_keeps_the_filters_and_their_paired_change(monkeypatch):
    """The anchor cores' eigen-solve on a float32 subspace (``OVERSAMPLE`` vectors beyond the rank)
    gives the filters of the exact float64 solve, and the same change between the filter and its
    perturbed twin, which is what Monte-Carlo SURE reads."""
    from napari_ntk_denoise.engine import nystrom

    x = _x((32, 32), channels=3)
    x_eps = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    anchors = sample_anchors((32, 32), 400)
    runs = []
    for oversample in (nystrom.OVERSAMPLE, 400):  # 400: the subspace is every vector, the solve exact
        monkeypatch.setattr(nystrom, "OVERSAMPLE", oversample)
        main, pert = _drain(iter_nystrom(CNNKernel(kernel_size=5), x, anchors, 64, x_eps=x_eps, keep_basis_eps=True,
                                         gemm_dtype=torch.float32))
        runs.append((_weights(main), _weights(pert)))
    (w_sub, p_sub), (w_exact, p_exact) = runs
    assert float((w_sub - w_exact).norm() / w_exact.norm()) < 1e-5
    change = p_exact - w_exact
    assert float(change.norm() / w_exact.norm()) > 1e-4  # the perturbation is seen at all
    assert float(((p_sub - w_sub) - change).norm() / change.norm()) < 1e-2


def test_light_set_only_where_the_spectrum_falls_early():
    kern, shape = CNNKernel(kernel_size=5), (64, 64)
    anchors = sample_anchors(shape, 400, seed=0)
    smooth = light_set(kern, _x(shape, seed=1), anchors, rank=96)
    assert smooth is not None
    light_anchors, light_rank = smooth
    np.testing.assert_array_equal(light_anchors, anchors[::2])
    assert light_rank < 96
    texture = torch.from_numpy(np.random.default_rng(2).random((3, *shape))).float()
    assert light_set(kern, texture, anchors, rank=96) is None
    assert light_set(kern, _x(shape, seed=1), anchors[:180], rank=96) is None  # half the anchors: too few
    assert light_set(kern, _x(shape, seed=1), anchors, rank=16) is None  # too many for one probe to speak for


def test_adaptive_set_halves_the_first_stage_at_the_same_quality():
    clean = smooth_image((64, 64))
    noisy = clean + 0.1 * np.random.default_rng(3).standard_normal(clean.shape)
    opts = dict(fraction=0.1, rank=96, guided=False, kernel_size=5)
    out_light, res_light = denoise_ntk(noisy, 0.1, **opts)
    out_full, res_full = denoise_ntk(noisy, 0.1, adaptive=False, **opts)
    assert len(res_light.filter.anchors) == len(res_full.filter.anchors[::2])
    assert res_light.filter.rank < res_full.filter.rank
    assert (res_light.params["stage1_anchors"], res_light.params["stage1_rank"]) == (
        len(res_light.filter.anchors), res_light.filter.rank)
    assert res_light.params["n_anchors"] == res_full.params["stage1_anchors"] == len(res_full.filter.anchors)
    mse = [float(np.mean((o - clean) ** 2)) for o in (out_light, out_full)]
    assert mse[0] < 1.1 * mse[1] < 0.3 * float(np.mean((noisy - clean) ** 2))
    _, guided = denoise_ntk(noisy, 0.1, **{**opts, "guided": True, "guided_stage_share": 0.8})
    n_first, n_guided = (len(stage.filter.anchors) for stage in guided.stages)
    assert n_first == len(res_full.filter.anchors[::2]) and n_guided == int(0.8 * len(res_full.filter.anchors))


def test_filter_outputs_before_and_after_forming_the_eigenimages():
    """Outputs from the rows and the transform equal those from the formed eigenimages; the
    eigenimages are formed once, in the rows' memory, and dropping them keeps the spectrum."""
    x = _x((24, 24), channels=3)
    first, _ = _drain(iter_nystrom(CNNKernel(kernel_size=3), x, sample_anchors((24, 24), 120), rank=64,
                                   project=[x.reshape(3, -1).T.contiguous()]))
    f = first.filter
    assert f.transform is not None
    y = np.moveaxis(x.numpy(), 0, -1)
    coeffs, lazy = f.coefficients(y), f.apply(y, t=5)
    images, weights = f.eigenimages(5), f.weights((3, 7))  # from the rows and the transform
    assert f.transform is not None
    torch.testing.assert_close(coeffs, first.projections[0], rtol=1e-4, atol=1e-4)
    rows = f.rows
    q = f.basis
    assert f.transform is None and q.data_ptr() == rows.data_ptr() and q.shape == (576, f.rank)
    torch.testing.assert_close(q.double().T @ q.double(), torch.eye(f.rank, dtype=torch.float64), atol=1e-3, rtol=0)
    np.testing.assert_allclose(f.apply(y, t=5), lazy, atol=1e-4)
    np.testing.assert_allclose(f.eigenimages(5), images, atol=1e-6)
    np.testing.assert_allclose(f.weights((3, 7)), weights, atol=1e-6)
    torch.testing.assert_close(f.coefficients(y), coeffs, rtol=1e-4, atol=1e-4)
    bare = f.without_eigenimages()
    assert bare.rows is None and bare.rank == f.rank
