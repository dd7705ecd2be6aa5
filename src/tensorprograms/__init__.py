"""tensorprograms: Tensor Programs at finite width and in the infinite-width limit.

Write a computation once as a :class:`Program`; read it two ways:
:func:`run` samples it at a finite width, :func:`limit` evaluates its
infinite-width limit by the Master Theorem.
"""

from . import (
    empirical,
    gaussian,
    mup,
    nn,
    nonlinearities,
    parametrization,
    predict,
)
from .empirical import empirical_nngp, empirical_ntk
from .finite import FiniteResult, run
from .gaussian import Estimate
from .limit import LimitError, LimitResult, ZVector, limit
from .nonlinearities import (
    Nonlinearity,
    abrelu,
    cos,
    delta,
    erf,
    exp,
    gelu,
    identity,
    leaky_relu,
    nonlinearity,
    polynomial,
    relu,
    sigmoid,
    sign,
    sin,
    square,
    step,
    tanh,
)
from .nonlinearities import abs as abs  # noqa: A004 - the nonlinearity |x|
from .program import Matrix, Program, ProgramError, Scalar, Vector

__version__ = "0.1.0"

__all__ = [
    "Program",
    "ProgramError",
    "Vector",
    "Matrix",
    "Scalar",
    "run",
    "FiniteResult",
    "limit",
    "LimitResult",
    "LimitError",
    "ZVector",
    "Estimate",
    "Nonlinearity",
    "nonlinearity",
    "gaussian",
    "empirical",
    "empirical_ntk",
    "empirical_nngp",
    "predict",
    "mup",
    "nn",
    "parametrization",
    "nonlinearities",
    "abs",
    "abrelu",
    "cos",
    "delta",
    "erf",
    "exp",
    "gelu",
    "identity",
    "leaky_relu",
    "polynomial",
    "relu",
    "sigmoid",
    "sign",
    "sin",
    "square",
    "step",
    "tanh",
]
