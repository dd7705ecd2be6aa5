"""MSE: one network's outputs given its initial outputs (``gradient_descent_mse``)."""

from __future__ import annotations

import torch

from ._common import (
    _check_result,
    _check_times,
    _check_times_lr,
    _decay,
    _Eigh,
    _input_eps,
    _regularised,
    _square,
    _targets,
    _tensor,
    _times,
)


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
