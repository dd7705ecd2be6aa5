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

from ._common import Gaussian, max_learning_rate
from ._ensemble import MSEEnsemble, gradient_descent_mse_ensemble
from ._gp import GPPosterior, gp_inference
from ._mse import MSEPredictor, gradient_descent_mse
from ._ode import ODEPredictor, gradient_descent

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
