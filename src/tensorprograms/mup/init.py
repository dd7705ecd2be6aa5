"""Initialisers that follow muP: drop-ins for ``torch.nn.init`` (TP5 Table 3 / 8).

Rule, for a tensor of a model set up by ``set_base_shapes``: evaluate PyTorch's
formula for the std at the *base* shapes, then multiply by fan_in_mult^(-1/2) if
the tensor is a hidden weight. So hidden weights get variance ~ 1/fan_in, input
weights, biases and readout weights (in multiplier form) a width-independent
variance, as in TP5 Table 3 with the readout of Table 8; at base shapes every
function equals its ``torch.nn.init`` namesake. The std arguments (``std``,
``gain``, ``a``, bounds) must not themselves depend on width. Tensors of a model
set up with ``parametrization="sp"`` get PyTorch's behaviour.
"""

from __future__ import annotations

import math

import torch
from torch.nn import init as torch_init

from ._shapes import Role
from ._state import info_of_tensor

__all__ = [
    "normal_",
    "uniform_",
    "ones_",
    "eye_",
    "trunc_normal_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
]


def _width_factor(tensor, mean_zero: bool) -> tuple[float, float, float]:
    """(hidden factor fan_in_mult^-1/2, fan_in_mult, fan_out_mult) of a tensor."""
    info = info_of_tensor(tensor)
    if info.parametrization not in ("mup", "sp"):
        raise ValueError(
            f"muP init helpers cover parametrizations 'mup' and 'sp'; parameter "
            f"{info.name!r} was set up with {info.parametrization!r}: keep PyTorch's "
            "init and let set_base_shapes rescale it"
        )
    if info.parametrization == "sp":
        return 1.0, 1.0, 1.0
    if info.role is Role.HIDDEN:
        if not mean_zero:
            raise ValueError(
                f"hidden weight {info.name!r} needs a zero-mean init for muP (its "
                "std shrinks with width, a mean would not)"
            )
        return info.fan_in_mult**-0.5, info.fan_in_mult, info.fan_out_mult
    if len(info.infshape) >= 2:
        return 1.0, info.fan_in_mult, info.fan_out_mult
    return 1.0, 1.0, 1.0


def normal_(tensor, mean=0.0, std=1.0):
    """N(mean, std^2) at base shapes; hidden weights: std / sqrt(fan_in_mult).

    >>> import torch
    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(64, 64), nn.Linear(16, 16))
    >>> _ = normal_(m.weight, std=0.02)
    >>> round(m.weight.std().item() / 0.01, 1)  # 0.02 / sqrt(4)
    1.0
    """
    s, _, _ = _width_factor(tensor, mean == 0)
    return torch_init.normal_(tensor, mean, std * s)


def uniform_(tensor, a=0.0, b=1.0):
    """U(a, b) at base shapes; hidden weights: both bounds / sqrt(fan_in_mult).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(64, 64), nn.Linear(16, 16))
    >>> uniform_(m.weight, -1.0, 1.0).abs().max().item() <= 0.5
    True
    """
    s, _, _ = _width_factor(tensor, a == -b)
    return torch_init.uniform_(tensor, a * s, b * s)


def _constant_init(tensor, what: str) -> None:
    info = info_of_tensor(tensor)
    if info.role is Role.HIDDEN and info.parametrization == "mup":
        raise ValueError(
            f"{what} on hidden weight {info.name!r}: muP needs entries that shrink "
            "like fan_in^-1/2, a constant init does not; use normal_ or kaiming_*"
        )


def ones_(tensor):
    """``torch.nn.init.ones_`` for gains, biases and other tensors that are not
    hidden weights (a hidden weight raises ``ValueError``).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.LayerNorm(64), nn.LayerNorm(16))
    >>> ones_(m.weight).sum().item()
    64.0
    """
    _constant_init(tensor, "ones_")
    return torch_init.ones_(tensor)


def eye_(tensor):
    """``torch.nn.init.eye_`` for 2-D tensors that are not hidden weights (a hidden
    weight raises ``ValueError``).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(4, 32), nn.Linear(4, 8))
    >>> eye_(m.weight).trace().item()
    4.0
    """
    _constant_init(tensor, "eye_")
    return torch_init.eye_(tensor)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Truncated normal; for hidden weights mean, std and bounds scale together.

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(64, 64), nn.Linear(16, 16))
    >>> trunc_normal_(m.weight).abs().max().item() <= 1.0
    True
    """
    s, _, _ = _width_factor(tensor, mean == 0 and a == -b)
    return torch_init.trunc_normal_(tensor, mean * s, std * s, a * s, b * s)


def _base_fans(tensor, fan_in_mult, fan_out_mult) -> tuple[float, float]:
    fan_in, fan_out = torch_init._calculate_fan_in_and_fan_out(tensor)
    return fan_in / fan_in_mult, fan_out / fan_out_mult


def _kaiming_std(tensor, a, mode, nonlinearity) -> float:
    s, fi, fo = _width_factor(tensor, True)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    base_in, base_out = _base_fans(tensor, fi, fo)
    fan = base_in if mode == "fan_in" else base_out
    return s * torch_init.calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """``torch.nn.init.kaiming_normal_`` evaluated at base fans (module docstring).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(256, 256), nn.Linear(16, 16))
    >>> w = kaiming_normal_(m.weight, nonlinearity="relu")
    >>> round(w.std().item() * 16 / 2**0.5, 1)  # sqrt(2 / fan_in), fan_in = 256
    1.0
    """
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    with torch.no_grad():
        return tensor.normal_(0.0, std)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """``torch.nn.init.kaiming_uniform_`` evaluated at base fans.

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(8, 8), None)  # its own base: PyTorch
    >>> kaiming_uniform_(m.weight, a=5**0.5).abs().max().item() <= 8**-0.5
    True
    """
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def _xavier_std(tensor, gain) -> float:
    s, fi, fo = _width_factor(tensor, True)
    base_in, base_out = _base_fans(tensor, fi, fo)
    return s * gain * math.sqrt(2.0 / (base_in + base_out))


def xavier_normal_(tensor, gain=1.0):
    """``torch.nn.init.xavier_normal_`` evaluated at base fans.

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(64, 64), nn.Linear(16, 16))
    >>> round(xavier_normal_(m.weight).std().item() * 8, 1)  # sqrt(2/32) / 2
    1.0
    """
    std = _xavier_std(tensor, gain)
    with torch.no_grad():
        return tensor.normal_(0.0, std)


def xavier_uniform_(tensor, gain=1.0):
    """``torch.nn.init.xavier_uniform_`` evaluated at base fans.

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(64, 64), nn.Linear(16, 16))
    >>> xavier_uniform_(m.weight).abs().max().item() <= 3**0.5 / 8
    True
    """
    bound = math.sqrt(3.0) * _xavier_std(tensor, gain)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)
