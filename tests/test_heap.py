"""The filter's runs keep freed memory in the heap and give it back when the last one ends."""

from __future__ import annotations

import os
import platform
import sys

import pytest
import torch

from napari_ntk_denoise.engine._heap import keeping_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt and malloc_trim only")

MIB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_blocks_stay_in_the_heap_until_the_last_run_ends():
    with keeping_freed_memory():
        with keeping_freed_memory():  # a nested run (a tile, a pass) keeps what the outer one keeps
            block = torch.empty(256 * MIB // 4, dtype=torch.float32)
            block.fill_(1.0)  # every page resident
            held = _rss()
            del block
        freed_in_run = held - _rss()
    freed_after = held - _rss()
    assert freed_in_run < 32 * MIB
    assert freed_after > 200 * MIB
