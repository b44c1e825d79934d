"""Tiled denoising: seams, equivalence with the untiled filter, constants, memory guard, errors."""

from __future__ import annotations

import numpy as np
import pytest

import napari_ntk_denoise.microscopy.tiling as tiling
from napari_ntk_denoise import denoise_ntk
from napari_ntk_denoise.engine.denoise import iter_denoise_ntk
from napari_ntk_denoise.engine.events import Progress, drain
from napari_ntk_denoise.microscopy.tiling import TileGrid, blend_window, denoise_tiled, iter_denoise_tiled, tile_cores

FAST = dict(kernel_size=5, fraction=0.1, rank=48, guided=False)
N = 96


@pytest.fixture(scope="module")
def smooth_noisy():
    yy, xx = np.mgrid[:N, :N] / N
    clean = 0.3 + 0.4 * xx + 0.2 * np.sin(6 * yy)
    return clean, clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)


def seam_jump_ratio(out, clean, res) -> float:
    """Mean |error step| across the columns where a tile starts or ends, over the median step."""
    edges = {e for _, cols in res.tiles for e in (cols.start, cols.stop) if 0 < e < N}
    step = np.abs(np.diff(out - clean, axis=1)).mean(axis=0)  # step[e - 1]: between columns e - 1 and e
    return float(np.mean([step[e - 1] for e in edges]) / np.median(step))


def test_tile_grid_covers_with_overlap():
    assert tile_cores(40, 64, 8) == [0, 40]
    for n in (65, 100, 200, 2048):
        cores = tile_cores(n, 64, 8)
        assert cores[0] == 0 and cores[-1] == n and all(a < b for a, b in zip(cores, cores[1:]))
        spans = TileGrid((cores,), (8,)).axis_tiles(0)
        assert all(sl.stop - sl.start <= 64 for sl, _ in spans)
        assert all(a.stop - b.start == 16 for (a, _), (b, _) in zip(spans, spans[1:]))  # overlap = 2 halos
        k = len(cores) - 2  # one tile fewer could not cover n
        assert (64 if k == 1 else 2 * (64 - 8) + (k - 2) * (64 - 16)) < n
    w = blend_window(64, 16, 16)
    assert w.min() > 0 and w[16:48].min() == 1
    np.testing.assert_allclose(w[48:] + w[:16], 1.0)  # a falling ramp and the next tile's rising ramp
    weights = np.zeros((100, 90))
    grid = TileGrid((tile_cores(100, 40, 6), tile_cores(90, 40, 6)), (6, 6))
    for sl, weight in grid.tiles():
        weights[sl] += weight
    np.testing.assert_allclose(weights, 1.0)  # the windows of a grid are a partition of unity
    assert grid.tile_pixels == sum(weight.size for _, weight in grid.tiles()) > weights.size


def test_no_seams(smooth_noisy):
    clean, noisy = smooth_noisy
    out, res = denoise_tiled(noisy, 0.1, tile=48, overlap=16, **FAST)
    assert len(res.tiles) == 9 and len(res.t) == 9
    assert seam_jump_ratio(out, clean, res) < 1.2
    err = (out - clean) ** 2
    cover = np.zeros(N, int)
    for _, cols in res.tiles[:3]:  # the first row of tiles
        cover[cols] += 1
    band = cover > 1  # columns shared by two tiles
    assert err[:, band].mean() < 1.3 * err[:, ~band].mean()
    assert err.mean() < 0.2 * np.mean((noisy - clean) ** 2)


def test_seam_check_detects_hard_seams(smooth_noisy, monkeypatch):
    """Flat windows (plain averaging) leave steps where tiles end: the seam statistic sees them."""
    clean, noisy = smooth_noisy
    monkeypatch.setattr(tiling, "blend_window", lambda n, a, b: np.ones(n))
    out, res = denoise_tiled(noisy, 0.1, tile=48, overlap=16, **FAST)
    assert seam_jump_ratio(out, clean, res) > 1.25


def test_one_tile_equals_untiled(smooth_noisy):
    _, noisy = smooth_noisy
    img = noisy[:40, :48].astype(np.float32)
    before = img.copy()
    tiled, res = denoise_tiled(img, 0.1, tile=64, **FAST)
    plain, ref = denoise_ntk(img, 0.1, **FAST)
    assert len(res.tiles) == 1 and res.t == [ref.t]
    assert tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, plain, atol=1e-6)
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("guided", [False, True])
def test_kept_filters_re_render_every_tile_at_its_own_offset(smooth_noisy, guided):
    """``render_offset(k)`` is the blend of every tile denoised at a fixed step ``k`` grid steps from
    its own SURE step; at 0 it is the output; without the kept filters it is refused."""
    _, noisy = smooth_noisy
    opts = {**FAST, "guided": guided}
    out, res = denoise_tiled(noisy, 0.1, tile=48, overlap=16, keep_filters=True, **opts)
    np.testing.assert_allclose(res.render_offset(0), out, atol=1e-6)
    lo, hi = res.offsets()
    assert lo < 0 < hi and res.step_at(0) == res.t
    steps = res.step_at(-2)
    assert all(t <= t0 for t, t0 in zip(steps, res.t)) and steps != res.t  # smoother, where the grid allows
    acc, wsum = np.zeros(noisy.shape), np.zeros(noisy.shape)
    for (sl, weight), t in zip(res.filters.tiles, steps):
        acc[sl] += weight * drain(iter_denoise_ntk(noisy[sl], 0.1, stream_steps=0, **opts)).render(t)
        wsum[sl] += weight
    np.testing.assert_allclose(res.render_offset(-2), acc / wsum, atol=1e-5)
    with pytest.raises(ValueError, match="keep_filters"):
        denoise_tiled(noisy, 0.1, tile=48, overlap=16, **FAST)[1].render_offset(1)


