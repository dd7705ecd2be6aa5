"""Infinite dimensions and roles of parameters (TP5 section 5, THEORY.md section 8).

A dimension of a parameter is *infinite* ("a width") when it changes between the base
model and the model (or between the base model and a delta model); every other
dimension is finite. From the infinite dimensions and the module that owns the
parameter follows its *role*, the column of TP5 Table 3 it belongs to:

- ``input``: a weight from a finite dimension into the width (first layer,
  embeddings): fan_out infinite, fan_in finite;
- ``hidden``: a weight from the width into the width: fan_out and fan_in infinite;
- ``output``: a weight from the width into a finite dimension (readout): fan_in
  infinite, fan_out finite; it must live in a readout module that applies the
  1/width_mult multiplier (``MuReadout`` and relatives);
- ``vector``: biases, gains and other tensors with one infinite dimension that is not
  contracted (TP5 Table 3 treats them like input weights);
- ``fixed``: no infinite dimension; muP leaves it alone.

Weights follow PyTorch's convention: dimension 0 is fan_out, dimension 1 is fan_in,
further dimensions are kernel dimensions.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "InfDim",
    "InfShape",
    "Role",
    "ParamInfo",
    "BaseShapes",
    "make_base_shapes",
    "get_shapes",
    "save_base_shapes",
    "load_base_shapes",
]


class Role(str, enum.Enum):
    """The column of TP5 Table 3 a parameter belongs to (see the module docstring)."""

    INPUT = "input"
    HIDDEN = "hidden"
    OUTPUT = "output"
    VECTOR = "vector"
    FIXED = "fixed"


@dataclass(frozen=True)
class InfDim:
    """One dimension: its size ``dim`` and, if it is a width, its ``base_dim``.

    ``base_dim is None`` marks a finite dimension; otherwise the dimension is infinite
    and ``width_mult() = dim / base_dim``.

    >>> InfDim(64, 256).width_mult()
    4.0
    >>> InfDim(None, 10).isinf()
    False
    """

    base_dim: int | None
    dim: int | None

    def isinf(self) -> bool:
        """True when this dimension is a width."""
        return self.base_dim is not None

    def width_mult(self) -> float:
        """``dim / base_dim`` for an infinite dimension, 1 for a finite one."""
        if self.base_dim is None or self.dim is None:
            return 1.0
        return self.dim / self.base_dim


@dataclass(frozen=True)
class InfShape:
    """The dimensions of one parameter, each an :class:`InfDim`.

    ``width_mult()`` is that of the last infinite dimension (fan_in for a hidden
    weight, the width for input weights and vectors), as in ``mup``.

    >>> s = InfShape((InfDim(64, 128), InfDim(32, 256)))
    >>> s.ninf(), s.width_mult(), s.fanin_fanout_mult_ratio()
    (2, 8.0, 4.0)
    """

    dims: tuple[InfDim, ...]

    def __len__(self) -> int:
        return len(self.dims)

    def __getitem__(self, i):
        return self.dims[i]

    def __iter__(self):
        return iter(self.dims)

    def ninf(self) -> int:
        """Number of infinite dimensions."""
        return sum(d.isinf() for d in self.dims)

    @property
    def main(self) -> InfDim | None:
        """The last infinite dimension, or None."""
        i = self.main_idx
        return None if i is None else self.dims[i]

    @property
    def main_idx(self) -> int | None:
        """Index of the last infinite dimension, or None."""
        for i in reversed(range(len(self.dims))):
            if self.dims[i].isinf():
                return i
        return None

    def width_mult(self) -> float:
        """Width multiplier of the last infinite dimension (1 if there is none)."""
        main = self.main
        return 1.0 if main is None else main.width_mult()

    def fanin_fanout(self) -> tuple[InfDim, InfDim]:
        """``(fan_in, fan_out)`` dimensions of a weight with at least 2 dimensions."""
        if len(self.dims) < 2:
            raise ValueError(
                f"fan_in and fan_out need at least 2 dimensions, got {len(self.dims)}"
            )
        return self.dims[1], self.dims[0]

    def fanin_fanout_mult_ratio(self) -> float:
        """``width_mult(fan_in) / width_mult(fan_out)``."""
        fan_in, fan_out = self.fanin_fanout()
        return fan_in.width_mult() / fan_out.width_mult()

    def base_shape(self) -> list[int | None]:
        """Base dimension per dimension, None where finite."""
        return [d.base_dim for d in self.dims]

    def shape(self) -> list[int | None]:
        """Actual size per dimension."""
        return [d.dim for d in self.dims]


@dataclass(frozen=True)
class ParamInfo:
    """What muP needs to know about one parameter.

    Args:
        name: parameter name in ``model.named_parameters()`` (wrapper prefixes such as
            DDP's ``module.`` removed).
        infshape: its dimensions (:class:`InfShape`).
        role: its :class:`Role`.
        module_type: class name of the module that owns it.
        tied: True when the same tensor is used as an embedding and as a readout.
        depth_mult: depth / base depth for parameters inside a Depth-muP residual
            branch (:class:`MuResidual`), else 1.
        parametrization: name of the table that applies ("mup", "sp", "ntp",
            "spectral", "mean_field"; see :mod:`tensorprograms.parametrization`).
        multiplier_exponent: a of the forward multiplier width_mult^-a the module
            applies (1 for readout weights in MuReadout & co., else 0).
    """

    name: str
    infshape: InfShape
    role: Role
    module_type: str
    tied: bool = False
    depth_mult: float = 1.0
    parametrization: str = "mup"
    multiplier_exponent: float = 0.0

    @property
    def role_width_mult(self) -> float:
        """The n of the parametrization tables: fan_in for hidden weights, the
        width dimension otherwise."""
        if self.role is Role.HIDDEN:
            return self.fan_in_mult
        return self.width_mult

    @property
    def width_mult(self) -> float:
        """Width multiplier of the parameter's last infinite dimension."""
        return self.infshape.width_mult()

    @property
    def fan_in_mult(self) -> float:
        """Width multiplier of dimension 1 (1 for vectors or a finite fan_in)."""
        return self.infshape[1].width_mult() if len(self.infshape) >= 2 else 1.0

    @property
    def fan_out_mult(self) -> float:
        """Width multiplier of dimension 0."""
        return self.infshape[0].width_mult() if len(self.infshape) >= 1 else 1.0


class BaseShapes(dict):
    """Mapping parameter name -> base shape (a tuple, ``None`` for finite dimensions).

    What :func:`make_base_shapes` returns and :func:`save_base_shapes` writes: enough
    to set up a model at any width without building the base model.

    >>> BaseShapes({"w": (None, 64)})["w"]
    (None, 64)
    """


# Wrapper modules that prefix parameter names (FSDP, activation checkpointing).
_WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def clean_name(name: str, prefix: str = "") -> str:
    """Parameter name without wrapper components and without ``prefix``.

    >>> clean_name("module.fc._fsdp_wrapped_module.weight", "module")
    'fc.weight'
    """
    if prefix:
        if not name.startswith(prefix + "."):
            raise ValueError(f"expected a name under {prefix!r}, got {name!r}")
        name = name[len(prefix) + 1 :]
    parts = [p for p in name.split(".") if p not in _WRAPPER_PARTS]
    return ".".join(parts)


def is_infshape(shape) -> bool:
    """True for an :class:`InfShape` or ``mup``'s (both have ``base_shape()``)."""
    return callable(getattr(shape, "base_shape", None))


# Name prefixes of wrappers: DistributedDataParallel / DataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def align_names(shapes: dict, names) -> dict:
    """``shapes`` without a wrapper prefix that all its names have and none of
    ``names`` has (a base saved from a DDP-wrapped or compiled model).

    >>> align_names({"module.fc.weight": (4, 2)}, ["fc.weight"])
    {'fc.weight': (4, 2)}
    """
    names = list(names)
    changed = True
    while changed and shapes:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in shapes) and not any(
                n.startswith(prefix) for n in names
            ):
                shapes = {k[len(prefix) :]: v for k, v in shapes.items()}
                changed = True
    return shapes


