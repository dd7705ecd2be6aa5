"""The Tensor Program language: Netsor, Netsor-T and Netsor-T+ (TP1, TP2, TP3/TP4).

A program is an append-only list of immutable instructions over three kinds of
value:

* **vectors** of width ``ratio * n`` (coordinates iid over the width); a vector
  either is *shared* (one vector) or carries a batch of ``lanes`` vectors, one per
  input of a data set, so that kernels over a data set are one program;
* **matrices** of shape ``(out_ratio * n, in_ratio * n)`` with iid entries
  ``N(0, var / n_in)``;
* **scalars**, deterministic in the limit (TP3/TP4's Netsor-T+).

Instructions: initial vectors (jointly Gaussian, with a given covariance across
vectors and lanes), initial matrices, initial scalars, ``MatMul`` (``W @ x`` and
``W.T @ x``), ``Nonlin`` (coordinatewise, any number of vector and scalar
arguments; linear combinations are kept as ``LinComb`` and ``Scale`` so the limit
stays exact for linear programs), ``Moment`` (the coordinate average of a vector,
a scalar) and ``ScalarFn`` (a function of scalars).

Example:
    >>> import tensorprograms as tp
    >>> p = tp.Program()
    >>> x = p.vector("x")
    >>> W = p.matrix("W", var=1.0)
    >>> h = W @ x
    >>> g = W.T @ tp.relu(h)
    >>> s = p.moment(g * g)
    >>> len(p)
    7
    >>> p.variant
    'Netsor-T+'
"""

from ._func import VARIANTS, Func, ProgramError
from ._handles import Matrix, Scalar, Vector
from ._instructions import (
    InitMatrix,
    InitScalar,
    InitVector,
    LinComb,
    MatMul,
    Moment,
    Nonlin,
    ScalarFn,
    Scale,
)
from ._program import Program

__all__ = [
    "VARIANTS",
    "Func",
    "Program",
    "ProgramError",
    "Vector",
    "Matrix",
    "Scalar",
    "InitVector",
    "InitMatrix",
    "InitScalar",
    "MatMul",
    "Nonlin",
    "LinComb",
    "Scale",
    "Moment",
    "ScalarFn",
]
