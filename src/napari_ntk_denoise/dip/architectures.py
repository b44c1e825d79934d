"""Networks of the deep-image-prior experiments (paper section 6): vanilla CNN, U-Net, autoencoder, skip net.

All architectures are reflect-padded and share one calling convention with
:class:`~napari_ntk_denoise.engine.networks.VanillaCNN`: ``net(x, return_preactivations=True)`` returns
the output and the list of pre-activations of every weight layer (the output last), which the
diagnostics of :mod:`napari_ntk_denoise.dip.diagnostics` read.

* ``"vanilla"``: :class:`~napari_ntk_denoise.engine.networks.VanillaCNN` itself (one hidden layer,
  11 x 11 by default), in its NTK parameterisation, so that gradient descent with step ``eta`` is
  the twicing of the analytic filter ``eta Theta`` of
  :class:`~napari_ntk_denoise.engine.kernels.CNNKernel` (paper eq. 9) in the infinite-width limit.
* ``"unet"``, ``"ae"``, ``"skip"``: one encoder-decoder (:class:`EncoderDecoder`) with three
  stride-2 down stages and three bilinear up stages, 3 x 3 convolutions and the same width at
  every level.  The U-Net concatenates the encoder features to the decoder's, the autoencoder
  (AE) has no skips, and the DIP "skip" network of Ulyanov et al. concatenates a 1 x 1-convolved,
  narrow (4-channel) copy of them; by default neither has the skip of the full-resolution level,
  a short path that fits the noise.  Two designs: ``style="ntk"``, the bias-free ReLU networks of
  the paper's analysis (He initialisation, linear output), and ``style="dip"``, the design of the
  reference DIP code (biases, batch normalisation, LeakyReLU, sigmoid output).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.networks import VanillaCNN

__all__ = [
    "ARCHITECTURES",
    "KERNEL_SIZE",
    "Autoencoder",
    "EncoderDecoder",
    "SkipNet",
    "UNet",
    "build_network",
    "min_image_size",
]

Architecture = Literal["vanilla", "unet", "ae", "skip"]
Style = Literal["ntk", "dip"]
STYLES: tuple[str, ...] = ("ntk", "dip")
ARCHITECTURES: tuple[str, ...] = ("vanilla", "unet", "ae", "skip")

#: default kernel size of each architecture (paper section 6)
KERNEL_SIZE = {"vanilla": 11, "unet": 3, "ae": 3, "skip": 3}


def _he_conv(
    c_in: int, c_out: int, kernel_size: int, stride: int, generator: torch.Generator | None, bias: bool = False
) -> nn.Conv2d:
    """Reflect-padded convolution with weights ``N(0, 2 / fan_in)`` (He) and zero biases if any."""
    conv = nn.Conv2d(
        c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, padding_mode="reflect", bias=bias
    )
    std = math.sqrt(2.0 / (c_in * kernel_size * kernel_size))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
        if bias:
            conv.bias.zero_()
    return conv


class _Layer(nn.Module):
    """Convolution, then (``"dip"`` style) batch normalisation; the activation is applied apart."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, style: str, generator) -> None:
        super().__init__()
        self.conv = _he_conv(c_in, c_out, k, stride, generator, bias=style == "dip")
        # batch statistics at every call (no running averages): training and evaluation agree
        self.norm = nn.BatchNorm2d(c_out, track_running_stats=False) if style == "dip" else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(h))


