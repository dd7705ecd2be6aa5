"""The Master Theorem reader: the infinite-width limit of any program.

Every vector ``x`` of width ``n`` has a limit law ``Z^x`` of a typical coordinate
(TP1-TP4). This module represents ``Z^x`` as an exact function of *atoms*:
jointly Gaussian variables, one block per initial vector and per MatMul output.

* **ZHat** (TP3, Netsor-T+ Master Theorem): the MatMul outputs of one matrix
  ``W`` in one direction are centred Gaussian with
  ``Cov(ZHat^{Wx}, ZHat^{Wy}) = sigma_W^2 E[Z^x Z^y]``; for ``W^T`` (``W`` of shape
  ``n_out x n_in``) the covariance carries the ratio ``n_out / n_in``; the two
  directions, different matrices and the initial vectors are independent.
* **ZDot**: ``Z^{Wx} = ZHat^{Wx} + sigma_W^2 sum_y Z^y E[dZ^x / dZHat^{W^T y}]``
  over the products ``W^T y`` of the program, and symmetrically (with the ratio)
  for ``W^T x``. The derivative treats ``Z^x`` as a function of the atoms.
* **Nonlin**: ``Z^{phi(x, ...)} = phi(Z^x, ...)``, linear combinations kept as
  linear forms; **Moment**: ``theta = E[Z^x]``.

Expectations are computed in the cheapest exact way available: linear algebra on
the atoms' covariance for linear terms (so linear programs are exact), closed
forms of the nonlinearity registry for ``E[phi(u) psi(u')]`` of Gaussian
arguments, Gauss-Hermite quadrature over the rank of the covariance of the
Gaussian arguments in low dimension, Monte Carlo with a standard error beyond.
Every value carries an :class:`~tensorprograms.gaussian.Estimate` saying how it
was obtained and its error bound.

Example:
    >>> import tensorprograms as tp
    >>> p = tp.Program()
    >>> x = p.vector("x")
    >>> W = p.matrix("W")
    >>> y = W.T @ (W @ x)          # (W^T W) x: Marchenko-Pastur, ratio 1
    >>> s = p.moment(y * y)        # (1/n) x^T (W^T W)^2 x -> 2
    >>> res = tp.limit(p)
    >>> float(res[s]), res.estimate(s).method
    (2.0, 'exact')
"""

from __future__ import annotations

import torch

from ..gaussian import Estimate
from ..program import Program
from ..program._handles import _Handle
from ._evaluator import LimitError, _Evaluator

__all__ = ["limit", "LimitResult", "LimitError", "ZVector"]

# ----------------------------------------------------------------------------
# Results


class ZVector:
    """The limit ``Z^x`` of a vector: its expression over atoms and its kernel."""

    def __init__(self, result: LimitResult, index: int):
        self._result, self._index = result, index
        self._z = result._ev.Z[index]

    @property
    def lanes(self) -> int:
        return self._z.lanes

    def kernel(self) -> torch.Tensor:
        """``E[Z_a Z_b]`` over the vector's lanes: shape ``(L, L)``."""
        return self._result._ev.kernel(self._z, self._z).value

    def mean(self) -> torch.Tensor:
        """``E[Z]`` per lane: shape ``(L,)`` (``()`` when shared)."""
        lanes = torch.arange(max(self._z.lanes, 1))
        return self._result._shape(
            self._result._ev.mean(self._z, lanes).value, self._z.lanes
        )

    @property
    def expr(self) -> str:
        """``Z`` as a formula of the atoms (ZHat of MatMuls, Z of initial vectors)."""
        return self._z.label(None)

    def __repr__(self):
        name = self._result.program.instructions[self._index].name
        return f"Z[{name}] = {self.expr}"


class LimitResult:
    """The Master Theorem's answer for a program.

    ``res[s]`` is the limit of a scalar (a float64 tensor, one value per lane);
    ``res[x]`` the :class:`ZVector` of a vector; ``res.kernel(x, y)`` the limit of
    ``<x, y> / n``; ``res.estimate(s)`` says how a scalar was obtained and bounds
    its error.
    """

    def __init__(self, program: Program, ev: _Evaluator):
        self.program = program
        self._ev = ev
        self._length = len(ev.program.instructions)

    def _index(self, key):
        if isinstance(key, str):
            key = self.program[key]
        if not isinstance(key, _Handle) or key.program is not self.program:
            raise KeyError(f"{key!r} is not a value of this program")
        if key.index >= self._length:
            raise KeyError(f"{key.name!r} was added after the program was evaluated")
        return key.index

    def _shape(self, v, lanes):
        return v if lanes else v.reshape(())

    def __getitem__(self, key):
        i = self._index(key)
        kind = self.program.instructions[i].kind
        if kind == "scalar":
            return self._shape(self._ev.scalars[i].value, self.program._lanes[i])
        if kind == "vector":
            return ZVector(self, i)
        raise KeyError(f"{self.program.instructions[i].name!r} is a matrix")

    def estimate(self, key) -> Estimate:
        """The :class:`Estimate` (value, error bound, method) of a scalar."""
        i = self._index(key)
        if self.program.instructions[i].kind != "scalar":
            raise KeyError("estimate() takes a scalar; use kernel_estimate for vectors")
        est = self._ev.scalars[i]
        lanes = self.program._lanes[i]
        return Estimate(
            self._shape(est.value, lanes), self._shape(est.error, lanes), est.method
        )

    def kernel_estimate(self, x, y=None) -> Estimate:
        """``lim <x_a, y_b> / n = E[Z^x_a Z^y_b]`` with its error and method."""
        y = x if y is None else y
        ix, iy = self._index(x), self._index(y)
        for i in (ix, iy):
            if self.program.instructions[i].kind != "vector":
                raise KeyError(f"{self.program.instructions[i].name!r} is not a vector")
        if self.program._ratio[ix] != self.program._ratio[iy]:
            raise ValueError("the kernel needs two vectors of the same width")
        return self._ev.kernel(self._ev.Z[ix], self._ev.Z[iy])

    def kernel(self, x, y=None) -> torch.Tensor:
        """``E[Z^x_a Z^y_b]``: shape ``(Lx, Ly)`` (``(1, 1)`` for shared vectors)."""
        return self.kernel_estimate(x, y).value

    def __repr__(self):
        return f"LimitResult({len(self.program)} instructions)"


def limit(
    program: Program, *, tol: float = 1e-10, mc_samples: int = 2**17, seed: int = 0
) -> LimitResult:
    """Evaluate the infinite-width limit of ``program`` by the Master Theorem.

    Args:
        program: the Tensor Program.
        tol: target absolute accuracy of quadratures.
        mc_samples: samples of the Monte Carlo integrals (high-dimensional cases).
        seed: seed of the Monte Carlo integrals.

    Returns:
        A :class:`LimitResult`.
    """
    if not isinstance(program, Program):
        raise TypeError(f"expected a Program, got {type(program).__name__}")
    return LimitResult(program, _Evaluator(program, tol, mc_samples, seed).run())
