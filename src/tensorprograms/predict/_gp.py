"""NNGP posterior (``gp_inference``)."""

from __future__ import annotations

import torch

from ._common import (
    Gaussian,
    _Eigh,
    _input_eps,
    _regularised,
    _square,
    _targets,
    _tensor,
    _test_train,
)


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
        self._eig.require_invertible("the posterior", finite_time=False)
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
