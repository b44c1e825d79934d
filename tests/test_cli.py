"""Command line: file formats, dtype ranges, printed figures, tiling, noise models, errors, demo."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from skimage import io

from conftest import smooth_image
from napari_ntk_denoise.cli import commands as cli
from napari_ntk_denoise.engine.events import Progress
from napari_ntk_denoise.io.imageio import read_image
from napari_ntk_denoise.microscopy.stacks import denoise_stack

FAST = ["--kernel-size", "5", "--fraction", "0.1", "--rank", "32", "--no-guided", "--quiet"]


def _noisy(scale, dtype, channels=None, seed=0):
    clean = smooth_image((32, 32), channels)
    noisy = clean + 0.1 * np.random.default_rng(seed).standard_normal(clean.shape)
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        return np.clip(np.round(noisy * scale), 0, top).astype(dtype), np.round(clean * scale).astype(dtype)
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
    for key in ("t = ", "sigma = 25.5", "time = ", "PSNR = "):
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


def test_the_guided_filter_is_the_default_and_no_guided_turns_it_off(tmp_path):
    noisy, _ = _noisy(1.0, np.float32)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    fast = [a for a in FAST if a != "--no-guided"]
    for name, extra in (("default", []), ("plain", ["--no-guided"])):
        assert cli.main(["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / f"{name}.tif"), "--sigma", "0.1",
                         *fast, *extra]) == 0
    for name, guided in (("default", True), ("plain", False)):
        expected = denoise_stack(noisy, 0.1, axes="YX", kernel_size=5, fraction=0.1, rank=32, guided=guided)
        np.testing.assert_allclose(tifffile.imread(tmp_path / f"{name}.tif"), expected, atol=1e-5)


def test_guided_kernel_option_reaches_the_guided_stage(tmp_path):
    noisy, _ = _noisy(1.0, np.float32)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    outs = {}
    for kind in ("nngp", "ntk"):
        args = ["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / f"{kind}.tif"), "--sigma", "0.1",
                "--guided-kernel", kind, "--stop", "20", *FAST, "--guided"]  # --guided after FAST's --no-guided
        assert cli.main(args) == 0
        outs[kind] = tifffile.imread(tmp_path / f"{kind}.tif")
    assert not np.allclose(outs["nngp"], outs["ntk"], atol=1e-4)


def test_oracle_stop_uses_the_reference_and_is_refused_where_it_cannot(tmp_path, capsys):
    noisy, clean = _noisy(1.0, np.float32)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    tifffile.imwrite(tmp_path / "c.tif", clean)
    base = ["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / "o.tif"), "--stop", "oracle", *FAST]
    assert cli.main([*base, "--reference", str(tmp_path / "c.tif")]) == 0
    assert "PSNR = " in capsys.readouterr().out
    assert cli.main(base) == 1
    assert "needs --reference" in capsys.readouterr().err
    assert cli.main([*base, "--reference", str(tmp_path / "c.tif"), "--tile", "16", "--overlap", "8"]) == 1
    assert "untiled" in capsys.readouterr().err


def test_large_plane_goes_through_in_tiles(tmp_path, capsys):
    rng = np.random.default_rng(1)
    noisy = (smooth_image((96, 96)) + 0.1 * rng.standard_normal((96, 96))).astype(np.float32)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    args = ["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / "o.tif"), "--tile", "64", "--kernel-size", "5",
            "--fraction", "0.05", "--rank", "32"]
    assert cli.main(args) == 0
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.shape == noisy.shape and out.dtype == np.float32
    captured = capsys.readouterr()
    assert "over 4 tiles" in captured.out and "(estimated)" in captured.out
    assert "tiles" in captured.err and "100%" in captured.err  # the progress bar, a line per 10 % off a terminal


def test_poisson_gaussian_estimate_is_printed_before_denoising(tmp_path, capsys):
    rng = np.random.default_rng(3)
    clean = 5 + 60 * smooth_image((64, 64))
    noisy = (2 * rng.poisson(clean / 2) + 3 * rng.standard_normal(clean.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "pg.tif", noisy)
    base = ["denoise", str(tmp_path / "pg.tif"), "-o", str(tmp_path / "o.tif"), "--noise-model", "poisson-gaussian",
            *FAST]
    assert cli.main(base) == 0
    text = capsys.readouterr().out
    assert text.index("estimated gain = ") < text.index("t = ")
    assert "offset = " in text.splitlines()[0]
    out = tifffile.imread(tmp_path / "o.tif")
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    assert cli.main([*base, "--gain", "2", "--read-noise", "3"]) == 0
    text = capsys.readouterr().out
    assert "estimated" not in text and "gain = 2, read noise = 3, offset = 0" in text
    assert cli.main([*base, "--gain", "2"]) == 1
    assert "both --gain and --read-noise" in capsys.readouterr().err


def test_3d_patches_on_a_zyx_tif(tmp_path, capsys):
    rng = np.random.default_rng(5)
    clean = np.stack([np.roll(smooth_image((32, 40)), 3 * z, axis=1) for z in range(3)])
    noisy = (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "z.tif", noisy)
    args = ["denoise", str(tmp_path / "z.tif"), "-o", str(tmp_path / "o.tif"), "--sigma", "0.1", "--patches", "3d",
            "--kernel-size-z", "3", "--tile", "64", *FAST]
    assert cli.main(args) == 0  # axes guessed: ZYX
    expected = denoise_stack(noisy, 0.1, axes="ZYX", patches="3d", kernel_size_z=3, kernel_size=5, fraction=0.1,
                             rank=32, tile=64, guided=False)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), expected, atol=1e-5)
    flat = ["denoise", str(tmp_path / "z.tif"), "-o", str(tmp_path / "o.tif"), "--kernel-size-z", "3", *FAST]
    assert cli.main(flat) == 1
    assert "need --patches 3d" in capsys.readouterr().err


def test_guess_axes():
    assert cli.guess_axes((32, 40)) == "YX"
    assert cli.guess_axes((32, 40, 3)) == "YXC" and cli.guess_axes((32, 40, 4)) == "YXC"
    assert cli.guess_axes((5, 32, 40)) == "ZYX"
    with pytest.raises(ValueError, match="--axes"):
        cli.guess_axes((2, 5, 32, 40))


#: bad input -> (arguments before -o, part of the error message)
BAD_INPUTS = {
    "text file named .png": (["text.png"], "cannot read"),
    "text file named .tif": (["text.tif"], "cannot read"),
    "truncated PNG": (["truncated.png"], "cannot read"),
    "broken PNG header": (["header.png"], "cannot read"),
    "missing file": (["missing.png"], "no such image"),
    "folder": (["."], "not a file"),
    "NaN values": (["nan.tif"], "NaN"),
    "4-D without --axes": (["4d.tif"], "--axes"),
    "--axes of the wrong length": (["ok.png", "--axes", "ZYX"], "3 letters"),
    "--axes with unknown letters": (["ok.png", "--axes", "QX"], "unknown letters"),
    "--patches 3d without Z": (["ok.png", "--patches", "3d"], "Z axis"),
    "float image to PNG": (["nan.tif", "-o", "o.png"], "only TIFF"),
}


def _write_bad_inputs(folder):
    io.imsave(folder / "ok.png", (smooth_image((32, 32)) * 255).astype(np.uint8), check_contrast=False)
    png = (folder / "ok.png").read_bytes()
    (folder / "text.png").write_text("not an image\n")
    (folder / "text.tif").write_text("not an image\n")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "header.png").write_bytes(png[:30])
    tifffile.imwrite(folder / "nan.tif", np.full((32, 32), np.nan, np.float32))
    tifffile.imwrite(folder / "4d.tif", np.zeros((2, 2, 32, 32), np.float32) + np.arange(32))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_status_1(tmp_path, capsys, monkeypatch, case):
    _write_bad_inputs(tmp_path)
    argv, message = BAD_INPUTS[case]
    monkeypatch.chdir(tmp_path)
    output = [] if "-o" in argv else ["-o", "o.tif"]
    assert cli.main(["denoise", *argv, *output, *FAST]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ntk-denoise: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err and "Warning" not in err
    assert not list(tmp_path.glob("o.*"))


def test_usage_errors_stay_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["denoise", "x.png", "-o", "y.png", "--stop", "soon"])
    assert exc.value.code == 2


@pytest.mark.parametrize("model", ["gaussian", "poisson-gaussian"])
@pytest.mark.parametrize("value,dtype,suffix", [(0, np.uint8, ".png"), (7.5, np.float32, ".tif")])
def test_constant_image_is_written_unchanged(tmp_path, capsys, model, value, dtype, suffix):
    image = np.full((32, 32), value, dtype)
    (io.imsave(tmp_path / f"c{suffix}", image, check_contrast=False) if suffix == ".png"
     else tifffile.imwrite(tmp_path / f"c{suffix}", image))
    assert cli.main(["denoise", str(tmp_path / f"c{suffix}"), "-o", str(tmp_path / f"o{suffix}"), "--noise-model",
                     model, *FAST]) == 0
    out = read_image(tmp_path / f"o{suffix}")
    assert out.dtype == dtype and np.array_equal(out, image)
    captured = capsys.readouterr()
    assert "t = 0 (constant image)" in captured.out and captured.err == ""


def test_engine_warnings_are_single_lines_and_library_ones_dropped(tmp_path, capsys, monkeypatch):
    from napari_ntk_denoise.engine.stopping import DoubtfulStopWarning

    def fake_stack(data, sigma, **kwargs):
        for _ in range(2):  # as every tile does: reported once
            warnings.warn("doubtful stop at t = 3: SURE is smallest\nat the first step", DoubtfulStopWarning,
                          stacklevel=2)  # attributed to the package's caller, like the engine's
        warnings.warn("a library's warning", UserWarning)  # from outside the package: dropped
        np.log(np.zeros(2))  # NumPy arithmetic: silent
        yield Progress("planes", 1, 1, "plane 1/1: t = 3", steps=(3,))
        return data.astype(np.float32)

    monkeypatch.setattr(cli, "iter_denoise_stack", fake_stack)
    noisy, _ = _noisy(1.0, np.float32)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    assert cli.main(["denoise", str(tmp_path / "n.tif"), "-o", str(tmp_path / "o.tif"), "--sigma", "0.1",
                     *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.err == "ntk-denoise: warning: doubtful stop at t = 3: SURE is smallest at the first step\n"
    assert "t = 3" in captured.out


def test_sample_and_demo(tmp_path, capsys, monkeypatch):
    assert cli.main(["sample", "camera", "-o", str(tmp_path / "cam.png"), "--clean", str(tmp_path / "cam0.png")]) == 0
    assert read_image(tmp_path / "cam.png").shape == (512, 512)
    small = smooth_image((32, 32), 3)

    def fake_sample(name, sigma, seed):
        noisy = small + sigma * np.random.default_rng(seed).standard_normal(small.shape)
        return np.clip(noisy, 0, 1).astype(np.float32), small

    monkeypatch.setattr(cli, "noisy_sample", fake_sample)
    assert cli.main(["demo", "-o", str(tmp_path / "demo"), *FAST]) == 0
    for name in ("noisy.png", "denoised.png", "side_by_side.png", "clean.png"):
        assert (tmp_path / "demo" / name).exists()
    assert read_image(tmp_path / "demo" / "side_by_side.png").shape == (32, 64, 3)
    text = capsys.readouterr().out
    assert "PSNR = " in text and "t = " in text


def test_grey_stored_as_rgb_is_denoised_as_one_plane(tmp_path, capsys):
    """A grey plane written into every channel of an RGB file comes back as that plane denoised
    once, in every channel; PSNR is on the reference's scale."""
    grey, clean = _noisy(255, np.uint8)
    io.imsave(tmp_path / "rgb.png", np.repeat(grey[..., None], 3, axis=-1), check_contrast=False)
    io.imsave(tmp_path / "ref.png", np.repeat(clean[..., None], 3, axis=-1),
              check_contrast=False)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    assert cli.main(["denoise", str(tmp_path / "rgb.png"), "-o", str(tmp_path / "o.png"), "--sigma", "25",
                     "--reference", str(tmp_path / "ref.png"), *FAST]) == 0
    assert cli.main(["denoise", str(tmp_path / "grey.tif"), "-o", str(tmp_path / "g.tif"), "--sigma", "25", *FAST]) == 0
    out, single = read_image(tmp_path / "o.png"), read_image(tmp_path / "g.tif")
    assert out.shape == (*grey.shape, 3) and all(np.array_equal(out[..., c], single) for c in range(3))
    psnr_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PSNR")][0]
    assert float(psnr_line.split()[2]) > 25


def test_psnr_of_float_references_on_their_scale():
    ref = np.linspace(0, 200, 64, dtype=np.float32)
    assert cli._data_range(ref) == 255.0 and cli._data_range(ref / 255) == 1.0
    assert cli._data_range(ref.astype(np.uint16)) == 65535.0
    assert cli._psnr(ref + 1, ref) == pytest.approx(20 * np.log10(255), abs=1e-3)
