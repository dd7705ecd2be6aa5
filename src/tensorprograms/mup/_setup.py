"""``set_base_shapes``: attach muP metadata to a model and fix its init.

Implements the init column of TP5 Table 3 (THEORY.md section 8) for a model built
with PyTorch's default init and :class:`MuReadout` readouts (Table 8's multiplier
form for the output layer):

- hidden weights: PyTorch's init already has variance ~ 1/fan_in: unchanged;
- input weights: variance 1/fan_in with a finite fan_in: unchanged;
- biases of ``nn.Linear`` / ``nn.Conv*d``: PyTorch draws them with a bound
  1/sqrt(fan_in) that shrinks with the width; multiplied by sqrt(fan_in_mult) so
  that they are width-independent (Table 3: "all biases" like input weights);
- readout weights and biases: multiplied by sqrt(width_mult) (width-independent),
  the readout's 1/width_mult multiplier then gives the effective 1/fan_in^2
  variance of Table 3. Tied readouts keep the embedding's init.

At base shapes every factor is 1: the model is exactly the plain PyTorch model.
Set-up is idempotent: the factors already applied are remembered beside the model,
so a second call (or a call with another base) applies only the difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..parametrization import get_parametrization
from ._depth import depth_mults
from ._readout import is_readout
from ._shapes import (
    BaseShapes,
    Role,
    _as_shapes,
    _zip_base,
    align_names,
    clean_name,
    infer_infos,
    is_infshape,
    param_shapes,
    plain_base,
    save_base_shapes,
)
from ._state import STATE_ATTR, MuState

__all__ = ["set_base_shapes", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers.

    >>> from torch import nn
    >>> m = nn.Linear(2, 2)
    >>> unwrap(nn.DataParallel(m)) is m
    True
    """
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _explicit(base) -> bool:
    """True when ``base`` already marks widths (None = finite) rather than sizes."""
    if isinstance(base, BaseShapes | str):
        return True
    if isinstance(base, Mapping):
        return any(is_infshape(v) for v in base.values())
    return False


def _resolve_base(model, base, delta) -> dict[str, tuple]:
    model_shapes = param_shapes(model)
    if base is None:
        base = model
    base_shapes = align_names(_as_shapes(base, "base"), model_shapes)
    if delta is not None:
        delta_shapes = align_names(_as_shapes(delta, "delta"), model_shapes)
        return _zip_base(base_shapes, delta_shapes)
    if _explicit(base):
        return base_shapes
    return plain_base(base_shapes, model_shapes)


def _torch_std_factor(model: nn.Module, infos, names) -> dict[str, float]:
    """How PyTorch's default init of each parameter scales with width, vs. base.

    ``nn.Linear`` / ``nn.Conv*d`` draw weight and bias with std ~ fan_in^(-1/2).
    Every other hidden weight (``nn.MultiheadAttention``'s ``in_proj_weight``,
    recurrent weights, custom parameters) is taken to be drawn like them, with
    std ~ fan_in^(-1/2) (PyTorch's layers all do; ``mup`` assumes the same and
    leaves such weights alone). Embeddings, norms and other custom parameters are
    taken as width-independent.
    """
    out = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            continue
        if not isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            continue
        if not isinstance(weight, torch.Tensor) or id(weight) not in names:
            continue
        factor = infos[names[id(weight)]].fan_in_mult ** -0.5
        for p in module.parameters(recurse=False):
            if id(p) in names:
                out.setdefault(names[id(p)], factor)
    for module in model.modules():  # a tied weight was drawn by its embedding
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            for p in module.parameters(recurse=False):
                if id(p) in names:
                    out[names[id(p)]] = 1.0
    for name in names.values():
        if infos[name].role is Role.HIDDEN:
            out.setdefault(name, infos[name].fan_in_mult ** -0.5)
    return out


def _target_factors(model: nn.Module, infos, parametrization: str) -> dict:
    """Factor on PyTorch's default init that the parametrization wants (TP5 Table
    3 init row, readouts in Table 8's multiplier form), per parameter name."""
    names = {id(p): clean_name(n) for n, p in model.named_parameters()}
    table = get_parametrization(parametrization, "sgd")  # b is the same for Adam
    torch_std = _torch_std_factor(model, infos, names)
    # PyTorch draws a transposed convolution's weight with std ~ 1/sqrt(out
    # channels); it is kept as drawn, as mup does (its bias is rescaled like any
    # bias). Re-initialise it with tensorprograms.mup.init to get Table 3's scale.
    transposed = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvTransposeNd)
    }
    factors = {}
    for pid, name in names.items():
        if pid in transposed:
            continue
        info = infos[name]
        target = 1.0
        if parametrization == "sp" and info.multiplier_exponent == 0.0:
            # SP is PyTorch's default; biases keep PyTorch's 1/sqrt(fan_in) bound
            # (TP4 writes SP's biases width-independent; same classification).
            target = torch_std.get(name, 1.0)
        elif info.role is not Role.FIXED:
            exps = table.layer(info.role.value)
            exps = exps.with_multiplier(info.multiplier_exponent, table.optimizer)
            target = info.role_width_mult ** (-exps.b)
        factor = target / torch_std.get(name, 1.0)
        if factor != 1.0:
            factors[name] = factor
    return factors