class EncoderDecoder(nn.Module):
    """Encoder-decoder CNN with ``stages`` down/up stages (U-Net, autoencoder, DIP skip net).

    Layers: an input convolution at full resolution; ``stages`` stride-2 convolutions; per decoder
    stage a bilinear upsampling to the size of the matching encoder level, an optional
    concatenation of that level's features, and a convolution; a convolution at full resolution;
    a ``1 x 1`` output convolution.  With three stages that is 8 hidden layers, as the autoencoder
    of paper section 6.2.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    width : int
        Channels of every hidden layer.
    skip : {"concat", "none", "conv"}
        Skip connections: encoder features concatenated as they are (U-Net), none (autoencoder),
        or passed through a ``1 x 1`` layer to ``skip_channels`` channels first (DIP skip network).
    skip_channels : int
        Channels of a ``"conv"`` skip.
    kernel_size : int
        Odd size of the hidden convolutions.
    stages : int
        Number of down (and up) sampling stages.
    style : {"ntk", "dip"}
        ``"ntk"``: the networks of the paper's analysis, bias-free, ReLU, linear output, He
        initialisation.  ``"dip"``: the deep-image-prior design of Ulyanov et al., each
        convolution with a bias and followed by batch normalisation and a LeakyReLU (slope 0.2),
        and a sigmoid output for data scaled to ``[0, 1]``.
    full_resolution_skip : bool
        Keep the skip of the full-resolution level (off by default).  Without it the shortest
        input-output path goes through the half-resolution level; with it there is a short path
        with a 7 x 7 receptive field, which copies the noise of an image input at once and, from
        noise input, fits the noise sooner than the deep path has denoised.
    generator : torch.Generator, optional
        Source of the initial weights.

    Notes
    -----
    Stride-2 convolutions round the size up, and each upsampling goes to the exact size of its
    encoder level, so any image at least :func:`min_image_size` pixels wide runs without padding
    or cropping.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        skip: Literal["concat", "none", "conv"] = "concat",
        skip_channels: int = 4,
        kernel_size: int = 3,
        stages: int = 3,
        style: Style = "ntk",
        full_resolution_skip: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if skip not in ("concat", "none", "conv"):
            raise ValueError(f"skip must be 'concat', 'none' or 'conv', got {skip!r}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if width < 1 or stages < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("width and stages must be >= 1 and kernel_size a positive odd integer")
        self.skip, self.stages, self.kernel_size, self.width, self.style = skip, stages, kernel_size, width, style
        self.skip_levels = [lv for lv in range(stages) if skip != "none" and (lv or full_resolution_skip)]
        k = kernel_size

        def layer(c_in: int, c_out: int, size: int = k, stride: int = 1) -> _Layer:
            return _Layer(c_in, c_out, size, stride, style, generator)

        self.inc = layer(in_channels, width)
        self.down = nn.ModuleList(layer(width, width, stride=2) for _ in range(stages))
        extra = {"concat": width, "none": 0, "conv": skip_channels}[skip]
        if skip == "conv":
            self.skips = nn.ModuleDict({str(lv): layer(width, skip_channels, 1) for lv in self.skip_levels})
        self.up = nn.ModuleList(
            layer(width + (extra if stages - 1 - s in self.skip_levels else 0), width) for s in range(stages)
        )
        self.last = layer(width, width)
        self.out = _he_conv(width, out_channels, 1, 1, generator, bias=style == "dip")

    def forward(self, x: torch.Tensor, return_preactivations: bool = False):
        """Apply the network to ``x`` of shape ``(N, C_in, H, W)``.

        With ``return_preactivations=True`` also return the pre-activations of every layer in
        forward order (the output, before any sigmoid, last).
        """
        pre: list[torch.Tensor] = []
        act = torch.relu if self.style == "ntk" else partial(F.leaky_relu, negative_slope=0.2)

        def apply(module: _Layer, h: torch.Tensor) -> torch.Tensor:
            a = module(h)
            pre.append(a)
            return act(a)

        h = apply(self.inc, x)
        levels = [h]
        for module in self.down:
            h = apply(module, h)
            levels.append(h)
        for stage, module in enumerate(self.up):
            level = self.stages - 1 - stage
            feat = levels[level]
            h = F.interpolate(h, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            if level in self.skip_levels:
                h = torch.cat([h, feat if self.skip == "concat" else apply(self.skips[str(level)], feat)], 1)
            h = apply(module, h)
        h = apply(self.last, h)
        out = self.out(h)
        pre.append(out)
        if self.style == "dip":
            out = torch.sigmoid(out)
        return (out, pre) if return_preactivations else out


class UNet(EncoderDecoder):
    """U-Net: :class:`EncoderDecoder` with concatenated skip connections."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, **kwargs) -> None:
        super().__init__(in_channels, out_channels, width, skip="concat", **kwargs)


class Autoencoder(EncoderDecoder):
    """Autoencoder: the U-Net without skip connections."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, **kwargs) -> None:
        super().__init__(in_channels, out_channels, width, skip="none", **kwargs)


class SkipNet(EncoderDecoder):
    """DIP skip network (Ulyanov et al.): narrow ``1 x 1``-convolved skip connections."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, **kwargs) -> None:
        super().__init__(in_channels, out_channels, width, skip="conv", **kwargs)


_ENCODER_DECODERS = {"unet": UNet, "ae": Autoencoder, "skip": SkipNet}


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


def min_image_size(arch: Architecture, kernel_size: int | None = None) -> int:
    """Smallest height and width an architecture accepts.

    Reflect padding needs every padded map to be larger than the padding: ``r // 2 + 1`` pixels
    for the vanilla CNN; for the encoder-decoders the coarsest level, ``ceil(n / 8)`` pixels after
    three stride-2 stages, must be at least ``r // 2 + 1``, i.e. ``n >= 8 (r // 2) + 1``.
    """
    _check_arch(arch)
    r = KERNEL_SIZE[arch] if kernel_size is None else kernel_size
    return r // 2 + 1 if arch == "vanilla" else 8 * (r // 2) + 1


def build_network(
    arch: Architecture,
    in_channels: int,
    out_channels: int,
    width: int = 64,
    *,
    kernel_size: int | None = None,
    depth: int = 2,
    style: Style = "ntk",
    full_resolution_skip: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Build one of the DIP architectures.

    Parameters
    ----------
    arch : {"vanilla", "unet", "ae", "skip"}
        Architecture (see the module docstring).
    in_channels, out_channels : int
        Channels of the network input (image channels, or noise channels for DIP input) and output.
    width : int
        Channels of every hidden layer (``c`` in the paper).
    kernel_size : int, optional
        Convolution size; 11 for the vanilla CNN and 3 for the others by default (section 6).
    depth : int
        Weight layers of the vanilla CNN (2 = one hidden layer); ignored by the others.
    style : {"ntk", "dip"}
        Design of the encoder-decoders (:class:`EncoderDecoder`); the vanilla CNN is always in
        its NTK parameterisation.
    full_resolution_skip : bool
        Whether a U-Net or skip network keeps its full-resolution skip (:class:`EncoderDecoder`;
        off by default).
    generator : torch.Generator, optional
        Source of the initial weights, for reproducible runs.

    Returns
    -------
    torch.nn.Module
        A :class:`~napari_ntk_denoise.engine.networks.VanillaCNN` (NTK parameterisation) or an
        :class:`EncoderDecoder`.
    """
    _check_arch(arch)
    k = KERNEL_SIZE[arch] if kernel_size is None else kernel_size
    if arch == "vanilla":
        return VanillaCNN(
            in_channels, out_channels, width=width, depth=depth, kernel_size=k,
            parameterization="ntk", generator=generator,
        )
    return _ENCODER_DECODERS[arch](
        in_channels, out_channels, width, kernel_size=k, style=style, full_resolution_skip=full_resolution_skip,
        generator=generator,
    )
