"""Poisson-Gaussian parameters, the noise level left after the transform, and their check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_ntk_denoise.microscopy.noise_estimation import estimate_poisson_gaussian, noise_report, stabilised_sigma
from napari_ntk_denoise.microscopy.vst import PoissonGaussian, gat_forward

FMD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd_samples"


def poisson_gaussian(clean, gain, read_noise, rng, offset=0.0):
    """Sample ``gain * Poisson(clean / gain) + N(offset, read_noise^2)``."""
    return gain * rng.poisson(clean / gain) + offset + read_noise * rng.standard_normal(np.shape(clean))


def _scene(n=256, low=2.0, high=300.0):
    yy, xx = np.mgrid[:n, :n] / n
    return low + high * (0.6 * xx + 0.4 * yy) + 0.25 * high * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.05)


@pytest.mark.parametrize("gain, read_noise", [(2.0, 5.0), (4.0, 2.0), (0.5, 1.5)])
def test_estimation_recovers_parameters(rng, gain, read_noise):
    z = poisson_gaussian(_scene(), gain, read_noise, rng)
    est = estimate_poisson_gaussian(z)
    assert est.gain == pytest.approx(gain, rel=0.15)
    for level in (50.0, 100.0, 300.0):  # the fitted variance function over the image's range
        assert est.variance(level) == pytest.approx(gain * level + read_noise**2, rel=0.1)
    if read_noise**2 > 5 * gain:  # read noise is identifiable only where it rivals the shot noise of dark pixels
        assert est.read_noise == pytest.approx(read_noise, rel=0.15)


def test_offset_clipping_and_8_bits(rng):
    """A camera offset with read noise, clipped at 0 and 255 and rounded to 8 bits as files are: the
    variance function is recovered from the unclipped blocks, and a known offset gives the read noise."""
    gain, read_noise, offset = 3.0, 4.0, 20.0
    clean = np.concatenate([np.zeros((64, 256)), _scene(256, 0.0, 320.0)[64:]])  # a dark band and a bright edge
    z = np.clip(np.round(poisson_gaussian(clean, gain, read_noise, rng, offset)), 0, 255).astype(np.uint8)
    assert (z == 255).mean() > 0.02 and (z == 0).sum() == 0
    est = estimate_poisson_gaussian(z)
    truth = PoissonGaussian(gain, np.sqrt(read_noise**2 + 1 / 12), offset)  # rounding adds 1/12
    assert est.gain == pytest.approx(gain, rel=0.1)
    for level in (40.0, 100.0, 200.0):
        assert est.variance(level) == pytest.approx(truth.variance(level), rel=0.1)
    known = estimate_poisson_gaussian(z, offset=offset)
    assert known.offset == offset and known.read_noise == pytest.approx(truth.read_noise, rel=0.25)
    # without the clipped blocks left out, the fit is pulled down by the flat saturated area
    clipped = np.clip(poisson_gaussian(_scene(256, 50.0, 600.0), gain, 0.0, rng), 0, 255)
    assert estimate_poisson_gaussian(clipped).variance(150.0) == pytest.approx(gain * 150.0, rel=0.1)


def test_stabilised_sigma_matches_the_spread_at_low_counts(rng):
    """At a few photons the transformed noise is well below 1; the model's level matches two draws."""
    clean = _scene(128, 0.05, 1.5)
    noise = PoissonGaussian(1.0, 0.0)
    a, b = (gat_forward(poisson_gaussian(clean, 1.0, 0.0, rng), noise) for _ in range(2))
    spread = float(np.std(a.astype(np.float64) - b) / np.sqrt(2))
    assert spread < 0.85
    assert stabilised_sigma(a, noise) == pytest.approx(spread, rel=0.05)
    high = gat_forward(poisson_gaussian(np.full((64, 64), 500.0), 1.0, 0.0, rng), noise)
    assert stabilised_sigma(high, noise) == pytest.approx(1.0, abs=0.01)


