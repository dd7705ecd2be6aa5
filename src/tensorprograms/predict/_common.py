"""Shared pieces of ``tensorprograms.predict``: input checks, the cached
eigendecomposition of a train kernel, per-eigenvalue functions of time, and
``max_learning_rate`` (conventions in the package docstring)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of the outputs over random initialisations.

    Attributes:
        mean: (..., M, O) predicted outputs (leading axis: times, if several).
        covariance: (..., M, M) covariance between the M points, the same for
            every output unit (outputs are independent in the limit).
    """

    mean: torch.Tensor
    covariance: torch.Tensor


# ---------------------------------------------------------------------------
# checks and the cached eigendecomposition


def _tensor(name: str, a, device=None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(a))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a tensor or array, got {type(a).__name__}"
            ) from err
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(dtype=torch.float64, device=device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _input_eps(a) -> float:
    """Machine epsilon of the precision the caller's kernel was computed in."""
    dtype = getattr(a, "dtype", None)
    if dtype in (torch.float32, np.float32):
        return float(torch.finfo(torch.float32).eps)
    if dtype in (torch.float16, torch.bfloat16, np.float16):
        return float(torch.finfo(torch.float16).eps)
    return float(torch.finfo(torch.float64).eps)


def _square(name: str, k: torch.Tensor, n: int | None = None) -> torch.Tensor:
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got {tuple(k.shape)}")
    if n is not None and k.shape[0] != n:
        raise ValueError(
            f"{name} has shape {tuple(k.shape)} but y_train has {n} rows: expected "
            f"({n}, {n})"
        )
    scale = float(k.abs().max()) if k.numel() else 0.0
    asym = float((k - k.T).abs().max()) if k.numel() else 0.0
    if asym > 1e-6 * max(scale, 1e-300):
        raise ValueError(
            f"{name} is not symmetric (max |K - K^T| = {asym:.3g}, max |K| = "
            f"{scale:.3g})"
        )
    return (k + k.T) / 2


def _targets(y_train, device=None) -> torch.Tensor:
    y = _tensor("y_train", y_train, device)
    if y.ndim != 2:
        raise ValueError(
            f"y_train must have shape (N, O), got {tuple(y.shape)}; for a single "
            "output use y_train[:, None]"
        )
    return y


def _regularised(k: torch.Tensor, diag_reg: float, absolute: bool) -> torch.Tensor:
    if not (isinstance(diag_reg, int | float) and math.isfinite(diag_reg)):
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg!r}")
    if diag_reg < 0:
        raise ValueError(f"diag_reg must be >= 0, got {diag_reg}")
    if diag_reg == 0:
        return k
    scale = 1.0 if absolute else float(k.diagonal().mean())
    return k + diag_reg * scale * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)


class _Eigh:
    """Eigendecomposition K = V diag(lam) V^T of a PSD train kernel, checked."""

    def __init__(self, name: str, k: torch.Tensor, eps: float, diag_reg: float):
        self.name = name
        lam, self.vecs = torch.linalg.eigh(k)
        top = float(lam.abs().max()) if lam.numel() else 0.0
        # Rounding in the kernel's own precision moves eigenvalues by ~ N eps |K|:
        # below this an eigenvalue is zero (a singular kernel).
        self.tol = 10 * k.shape[0] * eps * top
        # Kernels are accurate only to ~sqrt(eps) relative where inputs are nearly
        # collinear (the arc-cosine kernels' angle arccos(rho) near rho = 1; seen:
        # -9e-10 lambda_max for a relu NTK of near-duplicate inputs). A cluster of
        # m such inputs perturbs eigenvalues by ~m sqrt(eps) |K| while lambda_max is
        # ~m |K|, so eigenvalues down to -10 sqrt(eps) lambda_max are rounding of a
        # PSD kernel (set to 0); more negative ones are an error.
        psd_tol = max(self.tol, 10 * eps**0.5 * top)
        if float(lam.min()) < -psd_tol:
            raise ValueError(
                f"{name} is not positive semi-definite: smallest eigenvalue "
                f"{float(lam.min()):.3g}, largest {top:.3g}; a kernel must be PSD "
                "(check how it was computed)"
            )
        self.vals = lam.clamp_min(0.0)
        self.diag_reg = diag_reg
        self.top = top

    def require_invertible(self, why: str, finite_time: bool = True) -> None:
        low = float(self.vals.min())
        if low <= self.tol:
            raise ValueError(
                f"{self.name} is singular (smallest eigenvalue {low:.3g}, largest "
                f"{self.top:.3g}) and {why} needs its inverse: pass diag_reg > 0 "
                "(a ridge, e.g. diag_reg=1e-6)"
                + (" or a finite time" if finite_time else "")
            )


