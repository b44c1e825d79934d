"""nD stacks: axes handling, channels, Poisson-Gaussian path, dask and dask.distributed equality."""

from __future__ import annotations

import argparse

import dask.array as da
import numpy as np
import pytest
import tifffile

from conftest import smooth_image
from napari_ntk_denoise import denoise_ntk
from napari_ntk_denoise.cli.stacks import add_parser
from napari_ntk_denoise.microscopy.stacks import check_axes, denoise_stack, estimate_stack_noise, estimate_stack_sigma
from napari_ntk_denoise.microscopy.vst import PoissonGaussian

FAST = dict(kernel_size=5, fraction=0.1, rank=32, tile=64, guided=False)


@pytest.fixture(scope="module")
def zstack():
    """A (Z=3, Y=32, X=40) stack of shifted smooth images with sigma = 0.1 noise."""
    rng = np.random.default_rng(5)
    clean = np.stack([np.roll(smooth_image((32, 40)), 3 * z, axis=1) for z in range(3)])
    return clean, (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)


def test_check_axes():
    assert check_axes("tzyx", 4) == "TZYX"
    for axes, msg in [("ZYX", "dimensions"), ("ZQYX", "unknown"), ("ZYYX", "repeats"), ("TZCX", "Y and X")]:
        with pytest.raises(ValueError, match=msg):
            check_axes(axes, 4)


def test_planes_are_independent(zstack):
    _, noisy = zstack
    before = noisy.copy()
    out = denoise_stack(noisy, 0.1, axes="ZYX", **FAST)
    assert out.shape == noisy.shape and out.dtype == np.float32
    np.testing.assert_array_equal(noisy, before)
    single, _ = denoise_ntk(noisy[1], 0.1, kernel_size=5, fraction=0.1, rank=32, guided=False)
    np.testing.assert_allclose(out[1], single, atol=1e-5)
    # the axis order only moves data around
    moved = denoise_stack(np.moveaxis(noisy, 0, -1), 0.1, axes="YXZ", **FAST)
    np.testing.assert_allclose(np.moveaxis(moved, -1, 0), out, atol=1e-5)


def test_channels_colour_or_independent(zstack):
    _, noisy = zstack
    colour = denoise_stack(noisy, 0.1, axes="CYX", channels="colour", **FAST)
    ref, _ = denoise_ntk(noisy, 0.1, channel_axis=0, kernel_size=5, fraction=0.1, rank=32, guided=False)
    np.testing.assert_allclose(colour, ref, atol=1e-5)
    independent = denoise_stack(noisy, 0.1, axes="CYX", channels="independent", **FAST)
    np.testing.assert_allclose(independent, denoise_stack(noisy, 0.1, axes="ZYX", **FAST), atol=1e-6)
    assert np.abs(independent - colour).max() > 1e-3


