"""Deep-image-prior trainer: architectures, training modes, streaming, diagnostics, NTK regime, CLI."""

from __future__ import annotations

import argparse
import gc
import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data

from napari_ntk_denoise.cli import dip as dip_cli
from napari_ntk_denoise.dip import (
    ARCHITECTURES,
    DIPCollapseWarning,
    DIPProgress,
    DIPStep,
    EncoderDecoder,
    OutputAverage,
    build_network,
    effective_weights,
    iter_dip,
    min_image_size,
    ntk_top_eigenvalue,
    preactivation_eigenimages,
    train_dip,
    weight_change,
)
from napari_ntk_denoise.dip.device import retry_on_cpu
from napari_ntk_denoise.dip.run import TrainingRun
from napari_ntk_denoise.engine.kernels import CNNKernel
from napari_ntk_denoise.engine.networks import VanillaCNN, empirical_ntk

SIGMA = 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny images: one intra-op thread is as fast, and does not spin on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _noisy(clean: np.ndarray, seed: int = 0, sigma: float = SIGMA) -> np.ndarray:
    return (clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def gray() -> tuple[np.ndarray, np.ndarray]:
    clean = data.camera()[200:216, 200:216].astype(np.float32) / 255
    return clean, _noisy(clean)


@pytest.fixture(scope="module")
def rgb() -> tuple[np.ndarray, np.ndarray]:
    clean = data.astronaut()[100:116, 200:216].astype(np.float32) / 255
    return clean, _noisy(clean)


# ---------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(16, 16), (19, 23)])
def test_architectures_keep_size_and_list_preactivations(arch, shape):
    net = build_network(arch, 3, 2, width=8, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, *shape)
    out, pre = net(x, return_preactivations=True)
    assert out.shape == (1, 2, *shape)
    assert pre[-1] is out
    assert pre[-2].shape == (1, 8, *shape)  # last hidden layer, full resolution
    hidden = {"vanilla": 1, "unet": 8, "ae": 8, "skip": 10}[arch]  # skip: + two 1x1 skip layers
    assert len(pre) == hidden + 1 == len(effective_weights(net))


def test_vanilla_is_the_referee_class():
    net = build_network("vanilla", 1, 1, width=4)
    assert type(net) is VanillaCNN and net.kernel_size == 11 and net.depth == 2
    assert net.parameterization == "ntk"


@pytest.mark.parametrize("arch", ["unet", "ae", "skip"])
def test_encoder_decoder_he_initialisation(arch):
    net = build_network(arch, 3, 3, width=256, generator=torch.Generator().manual_seed(1))
    for w in effective_weights(net):
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        assert abs(w.std().item() / math.sqrt(2 / fan_in) - 1) < 0.1
        assert abs(w.mean().item()) < 0.1 * math.sqrt(2 / fan_in)


def _local_share(net: torch.nn.Module, size: int = 32, radius: int = 3) -> float:
    """Share of the centre output's gradient with respect to the input that lies within ``radius``."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    c = size // 2
    net(x)[0, 0, c, c].backward()
    g = x.grad[0, 0].abs()
    return float(g[c - radius : c + radius + 1, c - radius : c + radius + 1].sum() / g.sum())


def test_unet_full_resolution_skip_is_a_short_path():
    """The U-Net's skips carry fine detail: its output leans on the input near each pixel far more
    than the autoencoder's (whose every path goes through the downsampled levels), and dropping the
    full-resolution skip (the default) removes most of that short path."""
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    unet = build_network("unet", 1, 1, 8, full_resolution_skip=True, generator=gen())
    short, ae = build_network("unet", 1, 1, 8, generator=gen()), build_network("ae", 1, 1, 8, generator=gen())
    full, no_full, none = _local_share(unet), _local_share(short), _local_share(ae)
    assert full > 1.5 * no_full and no_full > 1.5 * none


@pytest.mark.parametrize("arch", ["unet", "ae", "skip"])
def test_dip_style_layers(arch):
    """DIP style: biases, batch normalisation, LeakyReLU and a sigmoid output in (0, 1)."""
    net = build_network(arch, 2, 3, 8, style="dip", generator=torch.Generator().manual_seed(0))
    assert net.inc.conv.bias is not None and isinstance(net.inc.norm, torch.nn.BatchNorm2d)
    out, pre = net(torch.rand(1, 2, 20, 20) * 10, return_preactivations=True)
    assert out.shape == (1, 3, 20, 20) and 0 < out.min() and out.max() < 1
    assert (pre[0] < 0).any() and torch.allclose(torch.sigmoid(pre[-1]), out)
    with pytest.raises(ValueError, match="style"):
        build_network(arch, 1, 1, 4, style="resnet")


def test_min_image_size_and_too_small_images_raise(gray):
    assert min_image_size("unet") == 9 and min_image_size("vanilla") == 6
    ok = np.zeros((9, 9), np.float32) + 0.5
    train_dip(ok, arch="unet", width=2, iterations=1, sigma=SIGMA)
    with pytest.raises(ValueError, match="too small.*at least 9"):
        iter_dip(np.zeros((8, 30), np.float32), arch="unet")
    with pytest.raises(ValueError, match="too small"):
        iter_dip(np.zeros((5, 30), np.float32), arch="vanilla")


# ---------------------------------------------------------------- training modes
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("optimizer", ["adam", "gd"])
@pytest.mark.parametrize("mode", ["image", "noise"])
def test_every_architecture_optimiser_and_input(rgb, arch, optimizer, mode):
    clean, noisy = rgb
    res = train_dip(
        noisy, channel_axis=-1, arch=arch, optimizer=optimizer, input=mode, width=8, iterations=20,
        every=10, reference=clean, sigma=SIGMA, noise_channels=4,
    )
    assert res.image.shape == noisy.shape and res.image.dtype == np.float32
    assert np.isfinite(res.image).all()
    assert list(res.iterations) == [0, 1, 2, 4, 8, 10, 20]
    assert np.isfinite(res.loss).all() and np.isfinite(res.psnr).all()
    assert res.criterion == "psnr" and res.best_iteration == res.iterations[np.argmax(res.psnr)]
    assert (res.sure is not None) == (mode == "image")
    assert res.params["lr"] > 0 and res.params["lr_default"]
    assert res.params["style"] == ("dip" if optimizer == "adam" and arch != "vanilla" else "ntk")


def _blobs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth n x n image (two Gaussian blobs) under heavy noise: every prior helps."""
    yy, xx = np.mgrid[:n, :n] / (n - 1.0)
    clean = 0.2 + 0.6 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.4) ** 2) / 0.05) + 0.3 * np.exp(-((xx - 0.75) ** 2) / 0.02)
    return clean.astype(np.float32), _noisy(clean.astype(np.float32), sigma=0.15)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return _blobs(32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


#: combinations that the paper shows failing (Table 1: below the noisy input): gradient descent from
#: noise, whose NTK is a constant, low-pass filter (eq. 17), and the one-layer CNN from noise
PAPER_FAILURES = {("gd", arch) for arch in ARCHITECTURES} | {("adam", "vanilla")}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("optimizer", ["adam", "gd"])
@pytest.mark.parametrize("mode", ["image", "noise"])
def test_default_learning_rate_denoises(blobs, arch, optimizer, mode):
    """With its default learning rate, every combination but the paper's failures beats its input."""
    if mode == "noise" and (optimizer, arch) in PAPER_FAILURES:
        pytest.skip("fails in the paper too (Table 1); measured by benchmarks/bench_dip.py")
    clean, noisy = blobs
    res = train_dip(noisy, arch=arch, optimizer=optimizer, input=mode, width=16, iterations=300, every=10,
                    reference=clean, noise_channels=8)
    assert res.psnr.max() > _psnr(noisy, clean) + 3


def test_translation_makes_the_initial_output_zero(gray):
    _, noisy = gray
    first = next(iter_dip(noisy, arch="unet", style="ntk", width=4, iterations=2, sigma=SIGMA))
    assert isinstance(first, DIPStep) and first.iteration == 0
    assert np.all(first.image == 0)
    assert first.loss == pytest.approx(float(np.mean(noisy.astype(np.float64) ** 2)), rel=1e-6)
    first_noise = next(iter_dip(noisy, arch="unet", style="ntk", input="noise", width=4, iterations=2))
    assert np.abs(first_noise.image).max() > 0


def test_events_one_per_iteration(gray):
    _, noisy = gray
    events = list(iter_dip(noisy, arch="ae", width=4, iterations=7, every=3, sigma=SIGMA))
    assert [e.iteration for e in events] == list(range(8))
    assert [type(e) for e in events] == [DIPStep, DIPStep, DIPStep, DIPStep, DIPProgress, DIPProgress,
                                         DIPStep, DIPStep]  # 0, the early 1 and 2, every 3rd, the last


def test_layouts_dtypes_and_input_untouched(rgb):
    clean, noisy = rgb
    chw = np.ascontiguousarray(np.moveaxis(noisy, -1, 0))
    before = chw.copy()
    kw = dict(arch="vanilla", width=4, iterations=3, sigma=SIGMA, kernel_size=3)
    a = train_dip(chw, channel_axis=0, **kw)
    b = train_dip(noisy, channel_axis=-1, **kw)
    np.testing.assert_array_equal(chw, before)
    assert a.image.shape == chw.shape and a.image.dtype == np.float32
    np.testing.assert_allclose(np.moveaxis(a.image, 0, -1), b.image, atol=1e-6)
    c = train_dip(noisy.astype(np.float64), channel_axis=-1, **kw)
    assert c.image.dtype == np.float64


def test_units_do_not_matter(gray):
    """Training runs on y / max|y|: scaling the data scales the output (and sigma with it)."""
    _, noisy = gray
    kw = dict(arch="ae", width=4, iterations=5, every=5)
    a = train_dip(noisy, sigma=SIGMA, **kw)
    b = train_dip(noisy * 1000, sigma=SIGMA * 1000, **kw)
    np.testing.assert_allclose(b.image, a.image * 1000, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(b.sure, a.sure * 1e6, rtol=1e-3)


def test_seed_makes_runs_repeatable(gray):
    _, noisy = gray
    # on the CPU; cuDNN's convolution gradients are not deterministic
    kw = dict(arch="skip", input="noise", width=4, iterations=5, noise_channels=3, device="cpu")
    a, b, c = train_dip(noisy, seed=7, **kw), train_dip(noisy, seed=7, **kw), train_dip(noisy, seed=8, **kw)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.allclose(a.image, c.image)


def _live_networks() -> int:
    gc.collect()
    return sum(isinstance(o, EncoderDecoder) for o in gc.get_objects())


def test_close_stops_and_frees_the_network(gray):
    _, noisy = gray
    before = _live_networks()
    gen = iter_dip(noisy, arch="ae", width=4, iterations=1000, every=100, sigma=SIGMA)
    for event in gen:
        if event.iteration == 3:
            break
    assert _live_networks() == before + 1  # the run's network, alive while it trains
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    del gen, event
    assert _live_networks() == before


def test_out_of_memory_moves_the_run_to_the_cpu():
    """The fallback catches an accelerator's OOM, moves every tensor and repeats the call."""
    net = build_network("ae", 1, 1, 2)
    x = torch.rand(1, 1, 16, 16)
    run = TrainingRun(net, x, x.clone(), None, None, 0.0, translate=True, device=torch.device("cpu"))
    run.place()
    run.start(lambda: torch.optim.Adam(run.net.parameters(), lr=0.01))
    run.advance(update=True, record=False, eigenimages=0)
    run.device = torch.device("cuda")  # pretend: the OOM below comes from a GPU
    calls = []

    def flaky():
        calls.append(run.device)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run.advance(update=True, record=True, eigenimages=0)

    with pytest.warns(RuntimeWarning, match="out of memory on cuda; continuing on the CPU"):
        snap = retry_on_cpu(run, flaky)
    assert calls == [torch.device("cuda"), torch.device("cpu")] and run.device.type == "cpu"
    assert snap["n"] == 256 and len(run.optimizer.state) == len(list(net.parameters()))
    with pytest.raises(torch.OutOfMemoryError):  # on the CPU there is nowhere to go
        retry_on_cpu(run, lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("host")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_close_frees_memory_and_out_of_memory_falls_back():
    clean = data.astronaut()[:256, :256].astype(np.float32) / 255
    kw = dict(channel_axis=-1, arch="unet", width=64, sigma=SIGMA, device="cuda")

    def allocated() -> int:
        torch._C._cuda_clearCublasWorkspaces()  # cuBLAS keeps workspaces in the caching allocator
        return torch.cuda.memory_allocated()

    base = allocated()
    gen = iter_dip(clean, iterations=5, **kw)
    next(gen)
    assert allocated() > base
    gen.close()
    assert allocated() == base
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 2**20) / total)
    try:
        with pytest.warns(RuntimeWarning, match="out of memory on cuda; continuing on the CPU"):
            res = train_dip(clean, iterations=2, **kw)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert res.params["device"] == "cpu" and np.isfinite(res.image).all()


# ---------------------------------------------------------------- criteria and SURE
def test_criteria(gray):
    clean, noisy = gray
    sure = train_dip(noisy, arch="vanilla", width=4, iterations=6, every=2, sigma=SIGMA)
    assert sure.criterion == "sure" and sure.psnr is None
    assert sure.best_iteration == sure.iterations[np.argmin(sure.sure)]
    for input in ("noise", "image"):  # the DIP-style networks stop by the held-out pixels
        holdout = train_dip(noisy, input=input, width=4, iterations=6, every=2, arch="ae", sigma=SIGMA)
        assert holdout.criterion == "holdout" and holdout.validation is not None
        assert holdout.best_iteration == holdout.iterations[np.argmin(holdout.validation)]
    variance = train_dip(noisy, input="noise", width=4, iterations=6, every=2, arch="ae", criterion="variance")
    assert np.isinf(variance.variance[0]) and variance.validation is None
    assert variance.best_iteration == variance.iterations[np.argmin(variance.variance)]
    last = train_dip(noisy, input="noise", width=4, iterations=6, every=4, arch="ae", criterion="last")
    assert last.criterion == "last" and last.best_iteration == 6
    with pytest.raises(ValueError, match="needs a reference"):
        iter_dip(noisy, criterion="psnr")
    with pytest.raises(ValueError, match="needs input='image'"):
        iter_dip(noisy, input="noise", criterion="sure")


def test_sigma_is_estimated_when_omitted(gray):
    _, noisy = gray
    try:
        import pywt  # noqa: F401  (skimage.restoration.estimate_sigma needs PyWavelets)
    except ImportError:
        with pytest.raises(ImportError, match="pass sigma"):
            iter_dip(noisy, arch="ae", width=2, iterations=1)
        res = train_dip(noisy, arch="ae", width=2, iterations=1, criterion="last")
        assert res.sure is None and "sigma" not in res.params
        return
    res = train_dip(noisy, arch="ae", width=2, iterations=1)
    assert res.params["sigma_estimated"] and 0.05 < res.params["sigma"] < 0.2
    assert res.sure is not None


def test_mc_sure_stops_near_the_oracle():
    """Vanilla CNN + GD (twicing regime) overfits the noise; MC-SURE must stop near the oracle.

    (Its level is biased low, by about 2.7e-3 here, since the weights' dependence on ``y`` is
    left out of the divergence; the minimiser is what matters.)
    """
    for crop in [(slice(200, 232), slice(200, 232)), (slice(60, 92), slice(300, 332))]:
        clean = data.camera()[crop].astype(np.float32) / 255
        res = train_dip(
            _noisy(clean), arch="vanilla", optimizer="gd", width=32, kernel_size=7, iterations=200, every=5,
            reference=clean, sigma=SIGMA, criterion="sure",
        )
        chosen, oracle, last = res.psnr[np.argmin(res.sure)], res.psnr.max(), res.psnr[-1]
        assert oracle > last + 1  # there is something to stop early for
        assert chosen > oracle - 0.3


@pytest.mark.parametrize("input, size", [("noise", 32), ("image", 80)])
def test_holdout_stops_near_the_oracle(input, size):
    """No clean image: the least residual on held-out pixels is near the PSNR peak, also with the
    image as input (its held-out pixels are blind spots there, whose residual keeps falling a little
    past the peak, so it needs more of them than noise input)."""
    clean, noisy = _blobs(size)
    res = train_dip(noisy, arch="ae", input=input, width=16, iterations=600, every=25, reference=clean,
                    noise_channels=8, criterion="holdout")
    chosen, oracle, last = res.psnr[np.argmin(res.validation)], res.psnr.max(), res.psnr[-1]
    assert oracle > last + 1  # the run overfits: there is something to stop early for
    assert chosen > oracle - 1.5 and chosen > last + 1


def test_output_average_known_answer():
    avg = OutputAverage(decay=0.9)
    assert avg.variance == math.inf
    avg.add(torch.zeros(1, 1, 2, 2))
    avg.add(torch.ones(1, 1, 2, 2))
    assert avg.variance == pytest.approx(1.0) and float(avg.mean.max()) == pytest.approx(0.1)
    avg.add(torch.ones(1, 1, 2, 2))  # v = 0.9 * 0.1 + 0.1 * 0.9^2, over 1 - 0.9^2
    assert avg.variance == pytest.approx((0.09 + 0.081) / 0.19)


def test_a_run_that_does_not_move_is_reported_and_ties_keep_the_first(gray):
    """A constant output stops the run with a warning; equal PSNRs keep the earliest iteration."""
    clean, noisy = gray
    with pytest.warns(DIPCollapseWarning, match="constant"):
        res = train_dip(noisy, arch="vanilla", width=4, lr=1e-30, iterations=100, every=5, reference=clean)
    assert res.params["collapsed"] and res.params["iterations_run"] == 1  # the first recorded step
    assert res.best_iteration == 0 and res.psnr[0] == res.psnr[-1]


def test_dead_relus_are_a_collapse(gray):
    """Adam far too fast on the bias-free ReLU network switches every unit off: reported, not trained on."""
    clean, noisy = gray
    with pytest.warns(DIPCollapseWarning, match="network died"):
        res = train_dip(noisy, arch="ae", style="ntk", input="noise", width=8, lr=1.0, iterations=300, every=5,
                        reference=clean)
    assert res.params["iterations_run"] < 300 and np.ptp(res.image) == 0


def test_patience_stops_after_the_best(blobs):
    clean, noisy = blobs
    res = train_dip(noisy, arch="vanilla", optimizer="gd", width=16, kernel_size=5, iterations=2000, every=10,
                    reference=clean, patience=50)
    assert res.params["iterations_run"] == res.best_iteration + 50 < 2000
    assert res.params["stopped"].startswith("no improvement")


def test_time_limit_stops_and_keeps_the_best(blobs):
    """A run over its time limit stops at the next iteration, records it, and says why."""
    clean, noisy = blobs
    res = train_dip(noisy, arch="vanilla", optimizer="gd", width=8, kernel_size=5, iterations=100_000, every=10,
                    reference=clean, time_limit=0.5)
    assert res.params["iterations_run"] < 100_000 and res.iterations[-1] == res.params["iterations_run"]
    assert res.params["stopped"] == "time limit of 0.5 s reached" and res.timings["train_s"] < 30
    assert res.best_iteration == res.iterations[np.argmax(res.psnr)]


def test_first_iterations_are_recorded_before_every(blobs):
    """Iterations 1, 2, 4, 8 come before the first ``every``, then every ``every``-th and the last."""
    clean, noisy = blobs
    res = train_dip(noisy, arch="vanilla", optimizer="gd", width=4, kernel_size=5, iterations=45, every=20)
    assert res.iterations.tolist() == [0, 1, 2, 4, 8, 16, 20, 40, 45]


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(width=0), "width"),
        (dict(width=5000), "width"),
        (dict(iterations=0), "iterations"),
        (dict(iterations=2_000_000), "iterations"),
        (dict(every=0), "every"),
        (dict(time_limit=0.0), "time_limit"),
        (dict(arch="resnet"), "arch"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(input="both"), "input"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(sigma=float("inf")), "sigma"),
        (dict(device="cuda:0" if not torch.cuda.is_available() else "nonsense"), "cuda|device"),
    ],
)
def test_bad_options_raise(gray, kwargs, message):
    _, noisy = gray
    with pytest.raises((ValueError, RuntimeError), match=message):
        iter_dip(noisy, **kwargs)


