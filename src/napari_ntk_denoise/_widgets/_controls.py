"""Controls shared by the widgets: the NTK filter's settings and the device, in plain words.

Defaults are the engine's (:data:`napari_ntk_denoise.engine.config.DEFAULT_OPTIONS`), so that the
widgets start where the engine and the command line do.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox

from napari_ntk_denoise.engine.config import DEFAULT_OPTIONS

__all__ = ["DEVICE_TIP", "FilterControls", "device_choices", "device_control", "engine_default"]

DEVICE_TIP = ("Where the computation runs: auto uses the GPU (CUDA) when there is one, else the CPU. "
              "Results agree within float precision.")

#: The two kernels, in words, and the engine's names for them.
KERNEL_CHOICES = (("every layer trained (NTK)", "ntk"), ("last layer only (NNGP)", "nngp"))


def engine_default(name: str) -> Any:
    """Default of the NTK filter's option ``name``."""
    return DEFAULT_OPTIONS[name]


def device_choices() -> list[str]:
    """Devices offered to the user: ``auto`` (CUDA when available), ``cpu``, and ``cuda`` if present."""
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_control() -> ComboBox:
    """The device picker (``auto``, ``cpu``, and ``cuda`` when present)."""
    return ComboBox(label="device", choices=device_choices(), tooltip=DEVICE_TIP)


def device_value(box: ComboBox) -> str | None:
    """The engine's ``device`` argument of a :func:`device_control` (``None`` for auto)."""
    return None if box.value == "auto" else box.value


class FilterControls:
    """The network and Nyström settings of an NTK filter, as widgets.

    Attributes
    ----------
    widgets : list of magicgui widgets
        Depth, patch size, kernel, sampled pixels, eigenimages kept, adaptive set, device.
    """

    def __init__(self) -> None:
        self.depth = SpinBox(
            label="network depth", value=engine_default("depth"), min=2, max=8,
            tooltip="Weight layers of the CNN whose filter is used. 2 is the fastest and usually the best; "
            "deeper networks smooth a little more.")
        self.kernel_size = SpinBox(
            label="patch size (px)", value=engine_default("kernel_size"), min=1, max=31, step=2,
            tooltip="Side of the convolution, in pixels (odd): pixels are compared by the patches around them. "
            "Larger: more context and more smoothing of fine texture; smaller: faster.")
        self.kernel = ComboBox(
            label="kernel", choices=KERNEL_CHOICES, value=engine_default("kernel"),
            tooltip="Which network's filter: every layer trained (the neural tangent kernel, NTK) or only the "
            "output layer (NNGP, paper eq. 12). NTK keeps edges a little better. The two-stage filter "
            "uses its second-stage kernel instead, in both stages.")
        self.fraction = FloatSpinBox(
            label="sampled pixels", value=engine_default("fraction"), min=0.001, max=1.0, step=0.005,
            tooltip="Fraction of pixels whose similarities to every pixel are computed (the Nyström anchors). "
            "More: a filter closer to the exact one, slower and more memory.")
        self.rank = SpinBox(
            label="eigenimages kept", value=engine_default("rank"), min=1, max=8192,
            tooltip="Eigenimages of the filter kept (its rank). More keep finer detail, cost memory and time.")
        self.adaptive = CheckBox(
            value=engine_default("adaptive"), text="lighter where the image allows",
            tooltip="Half the sampled pixels and fewer eigenimages in the first stage when the filter's spectrum "
            "falls off early (grey images, fluorescence microscopy): about twice as fast at the same quality.")
        self.device = device_control()
        self.widgets = [self.depth, self.kernel_size, self.kernel, self.fraction, self.rank, self.adaptive,
                        self.device]

    def params(self) -> dict[str, Any]:
        """Keyword arguments of the engine's filter functions (seed 0: the same filter every time)."""
        return {
            "depth": self.depth.value, "kernel_size": self.kernel_size.value, "kernel": self.kernel.value,
            "fraction": self.fraction.value, "rank": self.rank.value, "adaptive": self.adaptive.value,
            "device": device_value(self.device),
            "seed": 0,
        }