def test_poisson_gaussian_stack_improves_and_keeps_mean():
    rng = np.random.default_rng(2)
    clean = 5 + 60 * np.stack([smooth_image((48, 48)), smooth_image((48, 48))[::-1]])
    gain, read = 2.0, 3.0
    noisy = gain * rng.poisson(clean / gain) + read * rng.standard_normal(clean.shape)
    est = estimate_stack_noise(noisy, "ZYX")
    assert est.gain == pytest.approx(gain, rel=0.3)
    out = denoise_stack(noisy, axes="ZYX", noise_model="poisson-gaussian", noise=PoissonGaussian(gain, read), **FAST)
    assert np.mean((out - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2)
    assert out.mean() == pytest.approx(clean.mean(), rel=0.02)
    with pytest.raises(ValueError, match="sets the noise level"):
        denoise_stack(noisy, 1.0, axes="ZYX", noise_model="poisson-gaussian")
    with pytest.raises(ValueError, match="noise_model"):
        denoise_stack(noisy, axes="ZYX", noise_model="poisson")
    with pytest.raises(ValueError, match="noise_model='gaussian'"):
        denoise_stack(noisy, axes="ZYX", noise=PoissonGaussian(gain, read))


def test_dask_in_dask_out_equals_numpy(zstack):
    _, noisy = zstack
    tz = np.stack([noisy, noisy[::-1]])  # (T=2, Z=3, Y, X)
    lazy = da.from_array(tz, chunks=(1, 2, 16, 20))
    out = denoise_stack(lazy, 0.1, axes="TZYX", **FAST)
    assert isinstance(out, da.Array) and out.dtype == np.float32
    assert out.chunks[2:] == ((32,), (40,))  # whole planes per task
    np.testing.assert_allclose(out.compute(scheduler="threads"), denoise_stack(tz, 0.1, axes="TZYX", **FAST),
                               atol=1e-5)


@pytest.mark.parametrize("axes,shape,chunks,extra", [
    ("ZYX", (2, 70, 90), (1, 25, 30), {}),  # gray planes, 3 x 3 tiles
    ("YXC", (70, 60, 3), (35, 20, 1), {}),  # colour plane, C merged into one chunk
    ("ZYX", (12, 40, 40), (5, 16, 16), dict(patches="3d", kernel_size=3, tile=28, tile_z=10)),  # volume tiles
])
def test_dask_chunks_across_tiles_equal_numpy(axes, shape, chunks, extra):
    """Y-X (and Z) chunks smaller than a plane: halo-widened tasks blended like the in-memory tiles."""
    rng = np.random.default_rng(8)
    noisy = (smooth_image(shape[:2])[..., None] * np.ones(shape[2]) if axes == "YXC" else
             np.stack([smooth_image(shape[1:])] * shape[0])) + 0.1 * rng.standard_normal(shape)
    kw = {**FAST, "tile": 40, **extra}
    lazy = denoise_stack(da.from_array(noisy, chunks=chunks), 0.1, axes=axes, **kw)
    expected = denoise_stack(noisy, 0.1, axes=axes, **kw)
    n_tasks = lazy.__dask_graph__()  # built, nothing computed yet
    assert isinstance(lazy, da.Array) and len(n_tasks) > 1
    np.testing.assert_allclose(lazy.compute(scheduler="threads"), expected, atol=1e-5)


def test_memory_guard_refuses_before_dask_graph(zstack, monkeypatch):
    _, noisy = zstack
    monkeypatch.setattr("napari_ntk_denoise.engine._input.available_memory", lambda device: 1 << 16)
    with pytest.raises(MemoryError, match="smaller tiles"):
        denoise_stack(da.from_array(noisy), 0.1, axes="ZYX", **FAST)  # refused eagerly, nothing computed
    with pytest.raises(MemoryError, match="smaller tiles"):
        denoise_stack(noisy, 0.1, axes="ZYX", **FAST)


def test_volume_patches_use_the_third_dimension():
    """3-D patches on a stack whose planes repeat along Z beat plane-by-plane filtering; tiles along Z
    blend like tiles in a plane; a Z axis is required."""
    rng = np.random.default_rng(6)
    clean = np.stack([smooth_image((32, 32))] * 10)
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    kw = dict(kernel_size=3, fraction=0.05, rank=32)
    flat = denoise_stack(noisy, 0.1, axes="ZYX", **kw)
    vol = denoise_stack(noisy, 0.1, axes="ZYX", patches="3d", kernel_size_z=3, **kw)
    tiled = denoise_stack(noisy, 0.1, axes="ZYX", patches="3d", kernel_size_z=3, tile_z=8, overlap_z=4, **kw)
    mse = {name: np.mean((out - clean) ** 2) for name, out in [("flat", flat), ("vol", vol), ("tiled", tiled)]}
    assert mse["vol"] < 0.7 * mse["flat"], mse
    assert mse["tiled"] < 0.8 * mse["flat"], mse
    one, res = denoise_ntk(noisy, 0.1, volume=True, kernel_size_z=3, **kw)
    np.testing.assert_allclose(vol, one, atol=1e-5)  # one tile: the untiled volume filter
    assert res.params["volume"] and res.filter.shape == (10, 32, 32)
    assert res.filter.weights((4, 5, 6)).shape == (10, 32, 32)
    with pytest.raises(ValueError, match="needs a Z axis"):
        denoise_stack(noisy[0], 0.1, axes="YX", patches="3d")


def test_stack_sigma_is_estimated_once():
    rng = np.random.default_rng(7)
    clean = np.stack([smooth_image((48, 48))] * 3)
    noisy = clean + 0.05 * rng.standard_normal(clean.shape)
    assert estimate_stack_sigma(noisy, "ZYX") == pytest.approx(0.05, rel=0.15)
    assert estimate_stack_sigma(da.from_array(noisy, chunks=(1, 16, 48)), "ZYX") == estimate_stack_sigma(noisy, "ZYX")
    np.testing.assert_allclose(denoise_stack(noisy, axes="ZYX", **FAST),
                               denoise_stack(noisy, estimate_stack_sigma(noisy, "ZYX"), axes="ZYX", **FAST))


def test_dask_poisson_gaussian_estimates_like_numpy():
    rng = np.random.default_rng(4)
    clean = 5 + 60 * np.stack([smooth_image((48, 48)), smooth_image((48, 48)).T, smooth_image((48, 48))[::-1]])
    noisy = (2 * rng.poisson(clean / 2) + 3 * rng.standard_normal(clean.shape)).astype(np.float32)
    lazy = da.from_array(noisy, chunks=(1, 24, 48))
    assert estimate_stack_noise(lazy, "ZYX") == estimate_stack_noise(noisy, "ZYX")
    out = denoise_stack(lazy, axes="ZYX", noise_model="poisson-gaussian", **FAST)
    np.testing.assert_allclose(out.compute(), denoise_stack(noisy, axes="ZYX", noise_model="poisson-gaussian", **FAST),
                               rtol=1e-5, atol=1e-4)


def test_local_cluster_equals_in_process(zstack, tmp_path):
    distributed = pytest.importorskip("distributed")
    _, noisy = zstack
    expected = denoise_stack(noisy, 0.1, axes="ZYX", **FAST)
    cluster_kw = dict(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    with distributed.LocalCluster(**cluster_kw) as cluster:
        with distributed.Client(cluster) as client:
            lazy = denoise_stack(da.from_array(noisy, chunks=(1, 32, 40)), 0.1, axes="ZYX", **FAST)
            result = client.compute(lazy).result()
            assert len(client.scheduler_info()["workers"]) == 2
            tifffile.imwrite(tmp_path / "in.tif", noisy)
            assert run_stack_cli([str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), "--axes", "ZYX",
                                  "--sigma", "0.1", "--scheduler", cluster.scheduler_address, *CLI_FAST]) == 0
    np.testing.assert_allclose(result, expected, atol=1e-5)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif"), expected, atol=1e-5)


def run_stack_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stack", *argv])
    return args.func(args)


CLI_FAST = ["--kernel-size", "5", "--fraction", "0.1", "--rank", "32", "--tile", "64", "--no-guided", "--quiet"]


def test_cli_tiff_to_zarr_and_back(zstack, tmp_path):
    zarr = pytest.importorskip("zarr")
    _, noisy = zstack
    tifffile.imwrite(tmp_path / "in.tif", noisy)
    assert run_stack_cli([str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.zarr"), "--axes", "ZYX",
                          "--sigma", "0.1", *CLI_FAST]) == 0
    expected = denoise_stack(noisy, 0.1, axes="ZYX", **FAST)
    np.testing.assert_allclose(zarr.open(str(tmp_path / "out.zarr"), mode="r")[:], expected, atol=1e-5)
    assert run_stack_cli([str(tmp_path / "out.zarr"), "-o", str(tmp_path / "again.tif"), "--axes", "ZYX",
                          "--sigma", "0.1", *CLI_FAST]) == 0
    assert tifffile.imread(tmp_path / "again.tif").shape == noisy.shape
    vol = ["--patches", "3d", "--kernel-size-z", "3"]
    assert run_stack_cli([str(tmp_path / "in.tif"), "-o", str(tmp_path / "vol.tif"), "--axes", "ZYX",
                          "--sigma", "0.1", *CLI_FAST, *vol]) == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "vol.tif"),
                               denoise_stack(noisy, 0.1, axes="ZYX", patches="3d", kernel_size_z=3, **FAST), atol=1e-5)
    for z_option in ("--kernel-size-z", "--tile-z"):
        with pytest.raises(ValueError, match="need --patches 3d"):
            run_stack_cli([str(tmp_path / "in.tif"), "-o", str(tmp_path / "x.tif"), "--axes", "ZYX", *CLI_FAST,
                           z_option, "3"])


