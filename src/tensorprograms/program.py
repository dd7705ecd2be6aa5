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

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

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

VARIANTS = ("Netsor", "Netsor-T", "Netsor-T+")

_TEST_POINTS = torch.tensor(
    [-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5], dtype=torch.float64
)


class ProgramError(ValueError):
    """An instruction breaks a rule of the language; the message names both."""


# ----------------------------------------------------------------------------
# Functions carried by Nonlin / Moment / ScalarFn instructions


@dataclass(frozen=True, eq=False)
class Func:
    """A coordinatewise function ``fn(x_1, ..., x_k, theta_1, ..., theta_l)``.

    Args:
        name: printed name.
        fn: callable on torch tensors (vector arguments first, then scalar ones).
        n_vectors: number of vector arguments ``k``.
        n_scalars: number of scalar arguments ``l`` (Netsor-T+ only).
        smooth: whether ``fn`` is infinitely differentiable (decides how the limit
            evaluator integrates and differentiates it).
        nonlinearity: the registered one-argument nonlinearity this function is,
            if any (its closed-form Gaussian expectations are then used).
    """

    name: str
    fn: Callable
    n_vectors: int
    n_scalars: int = 0
    smooth: bool = True
    nonlinearity: object = None

    def __call__(self, *args):
        return self.fn(*args)


def _mul(x, y):
    return x * y


def _div(x, y):
    return x / y


MUL = Func("mul", _mul, 2)
DIV = Func("div", _div, 2)


def _as_func(fn, n_vectors: int, n_scalars: int, name: str | None) -> Func:
    if isinstance(fn, Func):
        return fn
    if hasattr(fn, "fn") and hasattr(fn, "smooth") and hasattr(fn, "name"):
        if n_vectors != 1 or n_scalars != 0:
            raise ProgramError(
                f"nonlinearity {fn.name!r} takes one vector argument, "
                f"got {n_vectors} vectors and {n_scalars} scalars"
            )
        return Func(fn.name, fn.fn, 1, 0, bool(fn.smooth), fn)
    if not callable(fn):
        raise TypeError(f"expected a callable nonlinearity, got {type(fn).__name__}")
    return Func(name or getattr(fn, "__name__", "fn"), fn, n_vectors, n_scalars)


def _check_func(func: Func, where: str) -> None:
    """Evaluate ``func`` on test points: finite values of the right shape."""
    args = [_TEST_POINTS.roll(i) for i in range(func.n_vectors)]
    args += [torch.tensor(0.5, dtype=torch.float64)] * func.n_scalars
    try:
        out = func.fn(*args)
    except Exception as exc:  # the user's function itself failed
        raise ProgramError(
            f"{where}: nonlinearity {func.name!r} fails on the test points "
            f"{_TEST_POINTS.tolist()}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.shape != _TEST_POINTS.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ProgramError(
            f"{where}: nonlinearity {func.name!r} must map a tensor of shape "
            f"{tuple(_TEST_POINTS.shape)} coordinatewise to the same shape, got {got}"
        )
    bad = ~torch.isfinite(out)
    if bad.any():
        i = int(bad.nonzero()[0])
        point = [float(a[i]) for a in args[: func.n_vectors]]
        raise ProgramError(
            f"{where}: nonlinearity {func.name!r} is not finite at the test point "
            f"{point} (value {float(out[i])})"
        )


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


# ----------------------------------------------------------------------------
# The program


