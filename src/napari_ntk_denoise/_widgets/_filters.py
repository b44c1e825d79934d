"""The low-rank filters computed in this session, shared by the NTK Filter and the Inspector.

A filter depends on the image plane and on the parameters that build the kernel; the Inspector
reuses one that the NTK Filter (or an earlier inspection) computed with the same parameters
instead of computing it again.  Filters are large (``H W k`` values), so only the latest few are
kept, and an entry dies with its layer.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

from napari_ntk_denoise import LowRankFilter

__all__ = ["FILTER_PARAMS", "FilterCache", "filters"]

#: Parameters that determine a filter (besides the image plane).
FILTER_PARAMS = ("depth", "kernel_size", "kernel", "input", "fraction", "rank", "adaptive", "seed")


class FilterCache:
    """The most recent filters, keyed by layer, plane index and kernel parameters.

    Parameters
    ----------
    size : int
        Number of filters kept.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._store: OrderedDict[tuple, tuple[weakref.ref, LowRankFilter]] = OrderedDict()

    @staticmethod
    def _key(layer: object, index: tuple[int, ...], params: dict[str, Any]) -> tuple:
        return (id(layer), tuple(index), tuple(params[k] for k in FILTER_PARAMS))

    def get(self, layer: object, index: tuple[int, ...], params: dict[str, Any]) -> LowRankFilter | None:
        """The filter of ``layer``'s plane ``index`` built with ``params``, if kept."""
        key = self._key(layer, index, params)
        entry = self._store.get(key)
        if entry is None or entry[0]() is not layer:
            return None
        self._store.move_to_end(key)
        return entry[1]

    def put(self, layer: object, index: tuple[int, ...], params: dict[str, Any], filt: LowRankFilter) -> None:
        """Keep ``filt``, forgetting the oldest filter beyond :attr:`size`."""
        key = self._key(layer, index, params)
        self._store[key] = (weakref.ref(layer, lambda _ref, k=key: self._store.pop(k, None)), filt)
        self._store.move_to_end(key)
        while len(self._store) > self.size:
            self._store.popitem(last=False)


#: The session's cache.
filters = FilterCache()