def test_report_checks_and_warns(rng):
    z = poisson_gaussian(_scene(), 2.0, 3.0, rng)
    rep = noise_report(z)
    assert rep.estimated and rep.warnings == ()
    assert rep.check == pytest.approx(rep.sigma, rel=0.1) and rep.correlation == pytest.approx(1.0, abs=0.15)
    assert "gain = " in rep.summary() and rep.metadata()["noise"]["gain"] == rep.noise.gain
    wrong = noise_report(z, PoissonGaussian(8.0, 3.0))  # a gain 4x too large
    assert not wrong.estimated and any("differs from the model" in w for w in wrong.warnings)
    correlated = _scene() + ndimage.gaussian_filter(rng.standard_normal((256, 256)), 1.0) * 20
    assert any("assume white noise" in w for w in noise_report(correlated, PoissonGaussian(0.5, 10.0)).warnings)


def test_correlated_noise_is_modelled_as_blurred_white_noise(rng):
    """Camera noise blurred over neighbouring pixels: the fit sees only part of its variance; the
    report finds the blur and corrects the parameters so that the transformed noise is known."""
    clean = _scene()
    shot = poisson_gaussian(clean, 2.0, 3.0, rng) - clean
    kernel = ndimage.gaussian_filter(np.pad([[1.0]], 4), 0.7, mode="constant", truncate=3.0)
    z = clean + ndimage.gaussian_filter(shot, 0.7, mode="wrap", truncate=3.0) / np.sqrt((kernel**2).sum())
    rep = noise_report(z)
    assert rep.correlation > 1.5 and rep.blur == pytest.approx(0.7, abs=0.15)
    assert rep.noise.gain == pytest.approx(2.0, rel=0.25)
    measured = float(np.std(gat_forward(z, rep.noise).astype(np.float64) - gat_forward(clean, rep.noise)))
    assert rep.sigma == pytest.approx(measured, rel=0.1)
    assert any("blurred by" in w for w in rep.warnings)


def test_report_on_colour_planes(rng):
    z = np.stack([poisson_gaussian(_scene(), 2.0, 3.0, rng) for _ in range(3)], axis=-1)
    rep = noise_report(z, channel_axis=-1)
    assert rep.noise.gain == pytest.approx(2.0, rel=0.15)


def test_errors():
    with pytest.raises(ValueError, match="constant"):
        estimate_poisson_gaussian(np.full((32, 32), 7.0))
    with pytest.raises(ValueError, match="NaN"):
        estimate_poisson_gaussian(np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match="signal-independent"):
        flat_noise = np.random.default_rng(0).standard_normal((64, 64)) * 3
        estimate_poisson_gaussian(np.linspace(0, 50, 64)[None, :] + flat_noise)
    with pytest.raises(ValueError, match="at least"):
        estimate_poisson_gaussian(np.ones((8, 8)))


def _fmd_planes():
    import tifffile
    from skimage import io

    def gray(name):
        a = io.imread(FMD / name).astype(np.float64)
        return a if a.ndim == 2 else a[..., 0]  # BPAE_R is one channel replicated as RGB

    pairs = [(gray(f"noisy_{n}.png"), gray(f"gt_{n}.png")) for n in ("Confocal_FISH_3", "BPAE_R_Channel")]
    noisy, gt = (tifffile.imread(FMD / f"{k}_3D_volume_stack1_32bit.tif").astype(np.float64) for k in ("noisy", "gt"))
    return pairs + list(zip(noisy, gt))


@pytest.mark.skipif(not FMD.is_dir(), reason=f"FMD samples not found at {FMD}")
def test_fmd_stabilised_noise_within_10_percent_of_the_measured():
    """On real confocal frames the model's noise level after the transform is within 10 % of the
    spread of (transformed frame - transformed 50-frame average)."""
    for noisy, gt in _fmd_planes():
        rep = noise_report(noisy)
        measured = float(np.std(gat_forward(noisy, rep.noise) - gat_forward(gt, rep.noise)))
        assert measured < 0.97  # the transform leaves less than unit noise on these low-count frames
        assert rep.sigma == pytest.approx(measured, rel=0.1)
        assert rep.warnings == ()
