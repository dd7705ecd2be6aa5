"""Handles: the vectors, matrices and scalars a program hands back."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._func import DIV, MUL, Func, _as_func

if TYPE_CHECKING:
    from ._program import Program


# ----------------------------------------------------------------------------
# Handles


@dataclass(frozen=True, eq=False)
class _Handle:
    program: Program
    index: int

    @property
    def name(self) -> str:
        return self.program.instructions[self.index].name

    @property
    def instruction(self):
        return self.program.instructions[self.index]

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} of a program>"

    def __hash__(self):
        return hash((id(self.program), self.index))

    def __eq__(self, other):
        if not isinstance(other, _Handle):
            return NotImplemented
        return self.program is other.program and self.index == other.index


class Vector(_Handle):
    """A vector of the program (a handle; arithmetic appends instructions)."""

    @property
    def ratio(self) -> float:
        return self.program._ratio[self.index]

    @property
    def lanes(self) -> int:
        """Number of lanes (inputs of a batch); 0 for a shared vector."""
        return self.program._lanes[self.index]

    def _apply_nonlinearity(self, nl):
        return self.program.nonlin(nl, self)

    def __add__(self, other):
        return self.program._combine(self, other, 1.0)

    def __radd__(self, other):
        return self.program._combine(self, other, 1.0)

    def __sub__(self, other):
        return self.program._combine(self, other, -1.0)

    def __rsub__(self, other):
        return self.program._combine(-1.0 * self, other, 1.0)

    def __neg__(self):
        return self.program.lincomb([self], [-1.0])

    def __mul__(self, other):
        if isinstance(other, numbers.Real):
            return self.program.lincomb([self], [float(other)])
        if isinstance(other, Scalar):
            return self.program.scale(self, other)
        if isinstance(other, Vector):
            return self.program.nonlin(MUL, self, other)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, numbers.Real):
            return self.program.lincomb([self], [1.0 / float(other)])
        if isinstance(other, Scalar):
            return self.program.scale(self, 1.0 / other)
        if isinstance(other, Vector):
            return self.program.nonlin(DIV, self, other)
        return NotImplemented

    def __pow__(self, k):
        if not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"vector powers take a positive integer exponent, got {k}")
        out = self
        for _ in range(int(k) - 1):
            out = self.program.nonlin(MUL, out, self)
        return out


class Matrix(_Handle):
    """An initial matrix; ``W @ x`` and ``W.T @ x`` append MatMul instructions."""

    transpose = False

    @property
    def T(self) -> _Transposed:
        return _Transposed(self)

    def __matmul__(self, x):
        return self.program.matmul(self, x, transpose=False)


class _Transposed:
    def __init__(self, matrix: Matrix):
        self.matrix = matrix

    @property
    def T(self) -> Matrix:
        return self.matrix

    def __matmul__(self, x):
        return self.matrix.program.matmul(self.matrix, x, transpose=True)

    def __repr__(self):
        return f"<transpose of {self.matrix.name}>"


class Scalar(_Handle):
    """A scalar of the program (Netsor-T+)."""

    @property
    def lanes(self) -> int:
        return self.program._lanes[self.index]

    def _apply_nonlinearity(self, nl):
        return self.program.scalar_fn(_as_func(nl, 1, 0, None), self)

    def _binary(self, other, op, name, swap=False):
        p = self.program
        if isinstance(other, numbers.Real):
            c = float(other)
            f = (lambda s: op(c, s)) if swap else (lambda s: op(s, c))
            label = f"{c:g} {name} ." if swap else f". {name} {c:g}"
            return p.scalar_fn(Func(f"({label})", f, 1), self)
        if isinstance(other, Scalar):
            a, b = (other, self) if swap else (self, other)
            return p.scalar_fn(Func(name, op, 2), a, b)
        return NotImplemented

    def __add__(self, o):
        return self._binary(o, lambda a, b: a + b, "+")

    def __radd__(self, o):
        return self._binary(o, lambda a, b: a + b, "+", swap=True)

    def __sub__(self, o):
        return self._binary(o, lambda a, b: a - b, "-")

    def __rsub__(self, o):
        return self._binary(o, lambda a, b: a - b, "-", swap=True)

    def __mul__(self, o):
        if isinstance(o, Vector):
            return self.program.scale(o, self)
        return self._binary(o, lambda a, b: a * b, "*")

    def __rmul__(self, o):
        return self._binary(o, lambda a, b: a * b, "*", swap=True)

    def __truediv__(self, o):
        return self._binary(o, lambda a, b: a / b, "/")

    def __rtruediv__(self, o):
        return self._binary(o, lambda a, b: a / b, "/", swap=True)

    def __pow__(self, o):
        return self._binary(o, lambda a, b: a**b, "**")

    def __neg__(self):
        return self._binary(-1.0, lambda a, b: a * b, "*")