def _as_shapes(obj, what: str) -> dict[str, tuple]:
    """Shapes by name from a module, a mapping of shapes, or a base-shapes file."""
    if isinstance(obj, nn.Module):
        from ._setup import unwrap

        obj = unwrap(obj)
        return {clean_name(n): tuple(p.shape) for n, p in obj.named_parameters()}
    if isinstance(obj, BaseShapes):
        return dict(obj)
    if isinstance(obj, Mapping):
        out = {}
        for name, shape in obj.items():
            if is_infshape(shape):  # ours, or mup's make_base_shapes output
                out[clean_name(name)] = tuple(shape.base_shape())
            else:
                out[clean_name(name)] = tuple(shape)
        return out
    if isinstance(obj, str):
        return dict(load_base_shapes(obj))
    raise TypeError(
        f"{what} must be an nn.Module, a mapping name -> shape, or the path of a "
        f"base-shapes file; got {type(obj).__name__}"
    )


def _check_same_names(a: Mapping, b: Mapping, what_a: str, what_b: str) -> None:
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        raise ValueError(
            f"{what_a} and {what_b} must have the same parameters; "
            f"only in {what_a}: {only_a[:5]}, only in {what_b}: {only_b[:5]}"
        )


def _zip_base(base: Mapping, delta: Mapping) -> dict[str, tuple]:
    """Base shapes with ``None`` where base and delta agree (finite dimensions)."""
    _check_same_names(base, delta, "base", "delta")
    out = {}
    for name, bshape in base.items():
        dshape = delta[name]
        if len(bshape) != len(dshape):
            raise ValueError(
                f"parameter {name!r} has {len(bshape)} dimensions in base but "
                f"{len(dshape)} in delta"
            )
        out[name] = tuple(
            None if b is None or b == d else b for b, d in zip(bshape, dshape)
        )
    if not any(d is not None for shape in out.values() for d in shape):
        raise ValueError(
            "no width can be inferred: base and delta have the same shape for every "
            "parameter; build the delta model at another width (e.g. twice the base "
            "width)"
        )
    return out


