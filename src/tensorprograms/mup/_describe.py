"""One row per parameter: what muP does to it (for audits and reports).

Each row says which column of TP5 Table 3 the parameter is in (its role), its
widths, its current init std, the forward multiplier applied to it, and the
learning-rate / weight-decay / epsilon factors the muP optimizers give it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._depth import MuResidual
from ._optim import param_factors
from ._readout import is_readout
from ._setup import unwrap
from ._state import named_infos

__all__ = ["ParamRow", "describe"]


@dataclass(frozen=True)
class ParamRow:
    """What muP does to one parameter.

    Attributes:
        name: parameter name.
        shape, base_shape: sizes, and base sizes (None for finite dimensions).
        role: "input", "hidden", "output", "vector" or "fixed".
        width_mult, fan_in_mult, fan_out_mult: width multipliers.
        std: current standard deviation of the entries (0 for one entry).
        multiplier: forward multiplier on the parameter (readouts: output_mult /
            width_mult; 1 otherwise).
        branch_multiplier: Depth-muP residual multiplier of its branch (1 outside).
        lr_factor, wd_factor, eps_factor: the optimizer's factors.
        tied: shared by an embedding and a readout.
        parametrization: the table that applies.
    """

    name: str
    shape: tuple
    base_shape: tuple
    role: str
    width_mult: float
    fan_in_mult: float
    fan_out_mult: float
    std: float
    multiplier: float
    branch_multiplier: float
    lr_factor: float
    wd_factor: float
    eps_factor: float
    tied: bool
    parametrization: str


def describe(
    model: nn.Module,
    optimizer: str = "adam",
    weight_decay_scaling: str = "inverse_lr",
    eps_scaling: bool = False,
) -> list[ParamRow]:
    """A :class:`ParamRow` for every parameter of a set-up model.

    Args:
        model: a model set up by ``set_base_shapes`` (wrappers allowed).
        optimizer: "sgd" or "adam" (which learning-rate row of Table 3).
        weight_decay_scaling, eps_scaling: as for ``MuAdam`` / ``MuSGD``.

    >>> from torch import nn
    >>> from tensorprograms.mup import MuReadout, set_base_shapes
    >>> def net(w):
    ...     return nn.Sequential(nn.Linear(3, w), nn.ReLU(), MuReadout(w, 1))
    >>> rows = describe(set_base_shapes(net(64), net(16)), "sgd")
    >>> [(r.name, r.role, r.multiplier, r.lr_factor) for r in rows][-2]
    ('2.weight', 'output', 0.25, 4.0)
    """
    inner = unwrap(model)
    multiplier, branch = {}, {}
    for module in inner.modules():
        if is_readout(module):
            multiplier[id(module.weight)] = module._input_scale()
        if isinstance(module, MuResidual):
            for p in module.branch.parameters():
                branch[id(p)] = branch.get(id(p), 1.0) * module.multiplier
    rows = []
    for name, p, info in named_infos(model):
        f = param_factors(info, optimizer, weight_decay_scaling, eps_scaling)
        with torch.no_grad():
            std = p.detach().float().std().item() if p.numel() > 1 else 0.0
        rows.append(
            ParamRow(
                name=name,
                shape=tuple(p.shape),
                base_shape=tuple(info.infshape.base_shape()),
                role=info.role.value,
                width_mult=info.width_mult,
                fan_in_mult=info.fan_in_mult,
                fan_out_mult=info.fan_out_mult,
                std=std,
                multiplier=multiplier.get(id(p), 1.0),
                branch_multiplier=branch.get(id(p), 1.0),
                lr_factor=f["lr"],
                wd_factor=f["weight_decay"],
                eps_factor=f["eps"],
                tied=info.tied,
                parametrization=info.parametrization,
            )
        )
    return rows
