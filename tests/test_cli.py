"""Command line: file formats, dtype ranges, printed figures, demo."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import io

from conftest import smooth_image
from napari_ntk_denoise import cli
from napari_ntk_denoise.imageio import read_image

FAST = ["--kernel-size", "5", "--fraction", "0.1", "--rank", "32", "--quiet"]


def _noisy(scale, dtype, channels=None, seed=0):
    clean = smooth_image((32, 32), channels)
    noisy = clean + 0.1 * np.random.default_rng(seed).standard_normal(clean.shape)
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.round(noisy * scale), 0, np.iinfo(dtype).max).astype(dtype), np.round(clean * scale).astype(dtype)
    return (noisy * scale).astype(dtype), (clean * scale).astype(dtype)


def test_png_uint8_rgb_roundtrip_prints_figures(tmp_path, capsys):
    noisy, clean = _noisy(255, np.uint8, channels=3)
    io.imsave(tmp_path / "n.png", noisy, check_contrast=False)
    io.imsave(tmp_path / "c.png", clean, check_contrast=False)
    rc = cli.main(["denoise", str(tmp_path / "n.png"), "-o", str(tmp_path / "o.png"), "--sigma", "25.5",
                   "--reference", str(tmp_path / "c.png"), *FAST])
    assert rc == 0
    out = read_image(tmp_path / "o.png")
    assert out.dtype == np.uint8 and out.shape == noisy.shape
    text = capsys.readouterr().out
    for key in ("t = ", "sigma = 25.5", "SURE for data clipped at 0 and 255", "time = ", "PSNR = "):
        assert key in text
    psnr_out = float(text.split("PSNR = ")[1].split()[0])
    mse_noisy = np.mean((noisy.astype(float) - clean) ** 2)
    assert psnr_out > 10 * np.log10(255**2 / mse_noisy) + 2


@pytest.mark.parametrize("dtype,scale", [(np.uint16, 4000.0), (np.float32, 1.0)])
def test_tiff_keeps_dtype_and_range(tmp_path, capsys, dtype, scale):
    noisy, _ = _noisy(scale, dtype)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    assert cli.main(["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / "o.tif"), "--stop", "20", *FAST]) == 0
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.dtype == dtype and out.shape == noisy.shape
    assert 0.5 * scale * 0.2 < float(out.mean()) < 1.5 * scale
    assert "(estimated)" in capsys.readouterr().out


def test_guided_kernel_option_reaches_the_guided_stage(tmp_path):
    noisy, _ = _noisy(1.0, np.float32)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    outs = {}
    for kind in ("nngp", "ntk"):
        args = ["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / f"{kind}.tif"), "--sigma", "0.1", "--guided",
                "--guided-kernel", kind, "--stop", "20", *FAST]
        assert cli.main(args) == 0
        outs[kind] = tifffile.imread(tmp_path / f"{kind}.tif")
    assert not np.allclose(outs["nngp"], outs["ntk"], atol=1e-4)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "bad.tif", np.full((32, 32), np.nan, np.float32))
    assert cli.main(["denoise", str(tmp_path / "bad.tif"), "-o", str(tmp_path / "o.tif"), *FAST]) == 2
    assert "NaN" in capsys.readouterr().err
    assert cli.main(["denoise", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]) == 2
    with pytest.raises(SystemExit):
        cli.main(["denoise", "x.png", "-o", "y.png", "--stop", "soon"])


def test_sample_and_demo(tmp_path, capsys, monkeypatch):
    assert cli.main(["sample", "camera", "-o", str(tmp_path / "cam.png"), "--clean", str(tmp_path / "cam0.png")]) == 0
    assert read_image(tmp_path / "cam.png").shape == (512, 512)
    small = smooth_image((32, 32), 3)
    monkeypatch.setattr(cli, "noisy_sample", lambda name, sigma, seed: (
        np.clip(small + sigma * np.random.default_rng(seed).standard_normal(small.shape), 0, 1).astype(np.float32), small))
    assert cli.main(["demo", "-o", str(tmp_path / "demo"), *FAST]) == 0
    for name in ("noisy.png", "denoised.png", "side_by_side.png", "clean.png"):
        assert (tmp_path / "demo" / name).exists()
    assert read_image(tmp_path / "demo" / "side_by_side.png").shape == (32, 64, 3)
    text = capsys.readouterr().out
    assert "PSNR = " in text and "t = " in text
