"""Training dynamics and inference of infinite-width networks (TP2b, arXiv 2105.03703).

In the NTK limit a network trained by gradient descent moves as a linear model in
function space with the constant kernel Theta (the NTK), and its initial outputs are a
Gaussian process with the NNGP kernel K (THEORY.md, section 3). With the squared loss
L = (1/2) sum_i |f(x_i) - y_i|^2 over the N training points X, targets Y, and
learning rate eta:

    gradient descent, t steps:  f_t(X) = Y + (I - eta Theta)^t (f_0(X) - Y)
    gradient flow, time t:      f_t(X) = Y + exp(-eta t Theta) (f_0(X) - Y)
    any test point x:           f_t(x) = f_0(x) - Theta(x, X) Theta^-1 (I - D_t)
                                         (f_0(X) - Y)

with D_t = (I - eta Theta)^t or exp(-eta t Theta). Every function of Theta is
evaluated in the eigenbasis of the train-train kernel, computed once and cached, so
many times, test sets and initial outputs cost one eigendecomposition. The factor
Theta^-1 (I - D_t) is evaluated per eigenvalue lambda as (1 - d_t(lambda)) / lambda,
which tends to eta t as lambda -> 0: finite times never need the inverse of a
singular kernel. t = infinity does; a singular or indefinite kernel is then an error
unless a ridge ``diag_reg`` is given.

Conventions. Kernels are per output unit (the kernel of every output unit, outputs
independent), as in neural-tangents with ``trace_axes=(-1,)``: y_train has shape
(N, O), k_train_train (N, N). The loss is summed, not averaged: neural-tangents'
losses average over the N * O targets, so its ``learning_rate`` equals ours times
N * O. ``diag_reg`` is relative to the mean diagonal of the kernel unless
``diag_reg_absolute_scale=True`` (as in neural-tangents).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Gaussian",
    "GPPosterior",
    "MSEEnsemble",
    "MSEPredictor",
    "ODEPredictor",
    "gp_inference",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "max_learning_rate",
]

_GETS = ("nngp", "ntk")
_LOSSES = ("cross_entropy", "mse")


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
        # Rounding in the kernel's own precision moves eigenvalues by ~ N eps |K|.
        self.tol = 10 * k.shape[0] * eps * top
        if float(lam.min()) < -self.tol:
            raise ValueError(
                f"{name} is not positive semi-definite: smallest eigenvalue "
                f"{float(lam.min()):.3g}, largest {top:.3g}; a kernel must be PSD "
                "(check how it was computed)"
            )
        self.vals = lam.clamp_min(0.0)
        self.diag_reg = diag_reg
        self.top = top

    def require_invertible(self, why: str) -> None:
        low = float(self.vals.min())
        if low <= self.tol:
            raise ValueError(
                f"{self.name} is singular (smallest eigenvalue {low:.3g}, largest "
                f"{self.top:.3g}) and {why} needs its inverse: pass diag_reg > 0 "
                "(a ridge, e.g. diag_reg=1e-6) or a finite time"
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


# ---------------------------------------------------------------------------
# MSE: one network's outputs given its initial outputs


class MSEPredictor:
    """Outputs of the linearised network trained on MSE (see ``gradient_descent_mse``).

    Call it as ``predictor(t, fx_train_0, fx_test_0, k_test_train)``; the
    eigendecomposition of the train kernel is computed on the first call and reused.
    """

    def __init__(
        self,
        k_train_train,
        y_train,
        learning_rate: float = 1.0,
        diag_reg: float = 0.0,
        *,
        discrete: bool = False,
        diag_reg_absolute_scale: bool = False,
    ):
        device = (
            k_train_train.device if isinstance(k_train_train, torch.Tensor) else None
        )
        self.y_train = _targets(y_train, device)
        k = _tensor("k_train_train", k_train_train, device)
        k = _square("k_train_train", k, self.y_train.shape[0])
        self.k_train_train = _regularised(k, diag_reg, diag_reg_absolute_scale)
        self.learning_rate = learning_rate
        self.discrete = bool(discrete)
        self._eps = _input_eps(k_train_train)
        self._diag_reg = diag_reg
        self._eig: _Eigh | None = None
        _check_times_lr(learning_rate)

    @property
    def eig(self) -> _Eigh:
        if self._eig is None:
            self._eig = _Eigh(
                "k_train_train", self.k_train_train, self._eps, self._diag_reg
            )
        return self._eig

    def __call__(
        self,
        t=None,
        fx_train_0=0.0,
        fx_test_0=None,
        k_test_train=None,
    ):
        """Outputs at time(s) t.

        Args:
            t: a time (flow) or number of steps (``discrete=True``), a 1-D sequence
                of them, or None for t = infinity.
            fx_train_0: (N, O) initial outputs on the train set, a scalar
                (broadcast), or None to skip train predictions.
            fx_test_0: (M, O) initial outputs on test points, or None.
            k_test_train: (M, N) kernel between test and train points; needed with
                ``fx_test_0``.

        Returns:
            fx_train_t (N, O), or fx_test_t (M, O) if ``fx_train_0`` is None, or
            both as a tuple; with a leading time axis when t is a sequence.
        """
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError(
                "fx_train_0 and fx_test_0 are both None: nothing to predict"
            )
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 is given but k_test_train is None")
        times, scalar = _times(t)
        eig = self.eig
        _check_times(eig, times, self.learning_rate, self.discrete)
        y = self.y_train
        dev = y.device
        f0 = 0.0 if fx_train_0 is None else fx_train_0
        f0 = torch.broadcast_to(_tensor("fx_train_0", f0, dev), y.shape)
        d, h = _decay(eig.vals, times, self.learning_rate, self.discrete)
        r = eig.vecs.T @ (f0 - y)  # residual in the eigenbasis, (N, O)
        out = []
        if fx_train_0 is not None:
            fx_train = y + torch.einsum("ij,tj,jo->tio", eig.vecs, d, r)
            out.append(fx_train[0] if scalar else fx_train)
        if fx_test_0 is not None:
            n = y.shape[0]
            kt = _tensor("k_test_train", k_test_train, dev)
            if kt.ndim != 2 or kt.shape[1] != n:
                raise ValueError(
                    f"k_test_train must have shape (M, {n}), got {tuple(kt.shape)}"
                )
            ft0 = _tensor("fx_test_0", fx_test_0, dev)
            ft0 = torch.broadcast_to(ft0, (kt.shape[0], y.shape[1]))
            fx_test = ft0 - torch.einsum("mi,ij,tj,jo->tmo", kt, eig.vecs, h, r)
            out.append(fx_test[0] if scalar else fx_test)
        _check_result(out, self.learning_rate)
        return out[0] if len(out) == 1 else tuple(out)


def gradient_descent_mse(
    k_train_train,
    y_train,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    *,
    discrete: bool = False,
    diag_reg_absolute_scale: bool = False,
) -> MSEPredictor:
    """Predict a linearised network trained on MSE, given its initial outputs (TP2b).

    f_t(X) = Y + D_t (f_0(X) - Y),  f_t(x) = f_0(x) - Theta(x, X) Theta^-1 (I - D_t)
    (f_0(X) - Y), with D_t = exp(-eta t Theta) (gradient flow, t a time) or
    (I - eta Theta)^t (``discrete=True``: t full-batch steps f_{s+1} = f_s -
    eta Theta (f_s - Y)); t = None is infinity: f(x) = f_0(x) + Theta(x, X)
    Theta^-1 (Y - f_0(X)), kernel regression (Jacot et al. 2018, arXiv 1806.07572;
    Lee et al. 2019, arXiv 1902.06720; THEORY.md section 3).

    With the NTK of an infinite network this is the infinite-width network started
    from the given f_0; with an empirical NTK, the linearised finite network.

    Args:
        k_train_train: (N, N) kernel Theta(X, X) (NTK, or NNGP for the NNGP
            dynamics).
        y_train: (N, O) targets.
        learning_rate: eta.
        diag_reg: ridge r >= 0: Theta(X, X) + r I is used, r relative to the mean
            diagonal unless ``diag_reg_absolute_scale``.
        discrete: False for gradient flow, True for gradient descent steps.
        diag_reg_absolute_scale: take ``diag_reg`` in absolute units.

    Returns:
        An ``MSEPredictor``; call it as ``(t, fx_train_0, fx_test_0, k_test_train)``.

    Raises:
        ValueError: shapes, a non-symmetric or non-PSD kernel; at call time, a
            singular kernel at t = infinity without ``diag_reg``, or a learning rate
            too large for the limit of discrete descent to exist.

    Example:
        >>> import torch
        >>> from tensorprograms.predict import gradient_descent_mse
        >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
        >>> predict = gradient_descent_mse(k, y, learning_rate=0.5, discrete=True)
        >>> predict(1, fx_train_0=0.0)  # one step: f_1 = eta K y
        tensor([[ 0.5000],
                [-0.5000]], dtype=torch.float64)
        >>> k_test_train = torch.tensor([[1.0, 0.0]])  # at t = inf, K(x,X) K^-1 y
        >>> predict(None, 0.0, torch.zeros(1, 1), k_test_train)[1]
        tensor([[1.0000]], dtype=torch.float64)
    """
    return MSEPredictor(
        k_train_train,
        y_train,
        learning_rate,
        diag_reg,
        discrete=discrete,
        diag_reg_absolute_scale=diag_reg_absolute_scale,
    )


# ---------------------------------------------------------------------------
# MSE: mean and covariance over initialisations


class MSEEnsemble:
    """Distribution over initialisations of the infinite network trained on MSE.

    f_0 ~ GP(0, K) (the NNGP) and f_t(x) = f_0(x) - A_t(x) (f_0(X) - Y) with
    A_t(x) = Theta(x, X) Theta^-1 (I - D_t). So f_t is Gaussian with

        mean  A_t(x) Y
        cov   K(x, x') - A_t(x) K(X, x') - K(x, X) A_t(x')^T + A_t(x) K(X, X) A_t(x')^T

    (Lee et al. 2019, arXiv 1902.06720, eq. 16; derived again from the linear
    dynamics and checked by Monte Carlo in the tests). ``get="ntk"`` trains with the
    NTK; ``get="nngp"`` with Theta = K (only the readout trained), where the
    covariance simplifies to K(x, x') - K(x, X) K^-1 (I - D_t^2) K(X, x'), and at
    t = infinity is the NNGP posterior. On the train set itself (no test kernels)
    f_t(X) = Y + D_t (f_0(X) - Y): mean (I - D_t) Y, covariance D_t K(X, X) D_t.

    ``diag_reg`` adds r I to both train-train kernels (r relative to each one's
    mean diagonal unless absolute): for ``get="nngp"`` at t = infinity this is the
    GP posterior with observation noise r.

    Example:
        >>> import torch
        >>> from tensorprograms.predict import MSEEnsemble
        >>> k = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
        >>> ens = MSEEnsemble(k, 2 * k, y, learning_rate=0.1, discrete=True)
        >>> ens(0).tolist()  # before training, the mean is zero
        [[0.0], [0.0]]
        >>> g = ens(None, compute_cov=True)  # t = inf: the targets, no variance
        >>> torch.allclose(g.mean, y), float(g.covariance.abs().max()) < 1e-12
        (True, True)
    """

    def __init__(
        self,
        nngp_train_train,
        ntk_train_train,
        y_train,
        learning_rate: float = 1.0,
        diag_reg: float = 0.0,
        *,
        discrete: bool = False,
        diag_reg_absolute_scale: bool = False,
    ):
        self.y_train = _targets(y_train, getattr(nngp_train_train, "device", None))
        dev, n = self.y_train.device, self.y_train.shape[0]
        self.learning_rate = learning_rate
        self.discrete = bool(discrete)
        _check_times_lr(learning_rate)
        self._kernels = {}
        self._eigs: dict[str, _Eigh] = {}
        for name, k in (("nngp", nngp_train_train), ("ntk", ntk_train_train)):
            if k is None:
                continue
            full = f"{name}_train_train"
            kk = _square(full, _tensor(full, k, dev), n)
            kk = _regularised(kk, diag_reg, diag_reg_absolute_scale)
            self._kernels[name] = (kk, _input_eps(k), diag_reg)
        if "nngp" not in self._kernels:
            raise ValueError("nngp_train_train is required (it is the law of f_0)")

    def _eig(self, get: str) -> _Eigh:
        if get not in self._eigs:
            if get not in self._kernels:
                raise ValueError(f"get={get!r} needs ntk_train_train, which is None")
            k, eps, reg = self._kernels[get]
            self._eigs[get] = _Eigh(f"{get}_train_train", k, eps, reg)
        return self._eigs[get]

    def __call__(
        self,
        t=None,
        *,
        get: str = "ntk",
        nngp_test_train=None,
        ntk_test_train=None,
        nngp_test_test=None,
        compute_cov: bool = False,
    ):
        """Mean (and covariance) at time(s) t on test points, or on the train set.

        Args:
            t: time, steps (``discrete``), 1-D sequence of them, or None (infinity).
            get: ``"ntk"`` or ``"nngp"``: which kernel drives the training.
            nngp_test_train: (M, N) NNGP between test and train points; None
                predicts on the train set.
            ntk_test_train: (M, N) NTK between test and train (``get="ntk"``).
            nngp_test_test: (M, M) NNGP on the test points (for the covariance).
            compute_cov: also return the covariance.

        Returns:
            mean (..., M, O), or ``Gaussian(mean, covariance (..., M, M))``.
        """
        if get not in _GETS:
            raise ValueError(f"get must be one of {_GETS}, got {get!r}")
        times, scalar = _times(t)
        eig = self._eig(get)
        _check_times(eig, times, self.learning_rate, self.discrete)
        y, dev, n = self.y_train, self.y_train.device, self.y_train.shape[0]
        d, h = _decay(eig.vals, times, self.learning_rate, self.discrete)
        vy = eig.vecs.T @ y
        k_nngp = self._kernels["nngp"][0]

        if nngp_test_train is None:
            if ntk_test_train is not None or nngp_test_test is not None:
                raise ValueError("test kernels given without nngp_test_train")
            mean = torch.einsum("ij,tj,jo->tio", eig.vecs, 1 - d, vy)
            cov = None
            if compute_cov:
                dmat = torch.einsum("ij,tj,kj->tik", eig.vecs, d, eig.vecs)
                cov = dmat @ k_nngp @ dmat
        else:
            kx = _test_train("nngp_test_train", nngp_test_train, dev, n)
            tx = kx if get == "nngp" else None
            if get == "ntk":
                if ntk_test_train is None:
                    raise ValueError("get='ntk' needs ntk_test_train")
                tx = _test_train("ntk_test_train", ntk_test_train, dev, n)
                if tx.shape != kx.shape:
                    raise ValueError(
                        f"ntk_test_train {tuple(tx.shape)} and nngp_test_train "
                        f"{tuple(kx.shape)} must have the same shape"
                    )
            b = tx @ eig.vecs  # (M, N): Theta(x, X) V
            mean = torch.einsum("mj,tj,jo->tmo", b, h, vy)
            cov = None
            if compute_cov:
                if nngp_test_test is None:
                    raise ValueError("compute_cov=True needs nngp_test_test")
                ktt = _square(
                    "nngp_test_test",
                    _tensor("nngp_test_test", nngp_test_test, dev),
                    kx.shape[0],
                )
                cov = self._test_cov(get, eig, times, b, kx, ktt, h, k_nngp)
        if scalar:
            mean = mean[0]
            cov = None if cov is None else cov[0]
        _check_result([mean, cov], self.learning_rate)
        return mean if cov is None else Gaussian(mean, cov)

    def _test_cov(self, get, eig, times, b, kx, ktt, h, k_nngp):
        if get == "nngp":
            # A K A^T - 2 A K = -K(x,X) V (1 - d^2)/lam V^T K(X,x): no cancellation.
            _, h2 = _decay(eig.vals, 2 * times, self.learning_rate, self.discrete)
            cov = ktt[None] - torch.einsum("mj,tj,lj->tml", b, h2, b)
        else:
            a = torch.einsum("mj,tj,ij->tmi", b, h, eig.vecs)  # A_t, (T, M, N)
            ak = a @ kx.T  # A_t K(X, x), (T, M, M)
            cov = ktt[None] - ak - ak.transpose(1, 2) + a @ k_nngp @ a.transpose(1, 2)
        return (cov + cov.transpose(1, 2)) / 2


def _check_times_lr(eta) -> None:
    if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {eta!r}")


def _test_train(name: str, k, dev, n: int) -> torch.Tensor:
    kt = _tensor(name, k, dev)
    if kt.ndim != 2 or kt.shape[1] != n:
        raise ValueError(f"{name} must have shape (M, {n}), got {tuple(kt.shape)}")
    return kt


class _KernelFnEnsemble:
    """``MSEEnsemble`` fed by a kernel function of inputs."""

    def __init__(self, kernel_fn, x_train, ensemble: MSEEnsemble):
        self.kernel_fn, self.x_train, self.ensemble = kernel_fn, x_train, ensemble

    def __call__(
        self, t=None, x_test=None, get: str = "ntk", compute_cov: bool = False
    ):
        if x_test is None:
            return self.ensemble(t, get=get, compute_cov=compute_cov)
        k_tx = self.kernel_fn(x_test, self.x_train)
        k_tt = self.kernel_fn(x_test, None) if compute_cov else None
        return self.ensemble(
            t,
            get=get,
            nngp_test_train=k_tx.nngp,
            ntk_test_train=getattr(k_tx, "ntk", None),
            nngp_test_test=None if k_tt is None else k_tt.nngp,
            compute_cov=compute_cov,
        )


def gradient_descent_mse_ensemble(
    kernel_fn: Callable,
    x_train,
    y_train,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    *,
    discrete: bool = False,
    diag_reg_absolute_scale: bool = False,
):
    """Mean and covariance over initialisations of infinite networks trained on MSE.

    The formulas are those of ``MSEEnsemble`` (TP2b; Lee et al. 2019, eq. 16). The
    kernels come from ``kernel_fn(x1, x2)``, which must return an object with
    ``.nngp`` and ``.ntk`` (N1, N2) tensors and accept ``x2=None`` for
    K(x1, x1), e.g. ``model.kernel`` of a ``tensorprograms.nn`` model.

    Args:
        kernel_fn: (x1, x2) -> kernel object with ``nngp`` and ``ntk``.
        x_train: (N, ...) training inputs.
        y_train: (N, O) targets.
        learning_rate, diag_reg, discrete, diag_reg_absolute_scale: as in
            ``gradient_descent_mse``.

    Returns:
        A function ``predict(t=None, x_test=None, get="ntk", compute_cov=False)``
        returning the mean (M, O) or ``Gaussian(mean, covariance)``, with a
        leading time axis when t is a sequence; x_test=None predicts on the train
        set.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from tensorprograms.predict import gradient_descent_mse_ensemble
        >>> def linear_kernel(x1, x2):  # f(x) = w . x, w ~ N(0, I): K = Theta = x x'
        ...     x2 = x1 if x2 is None else x2
        ...     return SimpleNamespace(nngp=x1 @ x2.T, ntk=x1 @ x2.T)
        >>> x = torch.eye(2, dtype=torch.float64)
        >>> y = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
        >>> predict = gradient_descent_mse_ensemble(linear_kernel, x, y)
        >>> x_test = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> g = predict(None, x_test, compute_cov=True)
        >>> g.mean, g.covariance  # w fitted exactly: no variance left
        (tensor([[3.]], dtype=torch.float64), tensor([[0.]], dtype=torch.float64))
    """
    k = kernel_fn(x_train, None)
    ensemble = MSEEnsemble(
        k.nngp,
        getattr(k, "ntk", None),
        y_train,
        learning_rate,
        diag_reg,
        discrete=discrete,
        diag_reg_absolute_scale=diag_reg_absolute_scale,
    )
    return _KernelFnEnsemble(kernel_fn, x_train, ensemble)


# ---------------------------------------------------------------------------
# NNGP posterior


class GPPosterior:
    """NNGP posterior given the train set (see ``gp_inference``)."""

    def __init__(
        self, k_train_train, y_train, diag_reg=0.0, *, diag_reg_absolute_scale=False
    ):
        device = (
            k_train_train.device if isinstance(k_train_train, torch.Tensor) else None
        )
        self.y_train = _targets(y_train, device)
        k = _square(
            "k_train_train",
            _tensor("k_train_train", k_train_train, device),
            self.y_train.shape[0],
        )
        k = _regularised(k, diag_reg, diag_reg_absolute_scale)
        self._eig = _Eigh("k_train_train", k, _input_eps(k_train_train), diag_reg)
        self._eig.require_invertible("the posterior")
        self._alpha = self._solve(self.y_train)

    def _solve(self, b: torch.Tensor) -> torch.Tensor:
        e = self._eig
        return e.vecs @ ((e.vecs.T @ b) / e.vals[:, None])

    def __call__(self, k_test_train, k_test_test=None):
        """Posterior mean (M, O), or ``Gaussian`` with the (M, M) covariance.

        Args:
            k_test_train: (M, N) kernel between test and train points.
            k_test_test: (M, M) kernel on the test points, for the covariance.
        """
        n = self.y_train.shape[0]
        dev = self.y_train.device
        kx = _test_train("k_test_train", k_test_train, dev, n)
        mean = kx @ self._alpha
        if k_test_test is None:
            return mean
        ktt = _square(
            "k_test_test", _tensor("k_test_test", k_test_test, dev), kx.shape[0]
        )
        b = kx @ self._eig.vecs
        cov = ktt - (b / self._eig.vals) @ b.T
        return Gaussian(mean, (cov + cov.T) / 2)


def gp_inference(
    k_train_train,
    y_train,
    diag_reg: float = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
) -> GPPosterior:
    """Gaussian process posterior with the NNGP kernel (TP1, arXiv 1910.12478).

    mean(x) = K(x, X) (K + r I)^-1 Y,
    cov(x, x') = K(x, x') - K(x, X) (K + r I)^-1 K(X, x'),
    r the ridge (observation noise variance); the eigendecomposition of K + r I is
    computed once. Equals ``MSEEnsemble(get="nngp")`` at t = infinity.

    Args:
        k_train_train: (N, N) NNGP kernel on the training inputs.
        y_train: (N, O) targets.
        diag_reg: ridge r >= 0, relative to the mean diagonal of K unless
            ``diag_reg_absolute_scale``.

    Returns:
        ``GPPosterior``; call it as ``(k_test_train, k_test_test=None)``.

    Raises:
        ValueError: a singular or indefinite K without ``diag_reg``; shapes.

    Example:
        >>> import torch
        >>> from tensorprograms.predict import gp_inference
        >>> k = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
        >>> post = gp_inference(k, y)
        >>> g = post(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0]]))
        >>> round(float(g.mean), 4), round(float(g.covariance), 4)
        (0.6667, 0.6667)
    """
    return GPPosterior(
        k_train_train,
        y_train,
        diag_reg,
        diag_reg_absolute_scale=diag_reg_absolute_scale,
    )


# ---------------------------------------------------------------------------
# any loss: the kernel ODE


def _loss_grad(loss, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if loss == "cross_entropy":

        def grad(f):
            # L = -sum_i sum_c y_ic log softmax(f_i)_c
            return torch.softmax(f, dim=1) * y.sum(dim=1, keepdim=True) - y

        return grad
    if loss == "mse":
        return lambda f: f - y
    if isinstance(loss, str) or not callable(loss):
        raise ValueError(f"loss must be one of {_LOSSES} or a callable, got {loss!r}")

    def grad_callable(f):
        with torch.enable_grad():
            f = f.detach().requires_grad_(True)
            value = loss(f, y)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError("loss(fx, y) must return a scalar tensor")
            (g,) = torch.autograd.grad(value, f)
        return g

    return grad_callable


class ODEPredictor:
    """Kernel dynamics for any loss (see ``gradient_descent``)."""

    def __init__(
        self,
        loss,
        k_train_train,
        y_train,
        learning_rate: float = 1.0,
        *,
        discrete: bool = False,
        rtol: float = 1e-9,
        atol: float = 1e-11,
        method: str = "DOP853",
    ):
        device = (
            k_train_train.device if isinstance(k_train_train, torch.Tensor) else None
        )
        self.y_train = _targets(y_train, device)
        k = _tensor("k_train_train", k_train_train, device)
        self.k_train_train = _square("k_train_train", k, self.y_train.shape[0])
        _check_times_lr(learning_rate)
        self.learning_rate = learning_rate
        self.discrete = bool(discrete)
        self.grad = _loss_grad(loss, self.y_train)
        self.rtol, self.atol, self.method = rtol, atol, method

    def __call__(self, t, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        """Outputs at time(s) t (steps if ``discrete``), t finite and >= 0.

        Args and returns as ``MSEPredictor.__call__`` (t = None is not allowed:
        the cross-entropy dynamics have no finite limit).
        """
        if t is None:
            raise ValueError("t = infinity is not supported by the ODE dynamics")
        times, scalar = _times(t)
        if bool(torch.isinf(times).any()):
            raise ValueError("t = infinity is not supported by the ODE dynamics")
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 is given but k_test_train is None")
        y, dev, n = self.y_train, self.y_train.device, self.y_train.shape[0]
        f0 = torch.broadcast_to(
            _tensor("fx_train_0", 0.0 if fx_train_0 is None else fx_train_0, dev),
            y.shape,
        )
        k = self.k_train_train
        kt, ft0 = None, None
        if fx_test_0 is not None:
            kt = _test_train("k_test_train", k_test_train, dev, n)
            ft0 = torch.broadcast_to(
                _tensor("fx_test_0", fx_test_0, dev), (kt.shape[0], y.shape[1])
            )
        if self.discrete:
            fx_train, fx_test = self._steps(times, f0, ft0, k, kt)
        else:
            fx_train, fx_test = self._flow(times, f0, ft0, k, kt)
        out = []
        if fx_train_0 is not None:
            out.append(fx_train[0] if scalar else fx_train)
        if fx_test_0 is not None:
            out.append(fx_test[0] if scalar else fx_test)
        if not out:
            raise ValueError(
                "fx_train_0 and fx_test_0 are both None: nothing to predict"
            )
        return out[0] if len(out) == 1 else tuple(out)

    def _steps(self, times, f0, ft0, k, kt):
        if bool((times != torch.round(times)).any()):
            raise ValueError(
                f"discrete=True needs whole numbers of steps, got {times.tolist()}"
            )
        eta = self.learning_rate
        f, ft = f0.clone(), None if ft0 is None else ft0.clone()
        order = torch.argsort(times)
        res_f = torch.empty(
            (len(times), *f0.shape), dtype=torch.float64, device=f0.device
        )
        res_t = (
            None
            if ft0 is None
            else torch.empty(
                (len(times), *ft0.shape), dtype=torch.float64, device=f0.device
            )
        )
        done = 0
        for idx in order.tolist():
            target = int(times[idx])
            while done < target:
                g = self.grad(f)
                if ft is not None:
                    ft = ft - eta * (kt @ g)
                f = f - eta * (k @ g)
                done += 1
            _check_finite(f, done)
            res_f[idx] = f
            if ft is not None:
                res_t[idx] = ft
        return res_f, res_t

    def _flow(self, times, f0, ft0, k, kt):
        from scipy.integrate import solve_ivp

        eta = self.learning_rate
        shape_f = f0.shape
        n_f = f0.numel()
        z0 = (
            f0.reshape(-1)
            if ft0 is None
            else torch.cat([f0.reshape(-1), ft0.reshape(-1)])
        )
        k_all = k if kt is None else torch.cat([k, kt])  # (N + M, N)

        def rhs(_, z):
            f = torch.as_tensor(z[:n_f], dtype=torch.float64, device=f0.device).reshape(
                shape_f
            )
            return (-eta * (k_all @ self.grad(f))).reshape(-1).cpu().numpy()

        tau = times.cpu().numpy()
        t_end = float(tau.max())
        order = np.unique(tau)
        if t_end == 0:
            zs = np.repeat(z0.cpu().numpy()[:, None], len(order), axis=1)
        else:
            sol = solve_ivp(
                rhs,
                (0.0, t_end),
                z0.cpu().numpy(),
                method=self.method,
                t_eval=order,
                rtol=self.rtol,
                atol=self.atol,
            )
            if not sol.success:
                raise ValueError(f"the kernel ODE did not converge: {sol.message}")
            zs = sol.y
        zs = torch.as_tensor(zs.T, dtype=torch.float64, device=f0.device)[
            torch.as_tensor(np.searchsorted(order, tau))
        ]
        if not bool(torch.isfinite(zs).all()):
            raise ValueError("the kernel ODE produced NaN or inf outputs")
        fx_train = zs[:, :n_f].reshape(len(tau), *shape_f)
        fx_test = None if ft0 is None else zs[:, n_f:].reshape(len(tau), *ft0.shape)
        return fx_train, fx_test


def _check_finite(f: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(f).all()):
        raise ValueError(
            f"outputs became NaN or inf at step {step}: the learning rate is too large"
        )


def gradient_descent(
    loss,
    k_train_train,
    y_train,
    learning_rate: float = 1.0,
    *,
    discrete: bool = False,
    rtol: float = 1e-9,
    atol: float = 1e-11,
    method: str = "DOP853",
) -> ODEPredictor:
    """Function-space training of the linearised network for any loss (TP2b).

    Gradient flow integrates the kernel ODE in the absolute time tau = eta t,

        d f(X) / d tau = -Theta(X, X) dL/df(X),  d f(x) / d tau = -Theta(x, X) dL/df(X),

    with scipy's ``solve_ivp`` (``method``, ``rtol``, ``atol``) on train and test
    outputs together; ``discrete=True`` iterates the same map with steps of size
    eta. For cross-entropy L = -sum_i sum_c y_ic log softmax(f(x_i))_c, whose
    gradient is softmax(f) - y for rows of y summing to one (THEORY.md section 3).

    Args:
        loss: ``"cross_entropy"``, ``"mse"`` (L = (1/2) sum |f - y|^2), or a
            callable ``loss(fx_train, y_train) -> scalar tensor`` (differentiated
            with torch.autograd; float64 inputs).
        k_train_train: (N, N) NTK on the training inputs.
        y_train: (N, O) targets (one-hot or probabilities for cross-entropy).
        learning_rate: eta.
        discrete: integrate the flow (False) or take whole steps (True).
        rtol, atol, method: ``solve_ivp`` settings.

    Returns:
        An ``ODEPredictor``; call it as ``(t, fx_train_0, fx_test_0,
        k_test_train)``, t finite.

    Example:
        >>> import torch
        >>> from tensorprograms.predict import gradient_descent
        >>> k = torch.eye(2, dtype=torch.float64)
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> predict = gradient_descent("cross_entropy", k, y)
        >>> f = predict(5.0, fx_train_0=0.0)
        >>> bool((f.argmax(1) == torch.tensor([0, 1])).all())
        True
    """
    return ODEPredictor(
        loss,
        k_train_train,
        y_train,
        learning_rate,
        discrete=discrete,
        rtol=rtol,
        atol=atol,
        method=method,
    )