def get_shapes(model: nn.Module) -> dict[str, tuple]:
    """Parameter shapes by name (``mup.get_shapes``), e.g. for :func:`make_base_shapes`.

    >>> from torch import nn
    >>> get_shapes(nn.Linear(3, 2))
    {'weight': (2, 3), 'bias': (2,)}
    """
    return param_shapes(model)


def make_base_shapes(base_shapes, delta_shapes, savefile: str | None = None):
    """Base shapes of a model family from a base model and a delta model (TP5 sec. 5).

    Every dimension that differs between ``base_shapes`` and ``delta_shapes`` is a
    width (infinite); its base size is the one in ``base_shapes``.

    Args:
        base_shapes: base ``nn.Module``, mapping name -> shape, or base-shapes file.
        delta_shapes: same kind, at another width; only used to find the widths.
        savefile: if given, the result is written there (JSON, readable as YAML).

    Returns:
        :class:`BaseShapes`.

    Raises:
        ValueError: if the two do not differ anywhere (no width can be inferred) or
            have different parameters.

    >>> from torch import nn
    >>> bsh = make_base_shapes(nn.Linear(3, 8), nn.Linear(3, 16))
    >>> bsh["weight"], bsh["bias"]
    ((8, None), (8,))
    """
    base = _as_shapes(base_shapes, "base_shapes")
    delta = align_names(_as_shapes(delta_shapes, "delta_shapes"), base)
    base = align_names(base, delta)
    out = BaseShapes(_zip_base(base, delta))
    if savefile is not None:
        save_base_shapes(out, savefile)
    return out


def save_base_shapes(model_or_shapes, file: str) -> None:
    """Write base shapes as JSON (a subset of YAML, so ``mup`` can read it too).

    Args:
        model_or_shapes: :class:`BaseShapes`, or a model set up by
            ``set_base_shapes`` (its base shapes are written).
        file: path.
    """
    if isinstance(model_or_shapes, nn.Module):
        from ._state import get_state

        state = get_state(model_or_shapes)
        shapes = {n: i.infshape.base_shape() for n, i in state.infos.items()}
    elif isinstance(model_or_shapes, Mapping):
        shapes = {n: list(s) for n, s in model_or_shapes.items()}
    else:
        raise TypeError(
            "save_base_shapes expects BaseShapes or a model set up by "
            f"set_base_shapes, got {type(model_or_shapes).__name__}"
        )
    with open(file, "w") as f:
        json.dump(shapes, f, indent=1, sort_keys=True)
        f.write("\n")


def load_base_shapes(file: str) -> BaseShapes:
    """Read a base-shapes file written by :func:`save_base_shapes` (or by ``mup``).

    ``mup``'s YAML files are read when PyYAML is installed.
    """
    with open(file) as f:
        text = f.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml
        except ImportError as err:
            raise ValueError(
                f"{file} is not JSON; reading mup's YAML base-shapes files needs PyYAML"
            ) from err
        raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a mapping name -> base shape")
    return BaseShapes({n: tuple(s) for n, s in raw.items()})


def _owners(model: nn.Module, prefix: str) -> dict[int, list[nn.Module]]:
    """Every module that registers each parameter (by id), tied parameters included."""
    owners: dict[int, list[nn.Module]] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for _, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    return owners


