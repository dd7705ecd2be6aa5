"""The instructions of a program: small immutable values."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._func import Func

# ----------------------------------------------------------------------------
# Instructions (immutable)


@dataclass(frozen=True, eq=False)
class InitVector:
    """An initial vector: member ``member`` of a jointly Gaussian group.

    ``group_cov`` is the covariance of one coordinate of all members and lanes,
    ordered member-major: index ``member * L + lane`` with ``L = max(lanes, 1)``.
    """

    name: str
    ratio: float
    lanes: int
    group: int
    member: int
    group_cov: torch.Tensor

    kind = "vector"

    def describe(self, names):
        L = max(self.lanes, 1)
        i = self.member * L
        block = self.group_cov[i : i + L, i : i + L]
        if self.lanes == 0:
            return f"vector(var={float(block[0, 0]):.6g})"
        return f"vector(lanes={self.lanes}, cov {L}x{L})"


@dataclass(frozen=True, eq=False)
class InitMatrix:
    """An initial matrix with iid ``N(0, var / n_in)`` entries."""

    name: str
    var: float
    out_ratio: float
    in_ratio: float

    kind = "matrix"

    def describe(self, names):
        shape = f"{_ratio_str(self.out_ratio)} x {_ratio_str(self.in_ratio)}"
        return f"matrix(var={self.var:.6g}, {shape})"


@dataclass(frozen=True, eq=False)
class InitScalar:
    """An initial scalar with a given (deterministic) value, per lane or shared."""

    name: str
    value: torch.Tensor
    lanes: int

    kind = "scalar"

    def describe(self, names):
        if self.lanes == 0:
            return f"scalar({float(self.value):.6g})"
        return f"scalar(lanes={self.lanes})"


@dataclass(frozen=True, eq=False)
class MatMul:
    """``W @ x`` (or ``W.T @ x`` when ``transpose``)."""

    name: str
    matrix: int
    transpose: bool
    arg: int

    kind = "vector"

    def describe(self, names):
        t = ".T" if self.transpose else ""
        return f"{names[self.matrix]}{t} @ {names[self.arg]}"


@dataclass(frozen=True, eq=False)
class Nonlin:
    """``func(x_1, ..., x_k; theta_1, ..., theta_l)`` coordinatewise."""

    name: str
    func: Func
    args: tuple[int, ...]
    scalars: tuple[int, ...] = ()

    kind = "vector"

    def describe(self, names):
        inner = ", ".join(names[a] for a in self.args)
        if self.scalars:
            inner += "; " + ", ".join(names[s] for s in self.scalars)
        return f"{self.func.name}({inner})"


@dataclass(frozen=True, eq=False)
class LinComb:
    """``const + sum_i coefs[i] * x_i`` with constant coefficients."""

    name: str
    args: tuple[int, ...]
    coefs: tuple[float, ...]
    const: float = 0.0

    kind = "vector"

    def describe(self, names):
        parts = [f"{c:.6g}*{names[a]}" for a, c in zip(self.args, self.coefs)]
        if self.const:
            parts.append(f"{self.const:.6g}")
        return " + ".join(parts)


@dataclass(frozen=True, eq=False)
class Scale:
    """``theta * x``: a vector times a scalar of the program (a Nonlin+)."""

    name: str
    arg: int
    scalar: int

    kind = "vector"

    def describe(self, names):
        return f"{names[self.scalar]} * {names[self.arg]}"


@dataclass(frozen=True, eq=False)
class Moment:
    """``(1/n) sum_a x_a``: the coordinate average of a vector, a scalar."""

    name: str
    arg: int

    kind = "scalar"

    def describe(self, names):
        return f"moment({names[self.arg]})"


@dataclass(frozen=True, eq=False)
class ScalarFn:
    """``func(theta_1, ..., theta_l)`` of scalars."""

    name: str
    func: Func
    args: tuple[int, ...]

    kind = "scalar"

    def describe(self, names):
        return f"{self.func.name}({', '.join(names[a] for a in self.args)})"


def _ratio_str(r: float) -> str:
    return "n" if r == 1 else f"{r:g}n"