# ---------------------------------------------------------------------------
# functions of the kernel per eigenvalue


def _times(t) -> tuple[torch.Tensor, bool]:
    """Times as a float64 vector, and whether a single scalar was given."""
    if t is None:
        return torch.tensor([math.inf], dtype=torch.float64), True
    tt = torch.as_tensor(np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t))
    tt = tt.to(torch.float64)
    if tt.ndim > 1:
        raise ValueError(
            f"t must be a scalar or a 1-D sequence, got shape {tuple(tt.shape)}"
        )
    if bool(torch.isnan(tt).any()) or bool((tt < 0).any()):
        raise ValueError(f"times must be >= 0 (or None for infinity), got {t!r}")
    return tt.reshape(-1), tt.ndim == 0


def _decay(
    lam: torch.Tensor, t: torch.Tensor, eta: float, discrete: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """d_t(lam) and (1 - d_t(lam)) / lam, shape (T, N), stable as lam -> 0.

    Flow: d = exp(-eta t lam). Steps: d = (1 - eta lam)^t.
    """
    lam, t = lam[None, :], t[:, None].to(lam.device)
    inf = torch.isinf(t)
    tf = torch.where(inf, torch.zeros_like(t), t)
    if discrete:
        x = eta * lam
        small = x < 1
        log_base = torch.log1p(-torch.where(small, x, torch.zeros_like(x)))
        one_minus_d = torch.where(
            small, -torch.expm1(tf * log_base), 1 - torch.pow(1 - x, tf)
        )
    else:
        one_minus_d = -torch.expm1(-eta * tf * lam)
    pos = lam > 0
    h = torch.where(pos, one_minus_d / torch.where(pos, lam, 1.0), eta * tf)
    d = 1 - one_minus_d
    # t = infinity (checked beforehand: every lam > 0 and the iteration contracts).
    d = torch.where(inf, torch.zeros_like(d), d)
    h = torch.where(inf, 1 / torch.where(pos, lam, 1.0).expand_as(h), h)
    return d, h


def _check_times(eig: _Eigh, t: torch.Tensor, eta: float, discrete: bool) -> None:
    if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {eta!r}")
    has_inf = bool(torch.isinf(t).any())
    if has_inf:
        eig.require_invertible("t = infinity")
    if not discrete:
        return
    top = float(eig.vals.max())
    if eta * top >= 2:
        msg = (
            f"learning_rate {eta:.4g} is at or above 2 / lambda_max = {2 / top:.4g} "
            f"of {eig.name}: gradient descent diverges"
        )
        if has_inf:
            raise ValueError(msg + " and has no limit at t = infinity")
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
    if eta * top > 1:
        frac = t[~torch.isinf(t)]
        if bool((frac != torch.round(frac)).any()):
            raise ValueError(
                "discrete gradient descent with learning_rate * lambda_max > 1 "
                "oscillates: fractional steps t are undefined, got "
                f"{frac.tolist()}"
            )


def _check_result(tensors, eta) -> None:
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(
                "predictions overflowed to inf/NaN: gradient descent diverges at "
                f"learning_rate {eta:.4g} (see max_learning_rate)"
            )


def max_learning_rate(ntk_train_train) -> float:
    """Largest learning rate for which full-batch gradient descent converges.

    f_{t+1}(X) - Y = (I - eta Theta)(f_t(X) - Y) contracts iff eta < 2 / lambda_max
    (TP2b, arXiv 2105.03703; summed squared loss, see the module docstring).

    Args:
        ntk_train_train: (N, N) NTK on the training inputs.

    Returns:
        2 / lambda_max(Theta).

    Example:
        >>> import torch
        >>> from tensorprograms.predict import max_learning_rate
        >>> max_learning_rate(torch.diag(torch.tensor([1.0, 4.0])))
        0.5
    """
    k = _square("ntk_train_train", _tensor("ntk_train_train", ntk_train_train))
    top = float(torch.linalg.eigvalsh(k).max())
    if top <= 0:
        raise ValueError(
            f"ntk_train_train has no positive eigenvalue (largest {top:.3g})"
        )
    return 2.0 / top


def _check_times_lr(eta) -> None:
    if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {eta!r}")


def _test_train(name: str, k, dev, n: int) -> torch.Tensor:
    kt = _tensor(name, k, dev)
    if kt.ndim != 2 or kt.shape[1] != n:
        raise ValueError(f"{name} must have shape (M, {n}), got {tuple(kt.shape)}")
    return kt