def _role(name: str, shape: InfShape, modules: Iterable[nn.Module]) -> tuple:
    """(role, tied) of a parameter from its infinite dimensions and owning modules."""
    from ._readout import is_readout

    modules = list(modules)
    readout = any(is_readout(m) for m in modules)
    embedding = any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in modules)
    types = ", ".join(sorted({type(m).__name__ for m in modules}))
    ninf = shape.ninf()
    if ninf == 0:
        return Role.FIXED, False
    if readout and len(shape) >= 2:
        if not shape[1].isinf() or shape[0].isinf():
            raise ValueError(
                f"parameter {name!r} belongs to a readout ({types}) but its fan_in is "
                "not a width or its fan_out is: a readout maps the width to a fixed "
                f"size; got shape {shape.shape()} with base {shape.base_shape()}"
            )
        return Role.OUTPUT, embedding
    if embedding and len(shape) == 2:
        tied_linear = any(isinstance(m, nn.Linear) for m in modules)
        if tied_linear and shape[1].isinf() and not shape[0].isinf():
            # an embedding weight also used by an nn.Linear head: a readout without
            # the muP multiplier (set-up asks for MuSharedReadout)
            return Role.OUTPUT, True
        return Role.INPUT, False
    if len(shape) == 1:
        return Role.VECTOR, False
    if any(isinstance(m, nn.modules.conv._ConvTransposeNd) for m in modules):
        # transposed convolutions store (in_channels, out_channels / groups, ...):
        # classify with fan_out first like every other weight (the learning rates
        # then use PyTorch's and mup's fan_in, dimension 1, as for any weight)
        shape = InfShape((shape[1], shape[0], *shape.dims[2:]))
    linear_like = any(
        isinstance(m, nn.Linear | nn.Bilinear | nn.modules.conv._ConvNd)
        for m in modules
    )
    if ninf == 2 and shape[0].isinf() and shape[1].isinf():
        return Role.HIDDEN, False
    if ninf == 1 and shape[0].isinf():  # PyTorch's (fan_out, fan_in, ...) layout
        return Role.INPUT, False
    if ninf == 1 and shape[1].isinf() and linear_like:
        return Role.OUTPUT, False
    if ninf == 1 and not linear_like:
        return Role.VECTOR, False
    raise ValueError(
        f"cannot infer the muP role of parameter {name!r} (in {types or 'the root'}): "
        f"shape {shape.shape()} has infinite dimensions at "
        f"{[i for i, d in enumerate(shape) if d.isinf()]}; expected a weight whose "
        "infinite dimensions are fan_out (0) and/or fan_in (1), or a tensor with one "
        "infinite dimension; pass roles={name: 'hidden' | 'input' | ...} to say which"
        + (" (mup trains a tensor with two widths as 'hidden')" if ninf == 2 else "")
    )


def infer_infos(
    model: nn.Module,
    base: Mapping[str, tuple],
    roles: Mapping[str, str] | None = None,
    prefix: str = "",
) -> dict[str, ParamInfo]:
    """:class:`ParamInfo` for every parameter of ``model`` given base shapes.

    A dimension is infinite when its base size is not ``None`` and (for plain base
    shapes, i.e. without a delta) differs from the model's size.
    """
    roles = dict(roles or {})
    shapes = {clean_name(n, prefix): p for n, p in model.named_parameters()}
    _check_same_names(base, shapes, "base", "model")
    unknown = sorted(set(roles) - set(shapes))
    if unknown:
        raise ValueError(f"roles names parameters the model does not have: {unknown}")
    owners = _owners(model, prefix)
    infos = {}
    for name, p in shapes.items():
        bshape = base[name]
        if len(bshape) != p.dim():
            raise ValueError(
                f"parameter {name!r} has {p.dim()} dimensions but its base shape "
                f"{list(bshape)} has {len(bshape)}"
            )
        dims = tuple(InfDim(b, int(d)) for b, d in zip(bshape, p.shape))
        shape = InfShape(dims)
        modules = owners.get(id(p), [])
        if name in roles:
            role, tied = Role(roles[name]), False
        else:
            role, tied = _role(name, shape, modules)
        module_type = ", ".join(sorted({type(m).__name__ for m in modules}))
        infos[name] = ParamInfo(name, shape, role, module_type, tied)
    return infos


def plain_base(base_shapes: Mapping, model_shapes: Mapping) -> dict[str, tuple]:
    """Base shapes from a plain base model: equal sizes are finite (``mup``'s rule)."""
    _check_same_names(base_shapes, model_shapes, "base", "model")
    out = {}
    for name, bshape in base_shapes.items():
        shape = model_shapes[name]
        if len(bshape) != len(shape):
            raise ValueError(
                f"parameter {name!r} has {len(shape)} dimensions but its base shape "
                f"{list(bshape)} has {len(bshape)}"
            )
        out[name] = tuple(None if b == d else b for b, d in zip(bshape, shape))
    return out


def param_shapes(model: nn.Module, prefix: str = "") -> dict[str, tuple]:
    """Shapes by cleaned parameter name."""
    return {
        clean_name(n, prefix): tuple(int(s) for s in p.shape)
        for n, p in model.named_parameters()
    }


def is_parameter(x) -> bool:
    """True for tensors (parameters) as opposed to parameter-group dicts."""
    return isinstance(x, torch.Tensor)
