"""Generalized Anscombe transform: stabilisation and unbiased inverse."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ntk_denoise.microscopy.vst import PoissonGaussian, gat_forward, gat_inverse


def poisson_gaussian(clean, gain, read_noise, rng, offset=0.0):
    """Sample ``gain * Poisson(clean / gain) + N(offset, read_noise^2)``."""
    return gain * rng.poisson(clean / gain) + offset + read_noise * rng.standard_normal(np.shape(clean))


@pytest.mark.parametrize("gain, read_noise, offset", [(1.0, 0.0, 0.0), (2.0, 5.0, 0.0), (0.5, 1.0, 100.0)])
def test_gat_stabilises_variance(rng, gain, read_noise, offset):
    pg = PoissonGaussian(gain, read_noise, offset)
    for photons in (5.0, 20.0, 100.0):
        z = poisson_gaussian(np.full(100_000, gain * photons), gain, read_noise, rng, offset)
        assert gat_forward(z, pg).var() == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("gain, read_noise", [(1.0, 0.0), (2.0, 5.0), (0.5, 1.0)])
def test_round_trip_preserves_mean(rng, gain, read_noise):
    """The exact unbiased inverse of E[f(z)] gives back E[z], also at low counts (the algebraic one does not)."""
    pg = PoissonGaussian(gain, read_noise)
    for photons in (1.0, 3.0, 10.0, 100.0):
        mean = gain * photons
        f = gat_forward(poisson_gaussian(np.full(200_000, mean), gain, read_noise, rng), pg)
        back = float(gat_inverse(np.array(f.mean()), pg))
        assert back == pytest.approx(mean, rel=0.03, abs=0.03 * gain)
        algebraic = (f.mean() ** 2 / 4 - 3 / 8 - (read_noise / gain) ** 2) * gain
        if photons <= 3:
            assert abs(algebraic - mean) > 2 * abs(back - mean) + 0.05 * gain


def test_inverse_of_forward_on_images_keeps_dtype_and_input(rng):
    pg = PoissonGaussian(2.0, 3.0, 10.0)
    z = poisson_gaussian(np.full((16, 16), 400.0), 2.0, 3.0, rng, 10.0).astype(np.float32)
    before = z.copy()
    f = gat_forward(z, pg)
    assert f.dtype == np.float32 and gat_inverse(f, pg).dtype == np.float32
    np.testing.assert_array_equal(z, before)
    # a noiseless high-count image comes back within the (small) inverse bias
    assert np.allclose(gat_inverse(gat_forward(np.full(4, 1e4), pg), pg), 1e4, rtol=1e-3)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="gain"):
        PoissonGaussian(0.0, 1.0)