@dataclass(eq=False)
class Program:
    """A Tensor Program, built instruction by instruction.

    Args:
        variant: ``"Netsor"`` (TP1: no transposes, no scalars inside the program),
            ``"Netsor-T"`` (TP2/TP3: transposes allowed) or ``"Netsor-T+"``
            (TP3/TP4: also initial scalars, scalar arguments and moments used
            inside the program). Every instruction is checked against the variant's
            rules when it is added.

    Instructions are immutable and never change once added; ``p.instructions`` is a
    tuple, so the readers (``tp.run``, ``tp.limit``) see a snapshot.
    """

    variant: str = "Netsor-T+"
    instructions: tuple = field(default=(), init=False)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        self._ratio: list = []
        self._lanes: list = []
        self._names: set = set()
        self._groups = 0
        self._batch = 0  # lanes of the lane vectors (all equal), 0 while none
        self._used_by: list[list[int]] = []
        self._frozen = False

    # ---- bookkeeping ---
    def __len__(self):
        return len(self.instructions)

    @property
    def lanes(self) -> int:
        """The number of lanes of the program's batched values (0 if none)."""
        return self._batch

    def _name(self, name: str | None, prefix: str) -> str:
        if name is None:
            name = f"{prefix}{len(self.instructions)}"
        if not isinstance(name, str) or not name:
            raise TypeError(f"a name must be a non-empty string, got {name!r}")
        if name in self._names:
            raise ProgramError(f"the name {name!r} is already used in this program")
        return name

    def freeze(self) -> Program:
        """Forbid further instructions (the readers' results refer to this state)."""
        self._frozen = True
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _append(self, ins, ratio=None, lanes=0, uses=()):
        if self._frozen:
            raise ProgramError(
                f"cannot add {type(ins).__name__} {ins.name!r}: the program is frozen"
            )
        self.instructions = self.instructions + (ins,)
        self._names.add(ins.name)
        self._ratio.append(ratio)
        self._lanes.append(lanes)
        self._used_by.append([])
        for u in uses:
            self._used_by[u].append(len(self.instructions) - 1)
        return len(self.instructions) - 1

    def _own(self, h, cls, where):
        if not isinstance(h, cls):
            raise TypeError(
                f"{where}: expected a {cls.__name__} of this program, "
                f"got {type(h).__name__}"
            )
        if h.program is not self:
            raise ProgramError(f"{where}: {h.name!r} belongs to another program")
        return h.index

    def _set_batch(self, lanes: int, where: str):
        if lanes == 0:
            return
        if self._batch and lanes != self._batch:
            raise ProgramError(
                f"{where}: all batched values of a program have the same number of "
                f"lanes; expected {self._batch}, got {lanes}"
            )
        self._batch = lanes

    def _require(self, variant_needed: str, where: str, rule: str):
        if VARIANTS.index(self.variant) < VARIANTS.index(variant_needed):
            raise ProgramError(
                f"{where}: {rule} needs variant {variant_needed!r} or later, "
                f"but this program is {self.variant!r}"
            )

    def _use_scalar(self, s: int, where: str):
        """A scalar used inside the program (not only as an output): Netsor-T+."""
        self._require(
            "Netsor-T+", where, f"using the scalar {self.instructions[s].name!r}"
        )

    # ---- initial values ---
    def vector(self, name=None, *, var=None, cov=None, ratio: float = 1.0) -> Vector:
        """An initial vector with iid Gaussian coordinates.

        Args:
            name: its name.
            var: variance of a coordinate of a shared (unbatched) vector; default 1.
            cov: ``(L, L)`` covariance across the ``L`` lanes of a batched vector
                (e.g. ``W_std**2 * X @ X.T / d + b_std**2`` for inputs ``X``).
            ratio: its width as a multiple of ``n``.
        """
        if var is not None and cov is not None:
            raise ValueError("give either var (shared vector) or cov (lanes), not both")
        if cov is None:
            v = 1.0 if var is None else var
            return self.vectors([name], cov=[[v]], ratio=ratio)[0]
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"cov of vector {name!r} must be square, got {cov.shape}")
        return self.vectors([name], cov=cov, lanes=cov.shape[0], ratio=ratio)[0]

    def vectors(
        self, names: Sequence, *, cov, lanes: int | None = None, ratio: float = 1.0
    ) -> list[Vector]:
        """Several initial vectors, jointly Gaussian coordinatewise.

        Args:
            names: their names (``None`` entries get automatic names).
            cov: ``(k*L, k*L)`` covariance of one coordinate, member-major
                (index ``member * L + lane``), with ``L = lanes`` (or 1 when the
                vectors are shared and ``lanes`` is None).
            lanes: number of lanes, or None for shared vectors.
        """
        names = list(names)
        k, L = len(names), lanes or 1
        where = f"initial vectors {names}"
        cov = torch.as_tensor(cov, dtype=torch.float64).clone()
        if cov.shape != (k * L, k * L):
            raise ProgramError(
                f"{where}: expected a covariance of shape {(k * L, k * L)} "
                f"(vectors x lanes), got {tuple(cov.shape)}"
            )
        if not torch.isfinite(cov).all():
            raise ProgramError(f"{where}: the covariance contains NaN or inf")
        if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
            raise ProgramError(f"{where}: the covariance is not symmetric")
        cov = (cov + cov.T) / 2
        eig = torch.linalg.eigvalsh(cov)
        scale = max(float(eig.abs().max()), 1e-300)
        if float(eig.min()) < -1e-10 * scale:
            raise ProgramError(
                f"{where}: the covariance is not positive semi-definite "
                f"(smallest eigenvalue {float(eig.min()):.3g})"
            )
        ratio = _check_ratio(ratio, where)
        if lanes is not None:
            if lanes < 1:
                raise ValueError(f"{where}: lanes must be positive, got {lanes}")
            self._set_batch(lanes, where)
        group = self._groups
        self._groups += 1
        out = []
        for m, nm in enumerate(names):
            nm = self._name(nm, "x")
            ins = InitVector(nm, ratio, lanes or 0, group, m, cov)
            out.append(Vector(self, self._append(ins, ratio, lanes or 0)))
        return out

    def matrix(self, name=None, *, var: float = 1.0, shape=(1.0, 1.0)) -> Matrix:
        """An initial matrix with iid ``N(0, var / n_in)`` entries.

        Args:
            var: ``sigma_W^2``.
            shape: ``(out_ratio, in_ratio)``: the matrix is
                ``(out_ratio * n) x (in_ratio * n)``.
        """
        name = self._name(name, "W")
        var = float(var)
        if not math.isfinite(var) or var < 0:
            raise ProgramError(
                f"matrix {name!r}: var must be finite and >= 0, got {var}"
            )
        if len(shape) != 2:
            raise ProgramError(f"matrix {name!r}: shape is (out_ratio, in_ratio)")
        out_r = _check_ratio(shape[0], f"matrix {name!r}")
        in_r = _check_ratio(shape[1], f"matrix {name!r}")
        return Matrix(self, self._append(InitMatrix(name, var, out_r, in_r)))

    def scalar(self, name=None, value=0.0) -> Scalar:
        """An initial scalar of the given value (a float, or one value per lane)."""
        name = self._name(name, "c")
        where = f"initial scalar {name!r}"
        self._require("Netsor-T+", where, "an initial scalar")
        value = torch.as_tensor(value, dtype=torch.float64).clone()
        if value.ndim > 1:
            raise ProgramError(f"{where}: value must be a float or a 1-d tensor")
        if not torch.isfinite(value).all():
            raise ProgramError(f"{where}: the value contains NaN or inf")
        lanes = int(value.shape[0]) if value.ndim == 1 else 0
        self._set_batch(lanes, where)
        return Scalar(self, self._append(InitScalar(name, value, lanes), None, lanes))

    # ---- operations ---
    def matmul(self, W: Matrix, x: Vector, *, transpose=False, name=None) -> Vector:
        """``W @ x`` or ``W.T @ x``."""
        where = f"{'W.T' if transpose else 'W'} @ x"
        w = self._own(W, Matrix, where)
        xi = self._own(x, Vector, where)
        mat = self.instructions[w]
        where = f"MatMul {mat.name}{'.T' if transpose else ''} @ {x.name}"
        self._check_transpose_rule(w, transpose, where)
        need, out = (
            (mat.out_ratio, mat.in_ratio)
            if transpose
            else (mat.in_ratio, mat.out_ratio)
        )
        if self._ratio[xi] != need:
            raise ProgramError(
                f"{where}: shape ratios do not match: {mat.name}"
                f"{'.T' if transpose else ''} takes vectors of width "
                f"{_ratio_str(need)}, got {x.name!r} of width "
                f"{_ratio_str(self._ratio[xi])}"
            )
        name = self._name(name, "h")
        ins = MatMul(name, w, transpose, xi)
        return Vector(self, self._append(ins, out, self._lanes[xi], (w, xi)))

    def nonlin(self, fn, *args: Vector, scalars: Sequence = (), name=None) -> Vector:
        """``fn(x_1, ..., x_k; theta_1, ..., theta_l)`` coordinatewise.

        ``fn`` is a registered nonlinearity (``tp.relu``) or any callable on torch
        tensors; it is evaluated on test points now, so a function that fails is
        reported here, naming the instruction.
        """
        scalars = tuple(scalars)
        func = _as_func(fn, len(args), len(scalars), None)
        where = f"Nonlin {func.name}"
        if not args:
            raise ProgramError(f"{where}: needs at least one vector argument")
        idx = tuple(self._own(a, Vector, where) for a in args)
        sidx = tuple(self._own(s, Scalar, where) for s in scalars)
        if func.n_vectors != len(idx) or func.n_scalars != len(sidx):
            raise ProgramError(
                f"{where}: expects {func.n_vectors} vectors and {func.n_scalars} "
                f"scalars, got {len(idx)} and {len(sidx)}"
            )
        for s in sidx:
            self._use_scalar(s, where)
        ratio = self._same_ratio(idx, where)
        _check_func(func, where)
        lanes = max(self._lanes[i] for i in idx + sidx)
        name = self._name(name, "v")
        ins = Nonlin(name, func, idx, sidx)
        return Vector(self, self._append(ins, ratio, lanes, idx + sidx))

    def lincomb(
        self, args: Sequence[Vector], coefs: Sequence[float], const=0.0, *, name=None
    ):
        """``const + sum_i coefs[i] * args[i]``: a linear Nonlin."""
        where = "LinComb"
        idx = tuple(self._own(a, Vector, where) for a in args)
        coefs = tuple(float(c) for c in coefs)
        if len(coefs) != len(idx) or not idx:
            raise ProgramError(f"{where}: needs as many coefficients as vectors (>= 1)")
        if not all(math.isfinite(c) for c in coefs + (float(const),)):
            raise ProgramError(f"{where}: coefficients must be finite, got {coefs}")
        ratio = self._same_ratio(idx, where)
        lanes = max(self._lanes[i] for i in idx)
        name = self._name(name, "v")
        ins = LinComb(name, idx, coefs, float(const))
        return Vector(self, self._append(ins, ratio, lanes, idx))

    def scale(self, x: Vector, theta: Scalar, *, name=None) -> Vector:
        """``theta * x`` for a scalar ``theta`` of the program (Netsor-T+)."""
        where = "Scale"
        xi = self._own(x, Vector, where)
        si = self._own(theta, Scalar, where)
        self._use_scalar(si, f"Scale {theta.name} * {x.name}")
        lanes = max(self._lanes[xi], self._lanes[si])
        name = self._name(name, "v")
        ins = Scale(name, xi, si)
        return Vector(self, self._append(ins, self._ratio[xi], lanes, (xi, si)))

    def moment(self, x: Vector, *, name=None) -> Scalar:
        """The scalar ``(1/n) sum_a x_a`` (its limit is ``E[Z^x]``)."""
        xi = self._own(x, Vector, "Moment")
        name = self._name(name, "s")
        ins = Moment(name, xi)
        return Scalar(self, self._append(ins, None, self._lanes[xi], (xi,)))

    def scalar_fn(self, fn, *args: Scalar, name=None) -> Scalar:
        """A function of scalars of the program."""
        func = _as_func(fn, len(args), 0, None)
        where = f"ScalarFn {func.name}"
        idx = tuple(self._own(a, Scalar, where) for a in args)
        for s in idx:
            self._use_scalar(s, where)
        lanes = max((self._lanes[i] for i in idx), default=0)
        name = self._name(name, "s")
        ins = ScalarFn(name, func, idx)
        return Scalar(self, self._append(ins, None, lanes, idx))

    # ---- helpers ---
    def _combine(self, x: Vector, other, sign: float):
        if isinstance(other, numbers.Real):
            return self.lincomb([x], [1.0], const=sign * float(other))
        if isinstance(other, Vector):
            return self.lincomb([x, other], [1.0, sign])
        return NotImplemented

    def _same_ratio(self, idx, where):
        ratios = {self._ratio[i] for i in idx}
        if len(ratios) > 1:
            desc = ", ".join(
                f"{self.instructions[i].name} ({_ratio_str(self._ratio[i])})"
                for i in idx
            )
            raise ProgramError(
                f"{where}: shape ratios do not match: arguments of different widths: "
                f"{desc}"
            )
        return ratios.pop()

    def _check_transpose_rule(self, w: int, transpose: bool, where: str):
        """Netsor (TP1) has no transposes: name every MatMul of the clash."""
        if self.variant != "Netsor":
            return
        others = [
            ins
            for ins in self.instructions
            if isinstance(ins, MatMul)
            and ins.matrix == w
            and ins.transpose != transpose
        ]
        if not transpose and not others:
            return
        names = self.names()
        clash = "".join(f" and {ins.name} = {ins.describe(names)}" for ins in others)
        raise ProgramError(
            f"{where}{clash}: Netsor programs may not multiply by a transposed "
            f"matrix (use variant 'Netsor-T')"
        )

    # ---- views ---
    def names(self) -> list[str]:
        return [ins.name for ins in self.instructions]

    def __getitem__(self, name: str):
        for i, ins in enumerate(self.instructions):
            if ins.name == name:
                cls = {"vector": Vector, "matrix": Matrix, "scalar": Scalar}[ins.kind]
                return cls(self, i)
        raise KeyError(f"no instruction named {name!r}")

    def handles(self):
        """Handles of every instruction's output, in program order."""
        return [self[nm] for nm in self.names()]

    def __repr__(self):
        names = self.names()
        lanes = f", {self._batch} lanes" if self._batch else ""
        lines = [f"Program({self.variant}, {len(self)} instructions{lanes})"]
        width = max((len(n) for n in names), default=1)
        for i, ins in enumerate(self.instructions):
            tag = ""
            if ins.kind == "vector" and self._ratio[i] != 1:
                tag = f"   [width {_ratio_str(self._ratio[i])}]"
            if ins.kind != "matrix" and self._lanes[i]:
                tag += "   [lanes]"
            lines.append(f"  {ins.name:<{width}} = {ins.describe(names)}{tag}")
        return "\n".join(lines)


def _check_ratio(r, where) -> float:
    r = float(r)
    if not math.isfinite(r) or r <= 0:
        raise ProgramError(f"{where}: width ratios must be positive, got {r}")
    return r