def _check_readouts(model: nn.Module, infos, do_assert: bool) -> None:
    if not do_assert:
        return
    readout = {id(p) for m in model.modules() if is_readout(m) for p in m.parameters()}
    for name, p in model.named_parameters():
        info = infos[clean_name(name)]
        if info.role is Role.OUTPUT and id(p) not in readout:
            width = info.infshape.main
            raise ValueError(
                f"parameter {name!r} ({info.module_type}) maps the width "
                f"(fan_in {width.dim}, base {width.base_dim}) "
                "to a fixed size, so it is a readout: use MuReadout (or "
                "MuReadoutConv*d / MuSharedReadout) instead, or make its fan_out a "
                "width too; do_assert=False skips this check"
            )


def set_base_shapes(
    model: nn.Module,
    base,
    rescale_params: bool = True,
    delta=None,
    savefile: str | None = None,
    do_assert: bool = True,
    roles: Mapping[str, str] | None = None,
    parametrization: str = "mup",
) -> nn.Module:
    """Set up ``model`` for muP relative to a base model (TP5 section 5, Table 3/8).

    Finds each parameter's widths (dimensions that differ from ``base``, or from
    ``delta`` when given) and role, stores them beside the model, sets the readouts'
    1/width_mult multipliers and (``rescale_params``) rescales PyTorch's default
    init to muP's (see the module docstring). Calling it again is harmless.

    Args:
        model: the model to train, at its real width (may be wrapped in DDP or
            ``torch.compile``).
        base: base model, mapping name -> shape, :class:`BaseShapes`, path of a
            base-shapes file, or None (the model is its own base: plain PyTorch).
        rescale_params: rescale the init (set False for a model whose parameters
            already are muP's, e.g. loaded from a muP checkpoint).
        delta: a model (or shapes) at another width, to tell widths from
            dimensions that merely differ from ``base``.
        savefile: write the base shapes there (JSON), to skip building the base
            model later.
        do_assert: raise if an ``nn.Linear`` maps a width to a fixed size (it
            should be a :class:`MuReadout`). With ``do_assert=False`` such a layer
            gets TP5 Table 3's output init and learning rates without multiplier
            (``mup`` trains it like an input layer).
        roles: override the inferred role of named parameters
            ("input" | "hidden" | "output" | "vector" | "fixed").
        parametrization: "mup" (default), or "sp", "ntp", "spectral",
            "mean_field": the table of :mod:`tensorprograms.parametrization` used
            for init here and for learning rates by the optimizers, realised with
            the modules' actual multipliers (readouts: 1/width_mult) through the
            multiplier symmetry. "sp" gives plain PyTorch behaviour at any width.

    Returns:
        ``model`` itself.

    >>> import torch
    >>> from torch import nn
    >>> def net(w):
    ...     return nn.Sequential(nn.Linear(4, w), nn.ReLU(), nn.Linear(w, w))
    >>> torch.manual_seed(0) and None
    >>> model = set_base_shapes(net(32), net(8))
    >>> b = model[0].bias.detach().clone()
    >>> model is set_base_shapes(model, net(8))  # idempotent
    True
    >>> torch.equal(b, model[0].bias)
    True
    """
    inner = unwrap(model)
    base_shapes = _resolve_base(inner, base, delta)
    infos = infer_infos(inner, base_shapes, roles)
    _check_readouts(inner, infos, do_assert)
    depth = depth_mults(inner)
    ids = {clean_name(n): id(p) for n, p in inner.named_parameters()}
    readout_weights = {id(m.weight) for m in inner.modules() if is_readout(m)}
    infos = {
        n: dataclasses.replace(
            i,
            depth_mult=depth.get(ids[n], 1.0),
            parametrization=parametrization,
            multiplier_exponent=1.0 if ids[n] in readout_weights else 0.0,
        )
        for n, i in infos.items()
    }

    old = inner.__dict__.get(STATE_ATTR)
    done = dict(old.rescaled) if old is not None else {}
    targets = _target_factors(inner, infos, parametrization)
    params = {clean_name(n): p for n, p in inner.named_parameters()}
    with torch.no_grad():
        for name in set(targets) | set(done):
            target, previous = targets.get(name, 1.0), done.get(name, 1.0)
            if rescale_params and target != previous:
                params[name].mul_(target / previous)
            done[name] = target

    for module in inner.modules():
        if is_readout(module):
            wname = next(n for n, p in params.items() if p is module.weight)
            module._mu_width_mult = infos[wname].width_mult
            if rescale_params:
                module._has_rescaled_params = True
    for name, p in params.items():
        p.infshape = infos[name].infshape
        p._tp_mup_info = infos[name]

    inner.__dict__[STATE_ATTR] = MuState(infos, done, parametrization, inner)
    if savefile is not None:
        save_base_shapes(
            BaseShapes({n: tuple(i.infshape.base_shape()) for n, i in infos.items()}),
            savefile,
        )
    return model
