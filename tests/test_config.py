"""The filter's options: one definition that the engine, the command line and the widgets share."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_ntk_denoise import denoise_ntk
from napari_ntk_denoise.cli._options import add_ntk_options, ntk_kwargs
from napari_ntk_denoise.engine.config import DEFAULT_OPTIONS, OPTION_NAMES, FilterConfig
from napari_ntk_denoise.microscopy.tiling import check_tiled_request


def test_options_round_trip_and_defaults_in_one_place():
    cfg = FilterConfig.from_options(depth=3, kernel_size=5, volume=True, kernel_size_z=3, rank=64, guided=True)
    assert FilterConfig.from_options(**cfg.options()) == cfg
    assert cfg.architecture.sizes == (3, 5, 5) and cfg.nystrom.rank == 64 and cfg.guided.enabled
    assert cfg.stage_kernel.kind == "nngp" and cfg.architecture.kind == "ntk"  # the guided kernel, stage 1 unchanged
    assert FilterConfig().options() == DEFAULT_OPTIONS and set(OPTION_NAMES) == set(DEFAULT_OPTIONS)


def test_command_line_defaults_are_the_engines():
    p = argparse.ArgumentParser()
    add_ntk_options(p)
    kw = ntk_kwargs(p.parse_args([]))
    assert kw.pop("device") is None
    assert {**DEFAULT_OPTIONS, **kw} == DEFAULT_OPTIONS
    assert ntk_kwargs(p.parse_args(["--no-adaptive"]))["adaptive"] is False


@pytest.mark.parametrize("options, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(fraction=1.5), "fraction must be in"),
    (dict(stop="never"), "stop must be"),
    (dict(guided_kernel="rbf"), "guided_kernel must be"),
    (dict(guided_stage_share=0.0), "guided_stage_share must be in"),
    (dict(guided_pilot_share=1.5), "guided_pilot_share must be in"),
    (dict(guided_pilot_draws=3), "guided_pilot_draws must be 1 or 2"),
    (dict(guided_pilot_draws=True), "guided_pilot_draws must be 1 or 2"),
    (dict(guided_pilot_draws=1.5), "guided_pilot_draws must be 1 or 2"),
    (dict(input="video"), "input must be"),
    (dict(kernel_size=4), "kernel_size must be a positive odd integer"),
    (dict(kernel_size_z=3), "kernel_size_z needs ndim=3"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        FilterConfig.from_options(**options)
    with pytest.raises(ValueError, match=message):  # and by the engine, before any work
        denoise_ntk(np.zeros((32, 32), np.float32), 0.1, **options)


def test_unknown_option_names_the_known_ones():
    with pytest.raises(TypeError, match="unknown option.*'rnak'.*'rank'"):
        denoise_ntk(np.zeros((32, 32), np.float32), 0.1, rnak=8)


def test_memory_guard_counts_the_same_passes_tiled_and_untiled(monkeypatch):
    """Guided with MC-SURE holds three passes (the filter, its perturbed twin, the first stage's),
    plain two; the whole-image and the tiled guard count them alike."""
    seen = []
    import napari_ntk_denoise.engine.problem as problem
    import napari_ntk_denoise.microscopy.tiling as tiling

    monkeypatch.setattr(problem, "check_memory", lambda need, *a, **k: seen.append(need))
    monkeypatch.setattr(tiling, "check_memory", lambda need, *a, **k: seen.append(need))
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for guided in (False, True):
        problem.setup(image, None, FilterConfig.from_options(guided=guided), "cpu",
                      FilterConfig.from_options(guided=guided).memory_passes)
        check_tiled_request((64, 64, 1), tile=64, overlap=42, device="cpu", guided=guided)
    plain, plain_tiled, guided, guided_tiled = seen
    assert guided / plain == pytest.approx(1.5) and guided_tiled - plain_tiled == pytest.approx(guided - plain)
