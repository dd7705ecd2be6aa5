"""Readout layers with the muP output multiplier (TP5 Table 8's form of Table 3).

TP5 Table 3 gives the readout (output weights) init variance 1/fan_in^2 and
learning rate 1/fan_in (SGD and Adam). The multiplier symmetry (THEORY.md section 8:
a multiplier theta with init std / theta, SGD LR / theta^2, Adam LR / theta trains
identically) moves this into a layer multiplier theta = 1/width_mult applied to
the readout's input, with width-independent init and Adam learning rate and an SGD
learning rate growing like width_mult: the form of TP5 Table 8 used by ``mup``.
At base shapes (width_mult = 1, output_mult = 1) these layers are exactly
``nn.Linear`` / ``nn.Conv*d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MuReadout",
    "MuSharedReadout",
    "MuReadoutConv1d",
    "MuReadoutConv2d",
    "is_readout",
]


class _Readout:
    """Behaviour shared by the readout layers: the output multiplier."""

    output_mult: float
    readout_zero_init: bool
    _mu_width_mult: float | None

    def width_mult(self) -> float:
        """fan_in / base fan_in of the readout, set by ``set_base_shapes``."""
        if self._mu_width_mult is None:
            raise RuntimeError(
                f"{type(self).__name__} has no width multiplier yet; call "
                "tensorprograms.mup.set_base_shapes(model, base) before using it"
            )
        return self._mu_width_mult

    def _input_scale(self) -> float:
        return self.output_mult / self.width_mult()

    def __init__(self, *args, readout_zero_init=False, output_mult=1.0, **kwargs):
        self.output_mult = float(output_mult)
        self.readout_zero_init = bool(readout_zero_init)
        self._mu_width_mult = None
        super().__init__(*args, **kwargs)

    def reset_parameters(self) -> None:
        """PyTorch's init of the layer, or zeros with ``readout_zero_init``."""
        self._zero_or_default(super().reset_parameters)

    def _rescale_parameters(self) -> None:
        """Multiply the weight (unless tied) and bias by sqrt(width_mult), once.

        The conversion of PyTorch's init to the readout's that ``set_base_shapes``
        does (``mup``'s method of this name). After ``set_base_shapes(...,
        rescale_params=True)`` it has been done, and calling it raises
        ``RuntimeError`` as in ``mup``; after ``rescale_params=False`` it applies
        the factor once.
        """
        if self.__dict__.get("_has_rescaled_params", False):
            raise RuntimeError(
                f"this {type(self).__name__} was already rescaled (by set_base_shapes "
                "or an earlier call); set_base_shapes is idempotent and needs no "
                "manual rescaling"
            )
        factor = self.width_mult() ** 0.5
        with torch.no_grad():
            if not getattr(self, "_tied", False):
                self.weight.mul_(factor)
            if self.bias is not None:
                self.bias.mul_(factor)
        self._has_rescaled_params = True

    def _zero_or_default(self, default_reset) -> None:
        if self.readout_zero_init:
            with torch.no_grad():
                self.weight.zero_()
                if self.bias is not None:
                    self.bias.zero_()
        else:
            default_reset()


class _ConvReadout(_Readout):
    """Convolutional readouts: scale the input, then the layer's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._input_scale()
        if scale != 1.0:
            x = x * scale
        return super().forward(x)


def is_readout(module: nn.Module) -> bool:
    """True for the muP readout layers of this module."""
    return isinstance(module, _Readout)


class MuReadout(_Readout, nn.Linear):
    """``nn.Linear`` readout with output multiplier ``output_mult / width_mult``.

    y = W (output_mult * x / width_mult) + b, with width_mult = fan_in / base_fan_in
    (TP5 Table 8: muP's readout in multiplier form; see the module docstring).
    ``set_base_shapes`` multiplies PyTorch's default init of W and b by
    sqrt(width_mult), making it width-independent.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        readout_zero_init: initialise W and b to zero (TP5 section 7: removes the
            initial output and its transient).
        output_mult: constant multiplier (a tunable, transferable hyperparameter).

    Shapes: input (..., in_features), output (..., out_features).

    >>> import torch
    >>> from torch import nn
    >>> from tensorprograms.mup import MuReadout, set_base_shapes
    >>> def net(w):
    ...     return nn.Sequential(nn.Linear(4, w), nn.ReLU(), MuReadout(w, 2))
    >>> model = set_base_shapes(net(64), net(8))
    >>> model[2].width_mult()
    8.0
    >>> model(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._input_scale()
        if scale == 1.0:
            return F.linear(x, self.weight, self.bias)
        # W (s x) = (s W) x: scale whichever of the two is smaller (cheaper)
        if x.numel() >= self.weight.numel():
            return F.linear(x, self.weight * scale, self.bias)
        return F.linear(x * scale, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_mult={self.output_mult}"


class MuSharedReadout(MuReadout):
    """:class:`MuReadout` whose weight is tied to an embedding's weight.

    y = E (output_mult * x / width_mult) + b with E the (vocab, width) embedding
    weight. Unlike ``mup``, set-up does not rescale the shared weight (the embedding's
    N(0, 1) init is already width-independent, which is what the readout in
    multiplier form needs); only the bias is rescaled.

    Args:
        weight: the embedding's weight, shape (vocab, width).
        bias: whether to add a bias of shape (vocab,).
        readout_zero_init, output_mult: as :class:`MuReadout` (zero init does not
            touch the shared weight).

    >>> import torch
    >>> from torch import nn
    >>> emb = nn.Embedding(10, 16)
    >>> head = MuSharedReadout(emb.weight, bias=False)
    >>> head.weight is emb.weight
    True
    """

    def __init__(self, weight: nn.Parameter, bias: bool = True, **kwargs):
        if weight.dim() != 2:
            raise ValueError(
                "MuSharedReadout expects an embedding weight of shape (vocab, width), "
                f"got shape {tuple(weight.shape)}"
            )
        self._tied = False
        vocab, width = weight.shape
        # in_features = width, out_features = vocab: the bias has one entry per
        # output (mup 1.0.0 builds it with the width's size, so bias=True fails
        # there; with bias=False the random draws are the same as mup's)
        super().__init__(width, vocab, bias=bias, **kwargs)
        self.weight = weight
        self._tied = True

    def reset_parameters(self) -> None:
        """Reset the bias only (PyTorch's bound 1/sqrt(fan_in), or zeros)."""
        if not self._tied:
            super().reset_parameters()
            return
        if self.bias is None:
            return
        with torch.no_grad():
            if self.readout_zero_init:
                self.bias.zero_()
            else:
                bound = self.weight.shape[1] ** -0.5
                self.bias.uniform_(-bound, bound)


class MuReadoutConv1d(_ConvReadout, nn.Conv1d):
    """``nn.Conv1d`` readout (e.g. a 1x1 conv head) with multiplier 1/width_mult.

    y = conv(output_mult * x / width_mult) + b, width_mult of ``in_channels``.
    Arguments as ``nn.Conv1d`` plus ``readout_zero_init`` and ``output_mult``.

    >>> MuReadoutConv1d(8, 3, 1).readout_zero_init
    False
    """


class MuReadoutConv2d(_ConvReadout, nn.Conv2d):
    """``nn.Conv2d`` readout with multiplier 1/width_mult (see MuReadoutConv1d).

    >>> MuReadoutConv2d(8, 3, 1, output_mult=2.0).output_mult
    2.0
    """
