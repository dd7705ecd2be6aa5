"""The program: instructions added one by one and checked against the rules."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ._func import DIV, VARIANTS, ProgramError, _as_func, _check_func
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
    _ratio_str,
)

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
        if func is not DIV:  # x / y is finite wherever y is; the test points vanish
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
            raise ProgramError(
                f"{where}: coefficients and constant must be finite, got {coefs} "
                f"and {float(const)}"
            )
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
