"""``ntk-denoise bench`` end to end on two tiny images, and the benchmark engine's checks."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math

import numpy as np
import pytest
from skimage import io as skio

from conftest import smooth_image
from napari_ntk_denoise import bench
from napari_ntk_denoise.cli import bench as bench_cli
from napari_ntk_denoise.engine.events import drain

FAST_NTK = ["--kernel-size", "5", "--fraction", "0.1", "--rank", "32"]


def _bench(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv])
    err = io.StringIO()
    return args.func(args, stream=err), err.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Two 32 x 32 clean images: a grayscale PNG and an RGB PNG (and a file that is not an image)."""
    d = tmp_path / "clean"
    d.mkdir()
    skio.imsave(d / "a.png", np.round(255 * smooth_image((32, 32))).astype(np.uint8), check_contrast=False)
    skio.imsave(d / "b.png", np.round(255 * smooth_image((32, 32), channels=3, seed=1)).astype(np.uint8),
                check_contrast=False)
    (d / "MANIFEST.txt").write_text("not an image\n")
    return d


def test_bench_end_to_end_json_table_and_plots(folder, tmp_path, capsys):
    out = tmp_path / "res" / "run.json"
    rc, err = _bench(["--images", str(folder), "--sigma", "25", "--methods", "nystrom-image,nlm", "--json", str(out),
                      "--seed", "3", *FAST_NTK])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"machine", "settings", "results"}
    assert doc["machine"]["versions"]["torch"] and doc["machine"]["versions"]["numpy"]
    assert doc["settings"]["sigma"] == 25 and doc["settings"]["seed"] == 3 and doc["settings"]["ntk"]["rank"] == 32
    results = doc["results"]
    assert [(r["image"], r["method"]) for r in results] == [("a", "nystrom-image"), ("a", "nlm"),
                                                           ("b", "nystrom-image"), ("b", "nlm")]
    keys = {"image", "method", "psnr", "ssim", "stop", "t", "seconds", "device"}
    for r in results:
        assert keys <= set(r)
        assert math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 and r["seconds"] >= 0
        # noise of sigma 25/255 gives about 20 dB; both denoisers must do clearly better
        assert 19 < r["noisy_psnr"] < 22
        assert r["psnr"] > r["noisy_psnr"] + 2, r
    ntk = [r for r in results if r["method"] == "nystrom-image"]
    assert all(r["stop"] == "oracle" and r["t"] >= 1 for r in ntk)
    table = capsys.readouterr().out
    assert table == (out.with_suffix(".md")).read_text()
    assert "| image | noisy | nystrom-image | nlm |" in table
    mean_ntk = np.mean([r["psnr"] for r in ntk])
    assert f"**{mean_ntk:.2f}**" in table
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: the plots are not written")
    for image in ("a", "b"):
        png = out.with_name(f"run_{image}_curves.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_noise_for_every_method_and_protocol(folder):
    settings = bench.BenchSettings(sigma=25, seed=5, ntk={"kernel_size": 5, "fraction": 0.1, "rank": 16})
    paths = bench.list_images(folder)
    assert [p.name for p in paths] == ["a.png", "b.png"]
    clean, axis = bench.load_clean(paths[1])
    assert axis == -1 and clean.dtype == np.float32 and clean.max() <= 1
    noisy = bench.add_noise(clean, 25 / 255, 5)
    residual = noisy - clean
    inside = (noisy > 0) & (noisy < 1)
    assert abs(residual[inside].std() * 255 - 25) < 2.5
    run = bench.BenchRun()
    run.records.append(bench._score("nlm", bench.METHODS["nlm"], "b", noisy, clean, axis, settings)[0])
    assert run.records[0].noisy_psnr == pytest.approx(bench.psnr(noisy, clean, 1.0))


def test_crop_limit_unknown_method_and_missing_bm3d(folder, monkeypatch):
    clean, _ = bench.load_clean(folder / "a.png", crop=16)
    assert clean.shape == (16, 16)
    with pytest.raises(ValueError, match="larger"):
        bench.load_clean(folder / "a.png", crop=64)
    assert len(bench.list_images(folder, limit=1)) == 1
    settings = bench.BenchSettings()
    with pytest.raises(ValueError, match="unknown method"):
        next(bench.iter_bench(bench.list_images(folder), ["nystrom-magic"], settings))
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    gen = bench.iter_bench(bench.list_images(folder), ["bm3d"], settings)
    skip = next(gen)
    assert isinstance(skip, bench.Skip) and "pip install bm3d" in skip.reason
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value.records == [] and stop.value.value.skipped == [skip]


def test_each_dip_method_trains_what_its_name_says(folder, monkeypatch):
    """``{optimizer}-{arch}-{input}`` (Table 1's names) trains that network, that way, from that input."""
    trained = []
    real = bench.train_dip

    def recording(noisy, **kw):
        result = real(noisy, **kw)
        trained.append((result.params["optimizer"], result.params["arch"], result.params["input"]))
        return result

    monkeypatch.setattr(bench, "train_dip", recording)
    names = [m for m in bench.METHODS if m.count("-") == 2 and not m.startswith("nystrom")]
    assert len(names) == 16
    settings = bench.BenchSettings(stop="oracle", max_iters=1, every=1, width=2, seed=0)
    drain(bench.iter_bench(bench.list_images(folder, limit=1), names, settings))
    assert trained == [tuple(name.split("-")) for name in names]


@pytest.mark.parametrize("stop, expected", [("oracle", {"nystrom-image": "oracle", "gd-vanilla-image": "oracle",
                                                        "adam-vanilla-noise": "oracle"}),
                                            ("sure", {"nystrom-image": "sure", "gd-vanilla-image": "sure",
                                                      "adam-vanilla-noise": "holdout"})])
def test_stopping_rule_per_method(folder, stop, expected):
    settings = bench.BenchSettings(stop=stop, max_iters=6, every=2, width=8, seed=1,
                                   ntk={"kernel_size": 5, "fraction": 0.1, "rank": 16})
    run = drain(bench.iter_bench(bench.list_images(folder, limit=1), list(expected), settings))
    assert {r.method: r.stop for r in run.records} == expected
    for r in run.records:
        assert r.t is not None and math.isfinite(r.psnr)
        if r.method != "nystrom-image":
            assert 0 <= r.t <= 6
    steps, values = run.curves["a"]["gd-vanilla-image"]
    assert list(steps) == [0, 1, 2, 4, 6] and np.isfinite(values).all()
    dip = [r for r in run.records if r.method != "nystrom-image"]
    for r in dip:
        steps, values = run.curves["a"][r.method]
        assert r.oracle_psnr == np.nanmax(values) >= values[list(steps).index(r.t)]
    table = bench.markdown_table(run.records)
    assert ("best iteration" in table) == (stop == "sure")
    assert "nan" not in table  # the one-hidden-layer networks have no hidden-layer change: "–"


def test_figure4_trains_the_ntk_autoencoder_from_noise_at_each_width(folder, tmp_path, monkeypatch):
    """``--figure4``: GD and Adam on one network design per width, weight changes recorded and plotted."""
    trained = []
    real = bench.train_dip

    def recording(noisy, **kw):
        result = real(noisy, **kw)
        p = result.params
        trained.append((p["optimizer"], p["arch"], p["input"], p["style"], p["width"]))
        return result

    monkeypatch.setattr(bench, "train_dip", recording)
    out = tmp_path / "fig4.json"
    rc, err = _bench(["--images", str(folder), "--limit", "1", "--figure4", "--widths", "2,8", "--max-iters", "4",
                      "--every", "2", "--crop", "32", "--json", str(out)])
    assert rc == 0 and "c=8" in err
    assert trained == [(o, "ae", "noise", "ntk", c) for c in (2, 8) for o in ("gd", "adam")]
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["width"]) for r in results] == [("gd", 2), ("adam", 2), ("gd", 8), ("adam", 8)]
    assert all(r["weight_change_l2"] > 0 and r["weight_change_max"] > 0 for r in results)
    table = out.with_suffix(".md").read_text()
    assert "| image | noisy | gd c=2 | adam c=2 | gd c=8 | adam c=8 |" in table and "‖w − w⁰‖₂" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_name("fig4_figure4.png").read_bytes()[:4] == b"\x89PNG"


def test_figure4_and_figure6_exclude_each_other(folder, tmp_path):
    with pytest.raises(SystemExit):
        _bench(["--images", str(folder), "--figure4", "--figure6", "--json", str(tmp_path / "x.json")])


def test_figure6_plot_takes_images_missing_a_depth(tmp_path):
    """The per-image lines of the Figure-6 plot leave a gap where an image lacks a depth."""
    records = [bench.Record(image=i, method=m, psnr=20.0 + d + (i == "b"), ssim=0.5, stop="oracle", t=1,
                            seconds=0.1, device="cpu", noisy_psnr=18.0, depth=d)
               for i in "ab" for m in ("nystrom", "gd") for d in (2, 3, 4) if (i, d) != ("b", 3)]
    out = tmp_path / "fig6.png"
    bench.plot_figure6(out, records)
    assert out.read_bytes()[:4] == b"\x89PNG"
