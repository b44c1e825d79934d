"""Diagnostics of DIP training from paper section 6.2, and the NTK's top eigenvalue.

* :func:`weight_change`: ``||w^t - w^0||_2`` over all weights and the mean over the intermediate
  layers of ``max |w^t - w^0|`` (paper Fig. 4; eqs. 8 and 21 predict ``O(c^{-1/2})`` and
  ``O(c^{-3/2})`` for gradient descent, ``O(1)`` and ``O(c^{-1})`` for Adam).
* :func:`preactivation_eigenimages`: leading eigenvectors of the covariance of the last hidden
  pre-activations over channels, ``Sigma_{a^{L-1}}`` (paper Fig. 5).
* :func:`ntk_top_eigenvalue`: ``lambda_max`` of the empirical NTK Gram matrix
  ``Theta = (dz/dw)(dz/dw)^T`` (eq. 10), by power iteration, which sets the default step of
  gradient descent.

Weights are compared as *effective* convolution weights, those that multiply the activations:
for a :class:`~napari_ntk_denoise.engine.networks.VanillaCNN` in NTK parameterisation that is each
``w`` times its ``sigma_w / sqrt(fan_in)`` factor, so the numbers are those of the paper's
standard He-initialised network whatever the parameterisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from ..engine.networks import VanillaCNN

__all__ = ["effective_weights", "ntk_top_eigenvalue", "preactivation_eigenimages", "weight_change"]


def effective_weights(net: nn.Module) -> list[torch.Tensor]:
    """Convolution weights of every layer in forward order (input layer first, output last).

    Parameters
    ----------
    net : torch.nn.Module
        A :class:`~napari_ntk_denoise.engine.networks.VanillaCNN` or a network made of
        ``torch.nn.Conv2d`` layers registered in forward order (the encoder-decoders of
        :mod:`napari_ntk_denoise.dip.architectures`).

    Returns
    -------
    list of torch.Tensor
        The weights as the convolutions apply them (scaled by the NTK factor for a
        ``VanillaCNN``); they share the parameters' autograd graph.
    """
    if isinstance(net, VanillaCNN):
        return [w * s for w, s in zip(net.weights, net.scales)]
    return [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def weight_change(initial: list[torch.Tensor], current: list[torch.Tensor]) -> tuple[float, float]:
    """Change of the weights since initialisation (paper Fig. 4).

    Parameters
    ----------
    initial, current : list of torch.Tensor
        Per-layer weights ``w^0`` and ``w^t`` in forward order (see :func:`effective_weights`).

    Returns
    -------
    l2 : float
        ``||w^t - w^0||_2`` over all layers.
    max_hidden : float
        ``1/(L-2) sum_{1 < l < L} max_{i,j,a} |w^l_t - w^l_0|``, the mean over the intermediate
        layers (neither the input nor the output layer) of the largest absolute change; ``nan``
        for a network with no intermediate layer (the one-hidden-layer vanilla CNN, ``L = 2``).
    """
    if len(initial) != len(current):
        raise ValueError("initial and current must list the same layers")
    deltas = [(c - i).double() for i, c in zip(initial, current)]
    l2 = math.sqrt(sum(float((d * d).sum()) for d in deltas))
    hidden = deltas[1:-1]
    max_hidden = sum(float(d.abs().max()) for d in hidden) / len(hidden) if hidden else math.nan
    return l2, max_hidden


@torch.no_grad()
def preactivation_eigenimages(preactivation: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of the pixel covariance of a layer's pre-activations (paper Fig. 5).

    The covariance over the ``c`` channels, ``Sigma = (1/c) sum_i a_i a_i^T`` (``d x d``, ``d``
    pixels), is taken uncentred, as the paper's ``Sigma_{a^l}`` (channels of a randomly
    initialised layer have zero mean).  Its eigenvectors are obtained from the ``c x c`` Gram
    matrix ``A A^T / c`` of the ``c x d`` matrix ``A`` of channels, in float64.

    Parameters
    ----------
    preactivation : torch.Tensor
        Pre-activations ``(1, c, H, W)`` (e.g. the last hidden layer's, ``a^{L-1}``).
    k : int
        Number of eigenpairs, at most ``c``.

    Returns
    -------
    eigenvalues : torch.Tensor
        ``(k,)`` in decreasing order, float64.
    eigenimages : torch.Tensor
        ``(k, H, W)`` unit-norm eigenvectors as images, float64, each signed so that its entry of
        largest magnitude is positive.
    """
    if preactivation.ndim != 4 or preactivation.shape[0] != 1:
        raise ValueError("preactivation must have shape (1, c, H, W)")
    _, c, h, w = preactivation.shape
    if not 1 <= k <= c:
        raise ValueError(f"k must be between 1 and the number of channels {c}, got {k}")
    a = preactivation[0].reshape(c, h * w).double()
    evals, evecs = torch.linalg.eigh(a @ a.T / c)
    evals, evecs = evals.flip(0)[:k].clamp_min(0), evecs.flip(1)[:, :k]
    images = evecs.T @ a  # (k, d), norms sqrt(c * lambda)
    images /= torch.linalg.vector_norm(images, dim=1, keepdim=True).clamp_min(torch.finfo(images.dtype).tiny)
    peak = images.gather(1, images.abs().argmax(1, keepdim=True))
    images *= torch.where(peak < 0, -1.0, 1.0)
    return evals, images.reshape(k, h, w)


def ntk_top_eigenvalue(
    net: nn.Module, x: torch.Tensor, iterations: int = 10, generator: torch.Generator | None = None
) -> float:
    """Largest eigenvalue of the empirical NTK Gram matrix ``Theta = J J^T`` (paper eq. 10).

    Power iteration ``v <- J (J^T v)`` with a vector-Jacobian product for ``J^T v`` and a
    forward-mode Jacobian-vector product for ``J u``, so that neither ``J`` nor ``Theta`` is
    formed; each iteration costs about three forward passes.

    Parameters
    ----------
    net : torch.nn.Module
        Network whose output ``z = net(x)`` is differentiated with respect to all its parameters.
    x : torch.Tensor
        Network input ``(1, C_in, H, W)``.
    iterations : int
        Power iterations; the leading eigenvalue of CNN kernels is well separated (paper Fig. 1,
        eq. 17) and ten give it within a few percent, from below.
    generator : torch.Generator, optional
        Source of the (CPU) starting vector.

    Returns
    -------
    float
        The Rayleigh quotient ``v^T Theta v`` of the last normalised iterate.
    """
    params = {name: p.detach() for name, p in net.named_parameters()}

    def output(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(net, p, (x,))

    out, pullback = vjp(output, params)
    v = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    rayleigh = 0.0
    for _ in range(iterations):
        v = v / torch.linalg.vector_norm(v)
        (tangent,) = pullback(v)
        _, v_next = jvp(output, (params,), (tangent,))
        rayleigh = float((v * v_next).sum())
        v = v_next.detach()
    return rayleigh
