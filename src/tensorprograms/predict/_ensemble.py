"""MSE: mean and covariance over initialisations (``gradient_descent_mse_ensemble``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import (
    Gaussian,
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
    _test_train,
    _times,
)

_GETS = ("nngp", "ntk")


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