def test_constant_stays_constant_and_colour_layout():
    img = np.full((3, 70, 60), 0.5, np.float32)
    out, res = denoise_tiled(img, 0.05, tile=40, overlap=12, channel_axis=0, keep_filters=True, **FAST)
    assert out.shape == img.shape and len(res.tiles) == 3 * 2
    np.testing.assert_allclose(out, 0.5, atol=1e-4)
    np.testing.assert_allclose(res.render_offset(1), out, atol=1e-4)  # the input's layout, as the output
    assert res.offsets() == (0, 0) and res.step_at(-3) == res.t  # constant tiles have no step to move


def test_kept_filters_keep_a_colour_layout(smooth_noisy):
    """A colour image with its channels first re-renders in that layout, as its tiles do."""
    _, noisy = smooth_noisy
    rgb = np.stack([noisy, noisy[::-1], noisy[:, ::-1]]).astype(np.float32)
    out, res = denoise_tiled(rgb, 0.1, tile=48, overlap=16, channel_axis=0, keep_filters=True, **FAST)
    np.testing.assert_allclose(res.render_offset(0), out, atol=1e-6)
    assert res.render_offset(-2).shape == rgb.shape and not np.allclose(res.render_offset(-2), out, atol=1e-3)


def test_progress_events(smooth_noisy):
    _, noisy = smooth_noisy
    events = list(iter_denoise_tiled(noisy[:64, :64], 0.1, tile=40, overlap=12, stop=1, **FAST))
    assert all(isinstance(e, Progress) for e in events)
    tiles = [e for e in events if e.stage == "tiles"]
    assert [e.done for e in tiles] == [1, 2, 3, 4] and tiles[-1].fraction == 1
    assert any(e.stage.startswith("tile 1/4: ") for e in events)


def test_bad_arguments_fail_fast(smooth_noisy):
    _, noisy = smooth_noisy
    with pytest.raises(ValueError, match="receptive field"):
        denoise_tiled(noisy, 0.1, tile=48, overlap=3, **FAST)
    with pytest.raises(ValueError, match="larger than the overlap"):
        denoise_tiled(noisy, 0.1, tile=16, overlap=16, **FAST)
    with pytest.raises(ValueError, match="reference"):
        denoise_tiled(noisy, 0.1, reference=noisy, **FAST)


def test_memory_guard_refuses_and_suggests_tiles(smooth_noisy, monkeypatch):
    _, noisy = smooth_noisy
    monkeypatch.setattr("napari_ntk_denoise.engine._input.available_memory", lambda device: 1 << 16)
    with pytest.raises(MemoryError, match="smaller tiles"):
        denoise_tiled(noisy, 0.1, tile=48, **FAST)
    with pytest.raises(MemoryError, match="denoise in tiles"):
        denoise_ntk(noisy, 0.1, **FAST)


def test_default_tile_follows_the_kernel_spectrum():
    """``choose_tile``: ``TILE_FINE`` where the spectrum on tiles of ``TILE["2d"]`` does not fall
    within the rank (a colour texture), ``TILE["2d"]`` where it falls early (a smooth plane) or
    cannot be measured (too few anchors), ``TILE["3d"]`` for volumes."""
    rng = np.random.default_rng(1)
    texture = rng.random((300, 300, 3))
    yy, xx = np.mgrid[:300, :300] / 300
    smooth = 0.3 + 0.4 * xx + 0.2 * np.sin(6 * yy) + 0.02 * rng.standard_normal((300, 300))
    assert tiling.choose_tile(texture, -1) == tiling.TILE_FINE
    assert tiling.choose_tile(np.moveaxis(texture, -1, 0), 0) == tiling.TILE_FINE
    assert tiling.choose_tile(smooth) == tiling.TILE["2d"]
    # no measurement: one tile of TILE["2d"] holds the plane, the overlap leaves no room for
    # TILE_FINE, a kernel of noise, a volume
    assert tiling.choose_tile(texture[:256, :256], -1) == tiling.TILE["2d"]
    assert tiling.choose_tile(texture, -1, overlap=tiling.TILE_FINE) == tiling.TILE["2d"]
    assert tiling.choose_tile(texture, -1, input="noise") == tiling.TILE["2d"]
    assert tiling.choose_tile(np.stack([smooth[:64, :64]] * 4), volume=True) == tiling.TILE["3d"]
    assert tiling.fixed_tile((300, 300)) is None and tiling.fixed_tile((300, 300), 126) is None


def test_tiles_default_to_the_chosen_side(smooth_noisy, monkeypatch):
    """Without ``tile`` the tiled denoiser takes :func:`choose_tile`'s side for the image it denoises
    and reports it; a given ``tile`` is never second-guessed."""
    _, noisy = smooth_noisy
    seen = []

    def choose(image, channel_axis=None, device=None, overlap=None, **options):
        seen.append((image.shape, overlap, options["rank"]))
        return 48

    monkeypatch.setattr(tiling, "choose_tile", choose)
    out, res = denoise_tiled(noisy, 0.1, overlap=16, **FAST)
    assert seen == [((N, N, 1), 16, FAST["rank"])] and res.tile == 48 and len(res.tiles) == 9
    assert res.metadata()["tile"] == 48
    np.testing.assert_array_equal(out, denoise_tiled(noisy, 0.1, tile=48, overlap=16, **FAST)[0])
    assert len(seen) == 1
