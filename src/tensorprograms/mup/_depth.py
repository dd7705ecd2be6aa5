"""Depth-muP: residual branches scaled by alpha / sqrt(L) (TP6, THEORY.md section 9).

A residual network x^l = x^(l-1) + (alpha / sqrt(L)) B(x^(l-1); W^l), l = 1..L, has a
depth limit in which features keep learning, and with

- SGD: the learning rate of the branch weights constant in L;
- Adam: the learning rate of the branch weights ~ 1/sqrt(L),

the optimal hyperparameters transfer across depth. Relative to a base depth L0 the
branch multiplier is alpha sqrt(L0 / L) (so the base-depth model is the plain one
when alpha = 1), and ``MuSGD`` / ``MuAdam`` multiply the learning rate of every
parameter inside a :class:`MuResidual` branch by the factor of
``tensorprograms.parametrization.DEPTH_MUP``.

Limitation (TP6): the theory is for blocks with **one** layer. TP6's block is
B(x; W) = MS(phi(W x)), with MS(z) = z - mean_i z_i the mean subtraction over the
width (phi = abs or relu has a positive mean, which L branches would otherwise add
up to a common vector of size alpha sqrt(L)); among homogeneous nonlinearities
phi = abs maximises the diversity of the features of different blocks and trains
best. The built-in ``resmlp`` task uses this block. With two layers per block (a
transformer MLP, a ResNet basic block) no depth scaling gives an ideal limit and
transfer across depth is imperfect; the scaling is still applied but comes with no
guarantee.
"""

from __future__ import annotations

from torch import nn

from ..parametrization import DEPTH_MUP

__all__ = ["MuResidual", "depth_mults"]


class MuResidual(nn.Module):
    """x + alpha sqrt(L0 / L) branch(x): a Depth-muP residual block (TP6).

    Args:
        branch: the block's branch B (one layer for the theory to apply).
        depth: number L of residual blocks of the network.
        base_depth: L0, the depth at which hyperparameters were tuned (default L:
            no depth scaling).
        alpha: branch multiplier at the base depth (a transferable hyperparameter).

    Shapes: input and output of ``branch`` must match, (..., width).

    >>> import torch
    >>> from torch import nn
    >>> block = MuResidual(nn.Linear(4, 4), depth=16, base_depth=4)
    >>> block.multiplier
    0.5
    >>> block(torch.zeros(2, 4)).shape
    torch.Size([2, 4])
    """

    def __init__(self, branch: nn.Module, depth: int, base_depth=None, alpha=1.0):
        super().__init__()
        base_depth = depth if base_depth is None else base_depth
        self.branch = branch
        self.depth = int(depth)
        self.base_depth = int(base_depth)
        self.alpha = float(alpha)
        self.multiplier = DEPTH_MUP.branch_multiplier(depth, base_depth, alpha)

    def forward(self, x):
        y = self.branch(x)
        if self.multiplier != 1.0:
            y = y * self.multiplier
        return x + y

    def extra_repr(self) -> str:
        return f"depth={self.depth}, base_depth={self.base_depth}, alpha={self.alpha}"


def depth_mults(model: nn.Module) -> dict[int, float]:
    """L / L0 by parameter id for every parameter inside a :class:`MuResidual`.

    >>> from torch import nn
    >>> m = nn.Sequential(MuResidual(nn.Linear(2, 2), 8, 2), nn.Linear(2, 1))
    >>> sorted(depth_mults(m).values())
    [4.0, 4.0]
    """
    out = {}
    for module in model.modules():
        if isinstance(module, MuResidual):
            for p in module.branch.parameters():
                out[id(p)] = module.depth / module.base_depth
    return out