def test_bad_images_raise(gray):
    clean, noisy = gray
    bad = noisy.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        iter_dip(bad)
    with pytest.raises(ValueError, match="non-finite"):
        iter_dip(noisy, reference=np.where(clean == clean.max(), np.inf, clean))
    with pytest.raises(ValueError, match="channel_axis"):
        iter_dip(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="differs"):
        iter_dip(noisy, reference=clean[:8])
    with pytest.raises(TypeError, match="numeric"):
        iter_dip(np.full((16, 16), "a"))


# ---------------------------------------------------------------- diagnostics
def test_weight_change_known_answer():
    init = [torch.zeros(2, 1, 3, 3), torch.zeros(4, 2, 3, 3), torch.zeros(4, 4, 3, 3), torch.zeros(1, 4, 1, 1)]
    cur = [w.clone() for w in init]
    cur[0][0, 0, 0, 0] = 10.0  # input layer: counts in l2, not in the hidden max
    cur[1][1, 1, 2, 2] = -0.5
    cur[1][0, 0, 0, 0] = 0.25
    cur[2][3, 3, 1, 1] = 0.125
    cur[3][0, 0, 0, 0] = 7.0  # output layer: likewise
    l2, mx = weight_change(init, cur)
    assert l2 == pytest.approx(math.sqrt(100 + 0.25 + 0.0625 + 0.125**2 + 49))
    assert mx == pytest.approx((0.5 + 0.125) / 2)
    l2, mx = weight_change(init[:2], cur[:2])
    assert math.isnan(mx)


