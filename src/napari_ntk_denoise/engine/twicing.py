"""Twicing with a fixed low-rank filter (paper eqs. 5-6 and 9).

With ``W = Q diag(lam) Q^T`` (``0 < lam <= 1``, normalised by the largest eigenvalue so that the
step ``eta * lam_max = 1``), ``t`` steps of ``z <- z + W (y - z)`` from ``z = 0`` give

.. math:: z(t) = Q \\, \\mathrm{diag}(1 - (1 - \\lambda)^t) \\, Q^T y,

which is also gradient descent on a wide CNN (eq. 9) in the NTK regime.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["twicing_factors", "twicing_output", "twicing_schedule"]


def twicing_factors(lam: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Spectral factors ``f = 1 - (1 - lam)^t`` of ``t`` twicing steps.

    Parameters
    ----------
    lam : numpy.ndarray
        Normalised eigenvalues in ``[0, 1]``, shape ``(k,)``.
    t : float or numpy.ndarray
        Step(s) ``>= 0``; an array of shape ``(n,)`` gives factors of shape ``(n, k)``.

    Returns
    -------
    numpy.ndarray
        Factors in ``[0, 1]``.
    """
    lam = np.clip(np.asarray(lam, dtype=np.float64), 0.0, 1.0)
    t = np.asarray(t, dtype=np.float64)
    if np.any(t < 0):
        raise ValueError("twicing steps must be >= 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        expo = np.multiply.outer(t, np.log1p(-lam))  # -inf where lam == 1
    expo = np.where(np.multiply.outer(t, np.ones_like(lam)) == 0, 0.0, expo)  # (1 - lam)^0 = 1
    return -np.expm1(expo)


def twicing_output(
    basis: torch.Tensor, coeffs: torch.Tensor, factors: np.ndarray, transform: torch.Tensor | None = None
) -> torch.Tensor:
    """``z = Q (f * c)`` for coefficients ``c = Q^T y`` of shape ``(k, C)``; returns ``(d, C)``.
    ``Q`` is ``basis``, or ``basis @ transform`` (applied to ``f * c`` first, never formed)."""
    f = torch.as_tensor(factors, dtype=coeffs.dtype, device=coeffs.device)
    c = f[:, None] * coeffs
    if transform is not None:
        c = transform @ c.to(transform.dtype)
    return basis @ c.to(basis.dtype)


def twicing_schedule(t_final: int, n: int = 12) -> list[int]:
    """Roughly log-spaced integer steps from 1 to ``t_final`` (inclusive) for streaming; ``n``
    of them at most (none for ``n = 0``)."""
    if n <= 0:
        return []
    if t_final < 1:
        return [int(t_final)]
    steps = np.unique(np.round(np.geomspace(1, t_final, n)).astype(int))
    return [int(s) for s in steps]

