"""Any loss: the kernel ODE (``gradient_descent``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._common import _check_times_lr, _square, _targets, _tensor, _test_train, _times

_LOSSES = ("cross_entropy", "mse")


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
