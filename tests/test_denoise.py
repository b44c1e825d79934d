"""The public pipeline: denoise_ntk / iter_denoise_ntk, Monte-Carlo SURE, guided filter, bad input."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import smooth_image
from napari_ntk_denoise import Progress, TwicingStep, denoise_ntk, iter_denoise_ntk, iter_filter, low_rank_filter
from napari_ntk_denoise.engine import _input
from napari_ntk_denoise.engine.config import DEFAULT_OPTIONS
from napari_ntk_denoise.engine.events import drain
from napari_ntk_denoise.engine.stopping import estimate_noise_sigma, psnr
from napari_ntk_denoise.engine.twicing import twicing_factors

FAST = dict(kernel_size=5, fraction=0.1, rank=48, guided=False)  # the one-stage filter unless a test asks


def _noisy(shape=(32, 32), channels=None, sigma=0.1, seed=0):
    clean = smooth_image(shape, channels)
    rng = np.random.default_rng(seed)
    return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32), clean


def test_gray_denoising_improves_and_keeps_input():
    noisy, clean = _noisy()
    before = noisy.copy()
    out, res = denoise_ntk(noisy, 0.1, reference=clean, **FAST)
    np.testing.assert_array_equal(noisy, before)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert psnr(out, clean, 1) > psnr(noisy, clean, 1) + 3
    assert res.t >= 1 and not res.sigma_estimated and res.sigma == 0.1
    # MC-SURE's choice is close to the oracle's in PSNR
    assert res.psnr.max() - res.psnr[np.searchsorted(res.t_grid, res.t)] < 0.5
    json.dumps(res.metadata())


@pytest.mark.parametrize("axis", [-1, 0])
def test_colour_one_filter_any_channel_axis(axis):
    noisy, clean = _noisy(channels=3)
    noisy_ax = np.moveaxis(noisy, -1, axis)
    out, res = denoise_ntk(noisy_ax, 0.1, channel_axis=axis, stop=40, **FAST)
    assert out.shape == noisy_ax.shape
    out_last = np.moveaxis(out, axis, -1)
    assert psnr(out_last, clean, 1) > psnr(noisy, clean, 1) + 3
    assert res.t == 40 and res.filter.shape == (32, 32)


def test_float64_in_float64_out_and_integer_input():
    noisy, _ = _noisy()
    out, _ = denoise_ntk(noisy.astype(np.float64), 0.1, stop=10, **FAST)
    assert out.dtype == np.float64
    as_u8 = np.clip(noisy * 255, 0, 255).astype(np.uint8)
    out8, res = denoise_ntk(as_u8, 25.5, stop=10, **FAST)
    assert out8.dtype == np.float32 and 0 < out8.mean() < 255  # values keep the data's units


def test_sigma_is_estimated_and_reported():
    noisy, _ = _noisy(shape=(48, 48), sigma=0.1)
    _, res = denoise_ntk(noisy, **FAST)
    assert res.sigma_estimated
    assert 0.07 < res.sigma < 0.13
    assert abs(estimate_noise_sigma(noisy) - res.sigma) < 1e-12


def test_generator_streams_progress_and_twicing_steps():
    noisy, clean = _noisy()
    gen = iter_denoise_ntk(noisy, 0.1, reference=clean, **FAST)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    progress = [e for e in events if isinstance(e, Progress)]
    steps = [e for e in events if isinstance(e, TwicingStep)]
    assert progress and all(0 <= p.fraction <= 1 for p in progress)
    assert [s.t for s in steps] == sorted(s.t for s in steps) and steps[-1].t == res.t
    np.testing.assert_allclose(steps[-1].image, res.image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.render(res.t), res.image, rtol=1e-5, atol=1e-6)
    assert not np.allclose(res.render(1), res.image)


def test_generator_close_mid_kernel_stops_cleanly():
    noisy, _ = _noisy()
    gen = iter_denoise_ntk(noisy, 0.1, **FAST)
    first = next(gen)
    assert isinstance(first, Progress)
    gen.close()  # GeneratorExit at the yield: no error, nothing left running
    with pytest.raises(StopIteration):
        next(gen)


def test_oracle_and_fixed_stops():
    noisy, clean = _noisy()
    _, oracle = denoise_ntk(noisy, 0.1, stop="oracle", reference=clean, **FAST)
    assert oracle.t == int(oracle.t_grid[np.argmax(oracle.psnr)])
    _, fixed = denoise_ntk(noisy, 0.1, stop=0, **FAST)
    np.testing.assert_allclose(fixed.image, 0)  # twicing starts from z = 0


def test_guided_two_stages_with_sure():
    noisy, clean = _noisy(channels=3)
    out, res = denoise_ntk(noisy, 0.1, channel_axis=-1, reference=clean, **{**FAST, "guided": True})
    assert len(res.stages) == 2 and res.stages[1].sure is not None
    assert res.metadata()["t_stage1"] == res.stages[0].t
    assert psnr(out, clean, 1) > psnr(noisy, clean, 1) + 3


def test_the_default_filter_is_guided_with_a_one_draw_pilot():
    """Without options the filter has two stages and its pilot is stage 1's estimate; ``guided=False``
    gives the one-stage filter (with the NNGP kernel, the default's stage 1)."""
    noisy, _ = _noisy()
    fast = {k: v for k, v in FAST.items() if k != "guided"}
    _, res = denoise_ntk(noisy, 0.1, **fast)
    _, plain = denoise_ntk(noisy, 0.1, guided=False, kernel="nngp", **fast)
    assert len(res.stages) == 2 and len(res.params["t_pilot"]) == 1 and res.params["guided"]
    assert len(plain.stages) == 1 and plain.t == res.stages[0].t


@pytest.mark.parametrize("draws", [1, 2])
def test_guided_kernel_type_serves_both_stages(draws):
    """Both stages of the guided filter use ``guided_kernel`` (NNGP by default; ``None``: ``kernel``):
    stage 1 is the unguided filter of that kernel, stage 2 its Nystrom filter on the pilot, stage 1's
    estimate or (two draws) its mean with that of the same kernel's filter on a second anchor draw;
    the second draw and stage 2 have their shares of stage 1's anchors."""
    from napari_ntk_denoise.engine.events import drain
    from napari_ntk_denoise.engine.kernels import CNNKernel
    from napari_ntk_denoise.engine.nystrom import iter_nystrom, sample_anchors
    from napari_ntk_denoise.engine.twicing import twicing_factors, twicing_output

    noisy, _ = _noisy()
    opts = {**FAST, "guided": True, "adaptive": False}  # the second draw below is computed on the full set
    _, res = denoise_ntk(noisy, 0.1, guided_pilot_draws=draws, stop=5, **opts)
    _, same = denoise_ntk(noisy, 0.1, guided_pilot_draws=draws, guided_kernel=None, stop=5, **opts)
    assert res.params["guided_kernel"] == "nngp" and same.params["guided_kernel"] == "ntk"
    for result, kind in ((res, "nngp"), (same, "ntk")):
        plain = low_rank_filter(noisy, kernel=kind, **{**FAST, "adaptive": False})
        np.testing.assert_array_equal(result.stages[0].filter.eigenvalues, plain.eigenvalues)
        # the pilot: one step for both anchor draws, no later (no less smooth) than stage 1's
        t_pilot = result.params["t_pilot"][0]
        assert result.params["t_pilot"] == [t_pilot] * draws and 1 <= t_pilot <= result.stages[0].t
        kern = CNNKernel(kernel_size=FAST["kernel_size"], kind=kind)
        m, rank = result.params["n_anchors"], result.params["rank"]
        m_pilot = max(int(m * DEFAULT_OPTIONS["guided_pilot_share"]), 2 * rank)
        m_stage = max(int(m * DEFAULT_OPTIONS["guided_stage_share"]), 2 * rank)
        assert 0 < m_pilot < m and 0 < m_stage < m and len(result.stages[1].filter.anchors) == m_stage
        y = torch.from_numpy(noisy).float()
        anchors = sample_anchors(noisy.shape, m_pilot, 1)
        second = drain(iter_nystrom(kern, y[None], anchors, min(rank, m_pilot), project=[y.reshape(-1, 1)]))[0]
        f = twicing_factors(second.filter.normalized_eigenvalues, t_pilot)
        pilot = result.render(t_pilot, stage=0)
        if draws == 2:
            pilot = (pilot + twicing_output(second.filter.basis, second.projections[0], f).reshape(noisy.shape)
                     .numpy()) / 2
        expected = drain(iter_nystrom(kern, torch.from_numpy(pilot[None]).float(),
                                      sample_anchors(noisy.shape, m_stage, 0), min(rank, m_stage)))[0].filter
        # float32 sums: the pilot's last bits move the trailing eigenvalues by ~1e-7 of the leading one
        top = float(expected.eigenvalues[0])
        np.testing.assert_allclose(result.stages[1].filter.eigenvalues, expected.eigenvalues, rtol=1e-4,
                                   atol=1e-6 * top)
        assert result.stages[1].blend is None  # a fixed step: no SURE or MSE to weigh the pilot with


@pytest.mark.parametrize("stop", ["sure", "oracle"])
def test_guided_output_is_the_best_average_with_the_pilot(stop):
    """The guided stage's output is ``a p + (1 - a) z(t)`` with the pilot ``p`` (stage 1's estimate at
    about 0.7 of its step): its curves are those of the average, and ``a`` minimises its SURE (or
    MSE)."""
    noisy, clean = _noisy(channels=3)
    n = noisy.size
    _, res = denoise_ntk(noisy, 0.1, channel_axis=-1, stop=stop, reference=clean, **{**FAST, "guided": True})
    s1, s2 = res.stages
    t_pilot = res.params["t_pilot"][0]
    assert set(res.params["t_pilot"]) <= set(res.t_grid) and 0.63 < t_pilot / s1.t < 0.77
    pilot, z = s2.blend.pilot.reshape(noisy.shape).cpu().numpy(), res.render(res.t)
    np.testing.assert_allclose(pilot, res.render(t_pilot, stage=0), atol=1e-6)
    a = s2.blend.weight_at(res.t)
    assert 0 < a < 1 and res.metadata()["pilot_weight"] == a
    twiced = dataclasses.replace(s2, blend=None).output(res.t).reshape(noisy.shape).cpu().numpy()
    np.testing.assert_allclose(z, a * pilot + (1 - a) * twiced, atol=1e-5)
    i = int(np.searchsorted(res.t_grid, res.t))
    np.testing.assert_allclose(s2.mse[i], np.mean((z - clean) ** 2), rtol=1e-4)

    def average(b):
        return b * pilot + (1 - b) * twiced

    if stop == "sure":
        np.testing.assert_allclose(s2.sure.residual[i], np.mean((noisy - z) ** 2), rtol=1e-4)
        d1 = s2.blend.divergence
        assert d1 > 0
        d2 = (s2.sure.divergence[i] - a * d1) / (1 - a)  # the average's divergence is a d1 + (1 - a) d2
        cost = [np.mean((noisy - average(b)) ** 2) + 2 * 0.1**2 * (b * d1 + (1 - b) * d2) / n
                for b in np.linspace(0, 1, 101)]
    else:
        cost = [np.mean((clean - average(b)) ** 2) for b in np.linspace(0, 1, 101)]
    assert abs(np.linspace(0, 1, 101)[int(np.argmin(cost))] - a) <= 0.011


def test_noise_input_filter_is_image_independent():
    noisy, _ = _noisy()
    f1 = low_rank_filter(noisy, input="noise", **FAST)
    f2 = low_rank_filter(np.flipud(noisy).copy(), input="noise", **FAST)
    np.testing.assert_allclose(f1.eigenvalues, f2.eigenvalues, rtol=1e-5)
    # eq. 17: the noise kernel is dominated by one (constant-like) eigenimage
    lam = f1.normalized_eigenvalues
    assert lam[1] < 0.5
    _, res = denoise_ntk(noisy, 0.1, input="noise", **FAST)
    assert res.stages[0].sure is not None


def test_guided_noise_input_sure_tracks_the_error():
    """Noise input, guided: stage 1's filter is shared by both runs, the perturbed guide is still
    formed, and stage 2's Monte-Carlo SURE follows the true MSE over every t."""
    noisy, clean = _noisy()
    _, res = denoise_ntk(noisy, 0.1, input="noise", reference=clean, **{**FAST, "guided": True})
    stage = res.stages[1]
    # one probe draw on 1024 values: SURE's error is a fraction of the noise variance, whatever the CPU's rounding
    np.testing.assert_allclose(stage.sure.sure, stage.mse, rtol=0, atol=0.3 * 0.1**2)
    assert stage.mse[np.searchsorted(res.t_grid, stage.t)] <= 1.02 * stage.mse.min()


def test_sure_probe_is_banded_on_tall_images_and_has_unit_variance():
    from napari_ntk_denoise.engine.problem import PROBE_BAND, PROBE_PERIOD, sure_probe

    b = sure_probe(0, (4 * PROBE_PERIOD, 300), 3, "cpu").reshape(4 * PROBE_PERIOD, 300, 3)
    probed = (b != 0).any(2).all(1)
    assert int(probed.sum()) == 4 * PROBE_BAND and not bool((b[~probed] != 0).any())
    assert bool((probed.reshape(4, PROBE_PERIOD) == probed[:PROBE_PERIOD]).all())  # one phase, periodic
    assert abs(float((b**2).mean()) - 1) < 0.02  # E[b b^T] = I: the bands carry P/B times the variance
    small = sure_probe(0, (4 * PROBE_PERIOD - 1, 20), 1, "cpu")
    assert bool((small != 0).all()) and abs(float((small**2).mean()) - 1) < 0.05


def test_clipped_noise_scale_matches_sampled_clipped_noise():
    """sigma_i / sigma of clip(mu + sigma n) in closed form against 400k samples, for both bounds,
    one bound, and far from any bound (1)."""
    import torch

    from napari_ntk_denoise.engine.stopping import clipped_noise_scale

    mus, sigma = np.array([-0.1, 0.0, 0.05, 0.2, 0.5, 0.95, 1.0, 1.2]), 0.1
    rows = torch.from_numpy(np.repeat(mus[:, None], 8, 1))[None].float()  # box of 1: mu_i = the row's value
    draws = mus[:, None] + sigma * np.random.default_rng(0).standard_normal((len(mus), 400_000))
    for low, high in ((0.0, 1.0), (0.0, None), (None, 1.0)):
        scale = clipped_noise_scale(rows, sigma, low, high, size=1)[0, :, 0].numpy()
        sampled = np.clip(draws, -np.inf if low is None else low, np.inf if high is None else high).std(1) / sigma
        np.testing.assert_allclose(scale, sampled, atol=0.005)
    assert clipped_noise_scale(rows, sigma, None, None, size=1).eq(1).all()


def test_clip_bounds_are_levels_where_values_pile_up():
    from napari_ntk_denoise.engine.stopping import clip_bounds

    noisy, _ = _noisy(sigma=0.2)
    assert clip_bounds(noisy) == (None, None)  # continuous noise: one value at each extreme
    assert clip_bounds(np.clip(noisy, 0, 1)) == (0.0, 1.0)
    assert clip_bounds(np.clip(noisy, 0, None)) == (0.0, None)
    assert clip_bounds(np.full((8, 8), 3.0)) == (None, None)  # no noise to weigh


def test_sure_on_clipped_data_stops_near_the_oracle(monkeypatch):
    """Clipping leaves less noise near the bounds; Monte-Carlo SURE with the probe weighted by the
    clipped noise's standard deviation stops near the oracle, where plain SURE (sigma everywhere)
    over-smooths (measured gaps: 0.12-0.17 dB against 0.45-0.52 over three noise draws)."""
    import napari_ntk_denoise.engine.problem as problem

    clean = np.clip(2.5 * smooth_image((64, 64)) - 0.8, 0, 1)  # a fifth of the noisy values clipped
    noisy = np.clip(clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1).astype(np.float32)
    kw = dict(reference=clean, kernel_size=5, fraction=0.05, rank=64, guided=False)
    out, res = denoise_ntk(noisy, 0.1, **kw)
    assert res.params["clip_bounds"] == [0.0, 1.0]
    gap = res.psnr.max() - psnr(out, clean, 1)
    monkeypatch.setattr(problem, "clip_bounds", lambda image: (None, None))
    plain, res_plain = denoise_ntk(noisy, 0.1, **kw)
    assert res_plain.params["clip_bounds"] == [None, None]
    assert gap < 0.25 < res_plain.psnr.max() - psnr(plain, clean, 1) - 0.1
    assert res.t > res_plain.t


def test_banded_sure_probe_stops_near_the_oracle(monkeypatch):
    """On an image tall enough for a banded probe, most kernel rows skip the perturbed products and
    Monte-Carlo SURE still stops near the oracle, as with a dense probe."""
    import napari_ntk_denoise.engine.problem as problem

    noisy, clean = _noisy(shape=(256, 48))
    chosen = []
    for period in (problem.PROBE_PERIOD, 1000):  # banded, then dense (the image has < 4 periods of rows)
        monkeypatch.setattr(problem, "PROBE_PERIOD", period)
        problem.sure_probe.cache_clear()
        out, res = denoise_ntk(noisy, 0.1, reference=clean, kernel_size=5, fraction=0.05, rank=64, guided=False)
        assert res.psnr.max() - psnr(out, clean, 1) < 0.2
        chosen.append(psnr(out, clean, 1))
        share = res.stages[0].perturbed_pixels / noisy.size  # rows computed on the perturbed input
        if period == 1000:
            assert share == 1
        else:
            assert 0 < share < 0.6
    problem.sure_probe.cache_clear()
    assert abs(chosen[0] - chosen[1]) < 0.1


def test_iter_filter_yields_progress_and_returns_filter():
    """Only progress events, then the low-rank filter: orthonormal eigenimages of the image's size
    with eigenvalues in [0, 1], whose twicing at the SURE step reproduces the denoiser's output."""
    noisy, _ = _noisy()
    events: list = []
    filt = drain(iter_filter(noisy, **FAST), events.append)
    assert events and all(isinstance(e, Progress) for e in events)
    q = filt.basis.double()
    assert q.shape[0] == noisy.size
    torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1], dtype=q.dtype), atol=1e-4, rtol=0)
    lam = filt.normalized_eigenvalues
    assert lam.max() == pytest.approx(1.0) and lam.min() >= 0 and np.all(np.diff(lam) <= 1e-12)
    out, res = denoise_ntk(noisy, 0.1, **FAST)
    y = torch.from_numpy(noisy.reshape(-1, 1)).to(q.dtype)
    z = q @ (torch.from_numpy(twicing_factors(lam, res.t)).to(q.dtype)[:, None] * (q.T @ y))
    np.testing.assert_allclose(z.reshape(noisy.shape).numpy(), out, atol=1e-4)


