"""Finite-width vanilla ReLU CNN of the paper (eqs. 1-3) and its empirical NTK.

The network is the *referee* of the analytic kernels in :mod:`napari_ntk_denoise.engine.kernels`:
its empirical neural tangent kernel :math:`J J^T` converges to the closed-form kernel as the
width grows.  The same class is trained by the deep-image-prior trainer.

Conventions (shared with the analytic kernel)
---------------------------------------------
* Layer 1: ``r x r`` convolution ``C_in -> c``; layers ``2 .. L-1``: ``r x r`` convolutions
  ``c -> c``; layer ``L`` (output): ``1 x 1`` convolution ``c -> C_out``.  ReLU after every
  layer but the last, no biases.  Receptive field ``(r - 1)(L - 1) + 1``.  With ``ndim=3`` the
  convolutions are ``r_z x r x r`` on volumes (3-D patches) and the output layer ``1 x 1 x 1``.
* Padding: ``reflect`` (an index map, so the kernel recursion simply reads reflected entries).
* NTK parameterisation: weights ``w ~ N(0, 1)`` and each layer multiplies its output by
  ``sigma_w / sqrt(fan_in)`` (``fan_in = r^2 * channels_in``), ``sigma_w^2 = 2`` (He).  At
  initialisation the function equals a He-initialised standard network; gradient descent with
  one learning rate on all layers is the regime in which the analytic NTK holds.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import CNNKernel

__all__ = ["VanillaCNN", "empirical_ntk"]


class VanillaCNN(nn.Module):
    """Vanilla ReLU CNN of depth ``L`` with NTK or standard parameterisation.

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for gray, 3 for RGB).
    out_channels : int, optional
        Channels of the output; defaults to ``in_channels``.
    width : int
        Channels ``c`` of every hidden layer.
    depth : int
        Number of weight layers ``L >= 2`` (``L = 2`` is one hidden layer).
    kernel_size : int
        Odd spatial size ``r`` of the hidden convolutions.
    sigma_w2 : float
        Weight variance factor (2 for ReLU / He initialisation).
    parameterization : {"ntk", "standard"}
        ``"ntk"``: unit-variance weights with a forward ``sigma_w / sqrt(fan_in)`` factor;
        ``"standard"``: weights drawn with variance ``sigma_w^2 / fan_in`` and no factor.
    padding_mode : str
        ``torch`` padding mode of the ``r x r`` convolutions (``"reflect"`` by default).
    generator : torch.Generator, optional
        Source of the initial weights (for reproducible runs).
    ndim : {2, 3}
        Spatial dimensions: 2 (``Conv2d``-like, images) or 3 (volumes, 3-D patches).
    kernel_size_z : int, optional
        Size ``r_z`` of the convolutions along Z for ``ndim=3`` (default ``kernel_size``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        width: int = 64,
        depth: int = 2,
        kernel_size: int = 11,
        sigma_w2: float = 2.0,
        parameterization: Literal["ntk", "standard"] = "ntk",
        padding_mode: str = "reflect",
        generator: torch.Generator | None = None,
        ndim: int = 2,
        kernel_size_z: int | None = None,
    ) -> None:
        super().__init__()
        self.architecture = CNNKernel(depth=depth, kernel_size=kernel_size, sigma_w2=sigma_w2, ndim=ndim,
                                      kernel_size_z=kernel_size_z)  # checks the architecture, as for the kernel
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if parameterization not in ("ntk", "standard"):
            raise ValueError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")
        out_channels = in_channels if out_channels is None else out_channels
        self.depth, self.kernel_size, self.width, self.ndim = depth, kernel_size, width, ndim
        self.padding_mode, self.parameterization = padding_mode, parameterization
        sizes = self.architecture.sizes
        shapes = [(width, in_channels, sizes)]
        shapes += [(width, width, sizes)] * (depth - 2)
        shapes += [(out_channels, width, (1,) * ndim)]
        self.weights = nn.ParameterList()
        self.scales: list[float] = []
        for c_out, c_in, size in shapes:
            std = math.sqrt(sigma_w2 / (c_in * math.prod(size)))
            w = torch.randn(c_out, c_in, *size, generator=generator)
            if parameterization == "standard":
                w, std = w * std, 1.0
            self.weights.append(nn.Parameter(w))
            self.scales.append(std)

    @classmethod
    def from_architecture(cls, architecture: CNNKernel, in_channels: int, **kwargs) -> VanillaCNN:
        """The finite network of an architecture whose analytic kernel is ``architecture``.

        Parameters
        ----------
        architecture : CNNKernel
            Depth, convolution sizes, ``sigma_w^2`` and spatial dimensions.
        in_channels : int
            Channels of the input.
        **kwargs
            ``out_channels``, ``width``, ``parameterization``, ``padding_mode``, ``generator``.

        Returns
        -------
        VanillaCNN
        """
        a = architecture
        return cls(in_channels, depth=a.depth, kernel_size=a.kernel_size, sigma_w2=a.sigma_w2, ndim=a.ndim,
                   kernel_size_z=a.kernel_size_z, **kwargs)

    def _conv(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        w = self.weights[layer]
        h = _pad_same(h, w.shape[2:], self.padding_mode)
        return (F.conv2d if self.ndim == 2 else F.conv3d)(h, w) * self.scales[layer]

    def forward(self, x: torch.Tensor, return_preactivations: bool = False):
        """Apply the network to ``x`` of shape ``(N, C_in, H, W)`` (``(N, C_in, Z, H, W)`` in 3-D).

        With ``return_preactivations=True`` also return the list of pre-activations
        ``[a^1, ..., a^L]`` (``a^L`` is the output).
        """
        pre = []
        h = x
        for layer in range(self.depth):
            a = self._conv(h, layer)
            pre.append(a)
            h = torch.relu(a)
        return (pre[-1], pre) if return_preactivations else pre[-1]


def _pad_same(h: torch.Tensor, sizes: tuple[int, ...], mode: str) -> torch.Tensor:
    """Pad the spatial axes of ``h`` by half the odd kernel ``sizes`` (output size = input size)."""
    pad = [p for s in reversed(sizes) for p in (s // 2, s // 2)]
    return F.pad(h, pad, mode=mode) if any(pad) else h


def _unfold(h: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Patches of a padded ``(1, C, *spatial)`` tensor as ``(C prod(sizes), positions)`` (2-D or 3-D)."""
    for axis, s in enumerate(sizes):
        h = h.unfold(2 + axis, s, 1)  # appends a kernel-offset axis per spatial axis
    n = len(sizes)
    order = [0, *range(1 + n, 1 + 2 * n), *range(1, 1 + n)]  # C, kernel offsets, positions
    return h[0].permute(order).reshape(h.shape[1] * math.prod(sizes), -1)


def _layer_inputs(model: VanillaCNN, x: torch.Tensor, pre: list[torch.Tensor]) -> list[torch.Tensor]:
    """Inputs of each layer: the image, then ReLU of the previous pre-activation."""
    return [x] + [torch.relu(a) for a in pre[:-1]]


def empirical_ntk(
    model: VanillaCNN,
    x: torch.Tensor,
    layers: Literal["all", "output"] = "all",
    output_channel: int = 0,
) -> torch.Tensor:
    """Empirical NTK Gram matrix ``J J^T`` of one output channel over all pixels.

    Uses the structure of a convolution's weight gradient, ``dz_i/dW = sum_p g_i(p) (x) patch(p)``,
    so that ``<dz_i/dW, dz_j/dW> = sum_k (G_k P G_k^T)_{ij}`` with ``G_k`` the back-propagated
    signals of channel ``k`` and ``P`` the Gram matrix of the layer's input patches.  This is exact
    and needs no ``pixels x parameters`` Jacobian (``tests`` compare it with brute-force autograd).

    Parameters
    ----------
    model : VanillaCNN
        The network, with respect to whose (NTK-parameterised) weights the kernel is taken.
    x : torch.Tensor
        One input image ``(1, C_in, H, W)`` (``(1, C_in, Z, H, W)`` for a 3-D network).
    layers : {"all", "output"}
        Differentiate with respect to every layer (NTK) or the output layer only (NNGP kernel).
    output_channel : int
        Which output channel ``z`` is.

    Returns
    -------
    torch.Tensor
        ``(d, d)`` kernel matrix in float64, ``d`` the number of pixels.
    """
    if x.ndim != 2 + model.ndim or x.shape[0] != 1:
        raise ValueError(f"x must have shape (1, C, {', '.join('ZHW'[-model.ndim:])})")
    out, pre = model(x, return_preactivations=True)
    d = math.prod(out.shape[2:])
    z = out[0, output_channel].reshape(-1)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    chosen = range(model.depth) if layers == "all" else [model.depth - 1]
    grads = torch.autograd.grad(z, [pre[layer] for layer in chosen], grad_outputs=eye, is_grads_batched=True)
    inputs = _layer_inputs(model, x, pre)
    theta = torch.zeros(d, d, dtype=torch.float64, device=z.device)
    for layer, g in zip(chosen, grads):
        sizes = tuple(model.weights[layer].shape[2:])
        h = _pad_same(inputs[layer].detach(), sizes, model.padding_mode)
        patches = _unfold(h, sizes).double()  # (C_in r^2, npos)
        gram = patches.T @ patches  # (npos, npos)
        g = g.detach().double().reshape(d, g.shape[2], -1)  # (d, C_out, npos)
        gp = g @ gram
        # scale of the NTK parameterisation; for "standard", d/dw = d/domega / std (no factor)
        scale = model.scales[layer] ** 2
        theta += scale * torch.einsum("ikp,jkp->ij", gp, g)
    return theta