def test_effective_weights_of_vanilla_are_the_standard_ones():
    net = build_network("vanilla", 3, 3, width=5)
    for w, p, s in zip(effective_weights(net), net.weights, net.scales):
        torch.testing.assert_close(w, p * s)


def test_preactivation_eigenimages_known_answer():
    h, w, c = 6, 5, 40
    e1 = torch.zeros(h, w, dtype=torch.float64)
    e1[1, 2] = 1.0
    e2 = torch.full((h, w), -1 / math.sqrt(h * w), dtype=torch.float64)
    e2 -= e2.reshape(-1) @ e1.reshape(-1) * e1  # orthogonal to e1
    e2 /= e2.norm()
    gen = torch.Generator().manual_seed(0)
    g, k = torch.randn(c, generator=gen, dtype=torch.float64), torch.randn(c, generator=gen, dtype=torch.float64)
    k -= (k @ g) / (g @ g) * g  # uncorrelated channel weights
    g *= 2 / g.norm() * math.sqrt(c)  # mean g^2 = 4
    k *= 1 / k.norm() * math.sqrt(c)  # mean k^2 = 1
    pre = (g[:, None, None] * e1 + k[:, None, None] * e2)[None]
    vals, imgs = preactivation_eigenimages(pre, k=3)
    torch.testing.assert_close(vals, torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(imgs[0], e1, atol=1e-10, rtol=0)
    torch.testing.assert_close(imgs[1], -e2, atol=1e-10, rtol=0)  # sign: largest |entry| positive
    with pytest.raises(ValueError, match="k must be"):
        preactivation_eigenimages(pre, k=41)


def test_ntk_top_eigenvalue_matches_the_empirical_ntk():
    net = build_network("vanilla", 1, 1, width=16, kernel_size=3, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    exact = torch.linalg.eigvalsh(empirical_ntk(net, x))[-1].item()
    assert ntk_top_eigenvalue(net, x, iterations=30) == pytest.approx(exact, rel=1e-4)


def test_trainer_diagnostics(gray):
    _, noisy = gray
    steps = [e for e in iter_dip(noisy, arch="ae", width=6, iterations=4, every=2, sigma=SIGMA, eigenimages=2)
             if isinstance(e, DIPStep)]
    assert steps[0].weight_change_l2 == 0 and steps[0].weight_change_max == 0
    assert 0 < steps[1].weight_change_l2 < steps[2].weight_change_l2
    assert steps[2].eigenimages.shape == (2, 16, 16) and steps[2].eigenvalues[0] >= steps[2].eigenvalues[1] >= 0
    np.testing.assert_allclose(np.linalg.norm(steps[2].eigenimages.reshape(2, -1), axis=1), 1, rtol=1e-6)
    assert steps[1].eigenvalues is not None
    plain = next(iter_dip(noisy, arch="ae", width=6, iterations=1, sigma=SIGMA))
    assert plain.eigenimages is None


# ---------------------------------------------------------------- NTK regime
# A wide vanilla CNN trained by gradient descent follows analytic twicing (paper eq. 9).
#
# Gradient descent with step ``eta`` on ``1/2 ||z~(w) - y||^2`` (image input, ``z~ = z - z^0``)
# linearises, as the width grows, to ``z^{t+1} = z^t + eta Theta (y - z^t)`` with ``Theta`` the
# analytic NTK of :class:`~napari_ntk_denoise.engine.kernels.CNNKernel`, whose solution from ``z^0 = 0`` is
# ``z(t) = V diag(1 - (1 - eta lambda)^t) V^T y`` (eq. 6).  The trainer's outputs at matched steps
# must agree with it to a relative error that shrinks like ``width^{-1/2}``.
#
# Measured (16 x 16 image, r = 11, eta lambda_max = 1, steps 10..100, max over steps; five seeds):
# width 64: 0.10-0.12, 256: 0.054-0.072, 1024: 0.029-0.034, 4096: 0.015-0.018.
# The tolerance is ``1.5 / sqrt(width)``: 0.19, 0.094, 0.047 (and 0.023 for the slow 4096 case).
STEPS, EVERY = 100, 10


@pytest.fixture(scope="module")
def twicing() -> tuple[np.ndarray, float, dict[int, np.ndarray]]:
    """A 16 x 16 noisy image with max 1 (so the trainer's scaling is the identity), eta, and z(t)."""
    clean = data.camera()[::16, ::16][8:24, 8:24].astype(np.float64) / 255
    y = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape)
    y = (y / np.abs(y).max()).astype(np.float32)
    x = torch.from_numpy(y.astype(np.float64))[None]
    pixels = torch.arange(y.size)
    theta = CNNKernel(depth=2, kernel_size=11, kind="ntk").block(x, pixels, pixels)
    lam, v = torch.linalg.eigh(theta)
    eta = 1.0 / lam[-1].item()
    coeff = v.T @ x.reshape(-1)
    z = {t: (v @ ((1 - (1 - eta * lam) ** t) * coeff)).reshape(y.shape).numpy() for t in range(EVERY, STEPS + 1, EVERY)}
    return y, eta, z


def _max_relative_error(twicing, width: int) -> float:
    y, eta, z = twicing
    errors = [
        np.linalg.norm(event.image - z[event.iteration]) / np.linalg.norm(z[event.iteration])
        for event in iter_dip(
            y, arch="vanilla", optimizer="gd", input="image", width=width, lr=eta, iterations=STEPS,
            every=EVERY, sigma=0.1, criterion="last", seed=0,
        )
        if isinstance(event, DIPStep) and event.iteration % EVERY == 0 and event.iteration > 0
    ]
    assert len(errors) == STEPS // EVERY
    return max(errors)


def test_wide_vanilla_cnn_follows_analytic_twicing(twicing):
    errors = {width: _max_relative_error(twicing, width) for width in (64, 256, 1024)}
    for width, error in errors.items():
        assert error < 1.5 / np.sqrt(width), errors
    assert errors[64] > errors[256] > errors[1024], errors


@pytest.mark.slow
def test_wider_vanilla_cnn_follows_analytic_twicing_closer(twicing):
    assert _max_relative_error(twicing, 4096) < 1.5 / np.sqrt(4096)


# ---------------------------------------------------------------- CLI
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ntk-denoise")
    dip_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_png_keeps_uint8_and_reports_the_best_iteration(tmp_path, capsys):
    from skimage import io as skio

    clean = data.astronaut()[100:124, 200:224]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    skio.imsave(tmp_path / "noisy.png", noisy, check_contrast=False)
    skio.imsave(tmp_path / "clean.png", clean, check_contrast=False)
    args = _parse(["dip", str(tmp_path / "noisy.png"), "-o", str(tmp_path / "out.png"), "--arch", "unet",
                   "--optim", "adam", "--input", "image", "--iters", "6", "--every", "3", "--width", "4",
                   "--reference", str(tmp_path / "clean.png"), "--sigma", "25"])
    bar = io.StringIO()
    assert args.func(args, stream=bar) == 0
    out = skio.imread(tmp_path / "out.png")
    assert out.dtype == np.uint8 and out.shape == noisy.shape
    assert "6/6" in bar.getvalue() and "PSNR" in bar.getvalue()
    printed = capsys.readouterr().out
    assert "best iteration" in printed and "by psnr" in printed and "PSNR" in printed and "sigma = 25\n" in printed
    quiet = _parse(["dip", str(tmp_path / "noisy.png"), "-o", str(tmp_path / "q.tif"), "--iters", "2", "--width", "2",
                    "--sigma", "25", "--quiet", "--channel-axis", "-1"])
    silent = io.StringIO()
    assert quiet.func(quiet, stream=silent) == 0 and silent.getvalue() == ""


def test_cli_tiff_float_gray(tmp_path, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "noisy.tif", _noisy(data.camera()[:20, :20].astype(np.float32) / 255))
    args = _parse(["dip", str(tmp_path / "noisy.tif"), "-o", str(tmp_path / "out.tif"), "--arch", "vanilla",
                   "--optim", "gd", "--input", "noise", "--iters", "3", "--width", "4", "--seed", "2",
                   "--device", "cpu"])
    assert dip_cli.run(args, stream=io.StringIO()) == 0
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.float32 and out.shape == (20, 20)
    assert "by holdout" in capsys.readouterr().out


def test_cli_rejects_bad_values(tmp_path):
    with pytest.raises(SystemExit):
        _parse(["dip", "x.png", "-o", "y.png", "--iters", "0"])
    with pytest.raises(SystemExit):
        _parse(["dip", "x.png", "-o", "y.png", "--arch", "resnet"])
    with pytest.raises(SystemExit):
        _parse(["dip", "x.png", "-o", "y.png", "--channel-axis", "rgb"])
    args = _parse(["dip", str(tmp_path / "missing.png"), "-o", str(tmp_path / "y.png")])
    with pytest.raises(FileNotFoundError, match="no such image"):
        dip_cli.run(args)


# ---------------------------------------------------------------- engine stays Qt-free
def test_dip_imports_no_qt():
    code = ("import sys, napari_ntk_denoise.dip, napari_ntk_denoise.cli.dip; "
            "bad = [m for m in ('qtpy', 'PyQt5', 'napari', 'magicgui') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": ":".join(sys.path)}).returncode == 0
