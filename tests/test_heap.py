"""The filter's runs keep freed memory in the heap and give it back when the last one ends."""

from __future__ import annotations

import gc

import pytest

from conftest import GLIBC, freed_block_returns, resident_bytes
from napari_ntk_denoise.engine._heap import keeping_freed_memory

pytestmark = pytest.mark.skipif(not GLIBC, reason="glibc's mallopt and malloc_trim only")

MIB = 2**20


def test_freed_blocks_stay_in_the_heap_until_the_last_run_ends():
    gc.collect()  # runs of earlier tests left unfinished in reference cycles end here
    assert freed_block_returns() > 200 * MIB  # glibc's default: a large block goes back at once
    with keeping_freed_memory():
        with keeping_freed_memory():  # a nested run (a tile, a pass) keeps what the outer one keeps
            kept = 256 * MIB - freed_block_returns()
        held = resident_bytes()
    assert kept > 200 * MIB
    assert held - resident_bytes() > 200 * MIB