@pytest.mark.parametrize(
    "image,kwargs,match",
    [
        (np.full((32, 32), np.nan), {}, "NaN or infinite"),
        (np.array([[np.inf] * 32] * 32), {}, "NaN or infinite"),
        (np.zeros((32, 32, 3)), {}, "channel_axis"),
        (np.zeros(32), {}, "2-D"),
        (np.zeros((32, 32), dtype=complex), {}, "dtype"),
        (np.zeros((32, 32), dtype=bool), {}, "dtype"),
        (np.zeros((4, 32)), {"kernel_size": 11}, "smaller than the kernel"),
        (np.zeros((32, 32)), {"fraction": 0.0}, "fraction"),
        (np.zeros((32, 32)), {"fraction": 1.5}, "fraction"),
        (np.zeros((32, 32)), {"rank": 0}, "rank"),
        (np.zeros((32, 32)), {"n_anchors": 5000}, "n_anchors"),
        (np.zeros((32, 32)), {"stop": "never"}, "stop"),
        (np.zeros((32, 32)), {"stop": -3}, "stop"),
        (np.zeros((32, 32)), {"stop": "oracle"}, "reference"),
        (np.zeros((32, 32)), {"input": "video"}, "input"),
        (np.zeros((32, 32)), {"reference": np.zeros((16, 16))}, "reference shape"),
        (np.zeros((32, 32)), {"sigma": -1.0}, "sigma"),
        (np.zeros((32, 32)), {"guided": True, "guided_kernel": "rbf"}, "guided_kernel"),
    ],
)
def test_bad_input_raises_clear_value_error(image, kwargs, match):
    kwargs = {"sigma": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        denoise_ntk(image, **kwargs)


def test_memory_guard_refuses_before_heavy_work(monkeypatch):
    monkeypatch.setattr(_input, "available_memory", lambda device: 10 * 2**20)
    noisy, _ = _noisy()
    gen = iter_denoise_ntk(noisy, 0.1, **FAST)
    with pytest.raises(MemoryError, match="smaller anchor fraction"):
        next(gen)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("guided", [False, True])
def test_cuda_matches_cpu(guided):
    noisy, clean = _noisy(shape=(40, 40), channels=3)
    kw = dict(channel_axis=-1, reference=clean, guided=guided, **FAST)
    out_cpu, res_cpu = denoise_ntk(noisy, 0.1, device="cpu", **kw)
    out_gpu, res_gpu = denoise_ntk(noisy, 0.1, device="cuda", **kw)
    assert res_gpu.params["device"].startswith("cuda")
    np.testing.assert_allclose(res_gpu.filter.eigenvalues[:8], res_cpu.filter.eigenvalues[:8], rtol=2e-2)
    assert abs(psnr(out_gpu, clean, 1) - psnr(out_cpu, clean, 1)) < 0.1
    np.testing.assert_allclose(res_gpu.psnr, res_cpu.psnr, atol=0.1)


def test_sure_guard_flags_an_over_estimated_sigma():
    """With sigma twice the truth SURE goes negative and stops early: never silently."""
    from napari_ntk_denoise.engine.stopping import DoubtfulStopWarning

    noisy, _ = _noisy(shape=(48, 48))
    with pytest.warns(DoubtfulStopWarning, match="over-estimated"):
        _, res = denoise_ntk(noisy, 0.2, **FAST)
    assert res.sure.min() < 0 and any("negative" in w for w in res.params["stop_warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DoubtfulStopWarning)
        _, ok = denoise_ntk(noisy, 0.1, **FAST)
    assert ok.params["stop_warnings"] == [] and ok.t > 1


def test_constant_image_is_its_own_result():
    for value in (0.0, 0.3):
        image = np.full((24, 24), value, np.float32)
        out, res = denoise_ntk(image, **FAST)
        np.testing.assert_array_equal(out, image)
        assert res.t == 0 and res.stages == [] and res.params["constant"] and res.metadata()["rank"] == 0
        np.testing.assert_array_equal(res.render(5), image)


def test_coloured_probe_tracks_the_error_of_correlated_noise():
    """Noise blurred over neighbouring pixels: SURE with a white probe under-estimates the risk of
    light smoothing; with ``noise_blur`` its probe is coloured alike and it follows the true MSE."""
    from scipy import ndimage

    clean = smooth_image((64, 64))
    kernel = ndimage.gaussian_filter(np.pad([[1.0]], 4), 0.8, mode="constant", truncate=3.0)
    white = np.random.default_rng(3).standard_normal(clean.shape)
    noise = 0.1 * ndimage.gaussian_filter(white, 0.8, mode="reflect", truncate=3.0) / np.sqrt((kernel**2).sum())
    noisy = (clean + noise).astype(np.float32)
    errors = {}
    for blur in (0.0, 0.8):
        _, res = denoise_ntk(noisy, 0.1, reference=clean, noise_blur=blur, **FAST)
        errors[blur] = float(np.abs(res.sure - res.stages[0].mse).max()) / 0.1**2
    assert errors[0.8] < 0.3 < errors[0.0]