def test_cli_poisson_gaussian_options(tmp_path, capsys):
    rng = np.random.default_rng(3)
    clean = 5 + 60 * np.stack([smooth_image((48, 48))] * 2)
    noisy = 2 * rng.poisson(clean / 2) + 3 * rng.standard_normal(clean.shape)
    tifffile.imwrite(tmp_path / "pg.tif", noisy.astype(np.float32))
    base = [str(tmp_path / "pg.tif"), "-o", str(tmp_path / "pg_out.tif"), "--axes", "ZYX", *CLI_FAST]
    assert run_stack_cli([*base, "--noise-model", "poisson-gaussian"]) == 0  # parameters estimated, offset too
    assert "estimated gain = " in capsys.readouterr().out
    assert run_stack_cli([*base, "--noise-model", "poisson-gaussian", "--offset", "0"]) == 0  # a known offset
    assert "offset = 0" in capsys.readouterr().out
    out = tifffile.imread(tmp_path / "pg_out.tif")
    assert np.mean((out - clean) ** 2) < 0.3 * np.mean((tifffile.imread(tmp_path / "pg.tif") - clean) ** 2)
    with pytest.raises(ValueError, match="both"):
        run_stack_cli([*base, "--noise-model", "poisson-gaussian", "--gain", "2"])
    for gaussian_options in (["--gain", "2", "--read-noise", "3"], ["--offset", "1"]):
        with pytest.raises(ValueError, match="need --noise-model poisson-gaussian"):
            run_stack_cli([*base, *gaussian_options])
    with pytest.raises(ValueError, match="Gaussian model"):
        run_stack_cli([*base, "--noise-model", "poisson-gaussian", "--sigma", "1"])


