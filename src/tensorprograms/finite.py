"""The finite-width reader: sample a program's matrices at width ``n`` and run it.

Every matrix ``W`` of shape ``(out_ratio * n, in_ratio * n)`` gets iid
``N(0, var / n_in)`` entries, every group of initial vectors iid coordinates with
the group's covariance, and the instructions are executed in order on torch
tensors. Vectors come back as ``(n_v,)`` tensors (shared) or ``(lanes, n_v)``
(batched); scalars as ``()`` or ``(lanes,)`` tensors.

Example:
    >>> import tensorprograms as tp
    >>> p = tp.Program()
    >>> x = p.vector("x")
    >>> s = p.moment(x * x)
    >>> out = tp.run(p, width=4096, seed=0)
    >>> abs(float(out[s]) - 1.0) < 0.1
    True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .program import (
    InitMatrix,
    InitScalar,
    InitVector,
    LinComb,
    MatMul,
    Moment,
    Nonlin,
    Program,
    ScalarFn,
    Scale,
)
from .program._handles import _Handle

__all__ = ["run", "FiniteResult", "width_of"]


def width_of(ratio: float, n: int) -> int:
    """Width of a space of the given ratio at base width ``n`` (at least 1)."""
    return max(1, int(round(ratio * n)))


class FiniteResult:
    """Values of every vector and scalar of a program run at one width.

    Index with a handle (``out[h]``) or a name (``out["h"]``). With several seeds,
    every value has a leading seed axis.
    """

    def __init__(self, program: Program, width: int, values: list, seeds):
        self.program = program
        self.width = width
        self.seeds = seeds
        self._values = values

    def _index(self, key) -> int:
        if isinstance(key, str):
            key = self.program[key]
        if not isinstance(key, _Handle) or key.program is not self.program:
            raise KeyError(f"{key!r} is not a value of this program")
        if key.index >= len(self._values):
            raise KeyError(f"{key.name!r} was added after the program was run")
        if key.instruction.kind == "matrix":
            raise KeyError(
                f"{key.name!r} is a matrix; results hold vectors and scalars"
            )
        return key.index

    def __getitem__(self, key) -> torch.Tensor:
        return self._values[self._index(key)]

    def kernel(self, x, y=None) -> torch.Tensor:
        """Empirical kernel ``<x_i, y_j> / n_x`` over lanes, shape ``(Lx, Ly)``."""
        y = x if y is None else y
        a, b = self[x], self[y]
        if a.shape[-1] != b.shape[-1]:
            raise ValueError("kernel of vectors of different widths")
        a = a if self._lanes(x) else a.unsqueeze(-2)
        b = b if self._lanes(y) else b.unsqueeze(-2)
        return a @ b.transpose(-1, -2) / a.shape[-1]

    def _lanes(self, key) -> int:
        return self.program._lanes[self._index(key)]

    def __repr__(self):
        return f"FiniteResult(width={self.width}, {len(self.program)} instructions)"


def run(
    program: Program,
    width: int,
    seed: int | None = 0,
    *,
    seeds: Iterable[int] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> FiniteResult:
    """Run ``program`` at width ``n = width``.

    Args:
        program: the Tensor Program.
        width: the base width ``n``.
        seed: seed of the sampled matrices and initial vectors.
        seeds: several seeds at once; values then get a leading seed axis.
        dtype: ``torch.float32`` or ``torch.float64``.
        device: where to run (``"cpu"``, ``"cuda"``).

    Returns:
        A :class:`FiniteResult`.
    """
    if not isinstance(program, Program):
        raise TypeError(f"expected a Program, got {type(program).__name__}")
    if int(width) < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if seeds is None:
        values = _run_once(program, int(width), seed, dtype, torch.device(device))
        return FiniteResult(program, int(width), values, seed)
    seeds = list(seeds)
    runs = [
        _run_once(program, int(width), s, dtype, torch.device(device)) for s in seeds
    ]
    values = [
        None if runs[0][i] is None else torch.stack([r[i] for r in runs])
        for i in range(len(program))
    ]
    return FiniteResult(program, int(width), values, seeds)


def _run_once(program, n, seed, dtype, device):
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    vals: list = [None] * len(program)
    mats: dict[int, torch.Tensor] = {}
    groups: dict[int, torch.Tensor] = {}
    for i, ins in enumerate(program.instructions):
        if isinstance(ins, InitVector):
            if ins.group not in groups:
                groups[ins.group] = _sample_group(ins, n, gen, dtype, device)
            L = max(ins.lanes, 1)
            block = groups[ins.group][ins.member * L : (ins.member + 1) * L]
            vals[i] = block if ins.lanes else block[0]
        elif isinstance(ins, InitMatrix):
            shape = (width_of(ins.out_ratio, n), width_of(ins.in_ratio, n))
            std = (ins.var / shape[1]) ** 0.5
            w = torch.randn(shape, generator=gen, dtype=dtype, device=device)
            mats[i] = w * std
        elif isinstance(ins, InitScalar):
            vals[i] = ins.value.to(dtype=dtype, device=device)
        elif isinstance(ins, MatMul):
            w = mats[ins.matrix]
            x = vals[ins.arg]
            vals[i] = x @ w if ins.transpose else x @ w.T
        elif isinstance(ins, Nonlin):
            args = [vals[a] for a in ins.args]
            scal = [_scalar_arg(vals[s]) for s in ins.scalars]
            vals[i] = ins.func.fn(*args, *scal)
        elif isinstance(ins, LinComb):
            out = sum(c * v for c, v in zip(ins.coefs, [vals[a] for a in ins.args]))
            vals[i] = out + ins.const if ins.const else out
        elif isinstance(ins, Scale):
            vals[i] = _scalar_arg(vals[ins.scalar]) * vals[ins.arg]
        elif isinstance(ins, Moment):
            vals[i] = vals[ins.arg].mean(dim=-1)
        elif isinstance(ins, ScalarFn):
            vals[i] = torch.as_tensor(
                ins.func.fn(*[vals[a] for a in ins.args]), dtype=dtype, device=device
            )
        else:  # pragma: no cover - every instruction class is handled above
            raise TypeError(f"unknown instruction {ins!r}")
    return vals


def _sample_group(ins: InitVector, n, gen, dtype, device):
    """Rows: members x lanes; columns: the ``n_v`` iid coordinates."""
    cov = ins.group_cov
    evals, evecs = torch.linalg.eigh(cov)
    factor = evecs * evals.clamp(min=0).sqrt()  # cov = factor @ factor.T
    m = width_of(ins.ratio, n)
    eps = torch.randn(
        (cov.shape[0], m), generator=gen, dtype=torch.float64, device=device
    )
    return (factor.to(device) @ eps).to(dtype)


def _scalar_arg(v: torch.Tensor) -> torch.Tensor:
    """A lane scalar ``(L,)`` broadcasts over ``(L, n)`` vectors."""
    return v.unsqueeze(-1) if v.ndim >= 1 else v
