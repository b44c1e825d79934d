"""From napari layers to engine inputs and back: planes of 2-D, RGB(A) and nD image layers.

An :class:`ImageSource` reads an Image layer plane by plane (the last two axes, plus the colour
axis of an RGB layer), never modifying the layer; :func:`iter_planes` runs one engine generator
per plane and tags its events with the plane's index; :meth:`ImageSource.output_kwargs` gives the
layer keyword arguments that carry the source's geometry and display (colormap, contrast limits)
over to a result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from napari_ntk_denoise.microscopy.tiling import spread_indices

if TYPE_CHECKING:
    import napari

__all__ = [
    "ImageSource", "InputError", "PlaneDone", "PlaneEvent", "iter_planes", "put_layer", "reference_from_layer",
    "source_from_layer",
]

#: Layer attributes that place a result exactly over its source.
GEOMETRY = ("scale", "translate", "rotate", "shear", "units", "axis_labels")

R = TypeVar("R")
Index = tuple[int, ...]


class InputError(ValueError):
    """A layer that the widgets cannot process; the message is meant for the user."""


@dataclass(frozen=True)
class PlaneEvent:
    """An engine event of one plane of a stack.

    Attributes
    ----------
    index : tuple of int
        Index of the plane along the stack's leading axes (``()`` for a single image).
    position : int
        Order of the plane in the run, from 0.
    event : object
        The engine's event (``Progress``, ``TwicingStep``, ``DIPStep``, ...).
    """

    index: Index
    position: int
    event: object


@dataclass(frozen=True)
class PlaneDone:
    """Event of :func:`iter_planes` (with ``announce=True``) when a plane's generator has returned.

    Attributes
    ----------
    value : object
        The generator's return value.
    """

    value: object


@dataclass(frozen=True)
class ImageSource:
    """An Image layer seen as a stack of planes for the engine.

    Attributes
    ----------
    layer : napari.layers.Image
        The source layer (read only).
    rgb : bool
        Whether the last axis holds colour (RGB or RGBA) channels.
    volume : bool
        Whether a unit of work is a Z-Y-X volume (the axis before Y is Z) rather than a Y-X plane.
    """

    layer: napari.layers.Image
    rgb: bool
    volume: bool = False

    @property
    def name(self) -> str:
        """Name of the layer."""
        return str(self.layer.name)

    @property
    def channel_axis(self) -> int | None:
        """Colour axis of a plane for the engine (``-1`` for RGB, ``None`` for gray)."""
        return -1 if self.rgb else None

    @property
    def plane_ndim(self) -> int:
        """Dimensions of a plane: 2 (gray) or 3 (colour last), one more for a volume."""
        return (3 if self.rgb else 2) + self.volume

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the layer's data."""
        return tuple(int(s) for s in self.layer.data.shape)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        """Shape of the leading (Z, T, channel, ...) axes."""
        return self.shape[: len(self.shape) - self.plane_ndim]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(H, W)`` of a plane, or ``(Z, H, W)`` of a volume."""
        return self.shape[len(self.stack_shape) :][: 2 + self.volume]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of a plane."""
        h, w = self.spatial_shape[-2:]
        return h, w

    @property
    def indices(self) -> list[Index]:
        """Indices of all planes, in order."""
        return list(np.ndindex(*self.stack_shape))

    def plane(self, index: Index) -> np.ndarray:
        """A float32 copy of one plane (RGB without alpha), safe to hand to another thread."""
        plane = np.array(self.layer.data[index], dtype=np.float32)
        return plane[..., :3] if self.rgb else plane

    def sample_planes(self, count: int = 3) -> list[np.ndarray]:
        """Up to ``count`` evenly spaced planes (float32 copies), e.g. to estimate noise parameters."""
        indices = self.indices
        return [self.plane(indices[p]) for p in spread_indices(len(indices), count)]

    def current_index(self, viewer: napari.viewer.Viewer) -> Index:
        """Index of the plane that the viewer shows now."""
        if not self.stack_shape:
            return ()
        coords = np.asarray(self.layer.world_to_data(viewer.dims.point))[: len(self.stack_shape)]
        return tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(coords, self.stack_shape))

    def empty_output(self) -> np.ndarray:
        """Float32 array of the layer's shape for results; alpha copied over for RGBA."""
        out = np.zeros(self.shape, np.float32)
        if self.rgb and self.shape[-1] == 4:
            out[..., 3] = np.asarray(self.layer.data[..., 3], dtype=np.float32)
        return out

    def store(self, out: np.ndarray, index: Index, plane: np.ndarray) -> None:
        """Write a result plane (gray or RGB) into ``out`` from :meth:`empty_output`."""
        if self.rgb:
            out[index][..., :3] = plane
        else:
            out[index] = plane

    def output_kwargs(self, tag: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``viewer.add_image`` of a result of this layer: its geometry, its
        contrast limits and (gray layers) its colormap, so that the result looks like the source.

        Parameters
        ----------
        tag : str
            Appended to the source's name in brackets, e.g. ``"camera [NTK]"``.
        metadata : dict
            The result's metadata.
        """
        kwargs = {k: getattr(self.layer, k) for k in GEOMETRY}
        kwargs.update(
            name=f"{self.name} [{tag}]",
            rgb=self.rgb,
            contrast_limits=tuple(self.layer.contrast_limits),
            metadata={"source": self.name, **metadata},
        )
        if not self.rgb:
            kwargs["colormap"] = self.layer.colormap
        return kwargs

    def plane_kwargs(self, tag: str, metadata: dict[str, Any], leading: int = 0) -> dict[str, Any]:
        """Keyword arguments for a gray per-plane result (filter weights, eigenimages).

        Parameters
        ----------
        tag : str
            Appended to the source's name in brackets.
        metadata : dict
            The result's metadata.
        leading : int
            Number of extra leading axes of the result (1 for a stack of eigenimages).
        """
        scale = np.asarray(self.layer.scale)[-2:]
        translate = np.asarray(self.layer.translate)[-2:]
        return {
            "name": f"{self.name} [{tag}]",
            "scale": (1.0,) * leading + tuple(scale),
            "translate": (0.0,) * leading + tuple(translate),
            "metadata": {"source": self.name, **metadata},
        }


def _finite(source: ImageSource, viewer: napari.viewer.Viewer) -> bool:
    """Whether the image holds no NaN or infinity: every value of an in-memory array; the plane on
    screen of a lazy (dask) one, whose other planes the engine checks as it reads them."""
    data = source.layer.data
    if not np.issubdtype(data.dtype, np.floating):
        return True
    if isinstance(data, np.ndarray):  # min and max carry NaN and infinities, without a d-sized mask
        return bool(np.isfinite(data.min()) and np.isfinite(data.max()))
    return bool(np.isfinite(source.plane(source.current_index(viewer))).all())


def source_from_layer(layer: object, viewer: napari.viewer.Viewer, volume: bool = False) -> ImageSource:
    """Check a layer chosen in a widget and view it as an :class:`ImageSource`.

    Parameters
    ----------
    layer : napari.layers.Layer or None
        The chosen layer.
    viewer : napari.viewer.Viewer
        The viewer, to explain what it holds when no image layer is chosen.
    volume : bool
        View it as Z-Y-X volumes (the axis before Y is Z) instead of Y-X planes.

    Raises
    ------
    InputError
        With a message for the user: no layer, not an image, multiscale, no Z axis for 3-D patches; or
        one message naming every problem of the image (too small, NaN or infinite values).
    """
    from napari.layers import Image

    if layer is None:
        kinds = sorted({type(lay).__name__ for lay in viewer.layers})
        if kinds:
            raise InputError(
                f"No image layer to process: the viewer holds only {', '.join(kinds)} layers. "
                "Open an image (or File > Open Sample > NTK Denoise)."
            )
        raise InputError("The viewer is empty: open an image first (or File > Open Sample > NTK Denoise).")
    if not isinstance(layer, Image):
        raise InputError(f"'{layer.name}' is a {type(layer).__name__} layer; choose an Image layer.")
    if layer.multiscale:
        raise InputError(f"'{layer.name}' is multiscale; open its full-resolution level as a plain image.")
    rgb = bool(layer.rgb)
    data = layer.data
    if np.iscomplexobj(data) or data.dtype == bool:
        raise InputError(f"'{layer.name}' has {data.dtype} values; a real-valued image is needed.")
    if volume and data.ndim < 3 + rgb:
        raise InputError(f"'{layer.name}' has no Z axis: 3-D patches need a stack of planes.")
    src = ImageSource(layer=layer, rgb=rgb, volume=volume)
    problems = []
    if min(src.plane_shape) < 8:
        problems.append(f"its planes are {src.plane_shape[0]} x {src.plane_shape[1]} pixels, under the 8 x 8 needed")
    if not _finite(src, viewer):
        problems.append("it contains NaN or infinite values (replace them, e.g. by the image's median)")
    if problems:
        raise InputError(f"Cannot process '{layer.name}': " + "; ".join(problems) + ".")
    return src


def reference_from_layer(
    layer: object, source: ImageSource, viewer: napari.viewer.Viewer
) -> ImageSource | None:
    """Check an optional reference (clean) layer against the image to process.

    Parameters
    ----------
    layer : napari.layers.Image or None
        The chosen reference, or ``None``.
    source : ImageSource
        The image to process.
    viewer : napari.viewer.Viewer
        The viewer.

    Raises
    ------
    InputError
        If the reference is the source itself or its planes differ in shape or colour.
    """
    if layer is None:
        return None
    reference = source_from_layer(layer, viewer, source.volume)
    if reference.layer is source.layer:
        raise InputError("The reference must be a clean image, not the image being processed.")
    if (reference.rgb, reference.stack_shape, reference.plane_shape) != (
        source.rgb, source.stack_shape, source.plane_shape
    ):
        raise InputError(f"Reference '{reference.name}' has shape {reference.shape}, "
                         f"but '{source.name}' has {source.shape}.")
    return reference


def put_layer(
    viewer: napari.viewer.Viewer, layer: napari.layers.Image | None, data: np.ndarray, kwargs: dict[str, Any],
    **style: Any,
) -> napari.layers.Image:
    """Add a result layer once, then update it in place.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Where the layer lives.
    layer : napari.layers.Image or None
        The layer from an earlier call; a new one is added if it is ``None`` or was removed.
    data : numpy.ndarray
        The layer's data; the layer gets its own C-contiguous copy, so that the buffer it draws from
        is never written to or shared with the running computation or another layer.
    kwargs : dict
        ``add_image`` keyword arguments; of these only ``metadata`` is updated later, so that the
        user's display settings (contrast, colormap) survive updates.
    **style
        Display settings applied at every call.

    Returns
    -------
    napari.layers.Image
        The layer shown.
    """
    data = np.array(data, copy=True, order="C")  # owned by the layer: later writes and runs never touch it
    if layer is None or layer not in viewer.layers:
        return viewer.add_image(data, **{**kwargs, **style})
    layer.data = data
    layer.metadata = kwargs["metadata"]
    for key, value in style.items():
        setattr(layer, key, value)
    return layer


def iter_planes(
    source: ImageSource,
    run_plane: Callable[[np.ndarray, Index], Generator[object, None, R]],
    indices: list[Index] | None = None,
    announce: bool = False,
) -> Generator[PlaneEvent, None, dict[Index, R]]:
    """Run an engine generator on each plane, yielding its events tagged with the plane.

    Parameters
    ----------
    source : ImageSource
        The stack.
    run_plane : callable
        ``run_plane(plane, index)`` returns the engine generator of one plane.
    indices : list of tuple of int, optional
        Planes to process (all by default).
    announce : bool
        Also yield a :class:`PlaneDone` event with each plane's result as soon as it is finished
        (to stream finished planes into a layer).

    Yields
    ------
    PlaneEvent

    Returns
    -------
    dict
        Each plane's generator return value, by plane index.
    """
    results: dict[Index, R] = {}
    for position, index in enumerate(source.indices if indices is None else indices):
        gen = run_plane(source.plane(index), index)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                results[index] = stop.value
                if announce:
                    yield PlaneEvent(index, position, PlaneDone(stop.value))
                break
            yield PlaneEvent(index, position, event)
    return results