def test_default_tile_is_chosen_on_the_middle_plane(zstack, monkeypatch):
    """A stack without ``tile`` takes the side :func:`choose_tile` picks on its middle plane, after
    the variance-stabilising transform where there is one."""
    import napari_ntk_denoise.microscopy.stacks as stacks

    _, noisy = zstack
    seen = []

    def choose(image, channel_axis=None, device=None, overlap=None, **options):
        seen.append(image)
        return 24

    monkeypatch.setattr(stacks, "choose_tile", choose)
    monkeypatch.setattr(stacks, "fixed_tile", lambda *args, **options: None)  # the planes fit in one tile
    opts = {k: v for k, v in FAST.items() if k != "tile"}
    out = denoise_stack(noisy, 0.1, axes="ZYX", **opts)
    np.testing.assert_array_equal(seen[0], noisy[1])
    np.testing.assert_allclose(out, denoise_stack(noisy, 0.1, axes="ZYX", tile=24, **opts), atol=1e-6)
    counts = 100 * np.abs(noisy) + 10
    denoise_stack(counts, axes="ZYX", noise_model="poisson-gaussian", noise=PoissonGaussian(1.0, 1.0), **opts)
    assert np.abs(seen[-1] - counts[1]).max() > 1  # the transformed plane, not the counts
