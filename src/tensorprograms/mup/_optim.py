"""muP optimizers: per-parameter learning rate, weight decay and epsilon factors.

Implements the learning-rate rows of TP5 Table 3 (THEORY.md section 8), with the
readout in Table 8's multiplier form (its 1/width_mult multiplier lives in
:class:`MuReadout`), via :func:`tensorprograms.parametrization.scaling`:

============  ====================  ===============  ======================
kind          input, biases, gains  output (readout)  hidden (fan_in x fan_out)
============  ====================  ===============  ======================
SGD-like LR   x width_mult          x width_mult      x fan_out_mult / fan_in_mult
Adam-like LR  x 1                   x 1               x 1 / fan_in_mult
============  ====================  ===============  ======================

times the Depth-muP factor for weights inside residual branches (TP6: SGD 1, Adam
(L / L0)^(-1/2)).

**How the factors are kept under LR schedulers.** Each parameter group stores the
*global* hyperparameters in ``lr`` / ``weight_decay`` / ``eps`` (what you passed,
what schedulers read and write, absolute or relative) and muP's ratios in
``mu_lr_factor`` / ``mu_wd_factor`` / ``mu_eps_factor``. A step pre-hook multiplies
the group's values by the factors just for the step and a post-hook restores them.
So ``StepLR``, ``LambdaLR``, ``OneCycleLR``, ``CyclicLR`` or a manual
``group["lr"] = x`` all keep muP's ratios; the effective values are
:func:`effective_hparams`. (``mup`` stores the scaled values instead, which
schedulers that set absolute values overwrite.) PyTorch drops hooks when an
optimizer is pickled or deep-copied, so optimizers of ``torch.optim`` are returned
as a thin subclass (``MuOptimizer_Adam`` for ``Adam``, still an ``Adam``) whose
``__setstate__`` puts the hooks back; an optimizer class from elsewhere is used as
is (save its ``state_dict()`` and load it into a new muP optimizer instead).

**Weight decay.** ``weight_decay_scaling="inverse_lr"`` (default, as ``mup``)
divides weight decay by the LR factor, so every parameter decays by the same
fraction lr * weight_decay per step whatever its width (for AdamW's decoupled decay
p <- p - lr_eff * wd_eff * p this product is exactly width-independent; for SGD and
Adam's L2 decay it keeps lr * wd fixed). ``"none"`` leaves weight decay alone, so
AdamW's decay per step follows each group's learning rate (lr_eff * wd).

**Epsilon.** With ``eps_scaling=True``, Adam's epsilon is multiplied by n^-d
(TP4b): 1/width_mult for every parameter with a width, since in muP (readout in
multiplier form) all gradient entries are Theta(1/width). Off by default, as in
``mup``; it matters when epsilon is not small against the gradients at the widest
width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW

from ..parametrization import DEPTH_MUP, get_parametrization, scaling
from ._setup import unwrap
from ._shapes import ParamInfo, Role, clean_name
from ._state import info_of_tensor, named_infos

__all__ = [
    "MuSGD",
    "MuAdam",
    "MuAdamW",
    "mu_param_groups",
    "mu_optimizer",
    "attach_mu_hooks",
    "effective_hparams",
    "param_factors",
]

_KINDS = ("sgd", "adam")
_WD_MODES = ("inverse_lr", "none")
_FACTOR_KEYS = (("lr", "mu_lr_factor"), ("weight_decay", "mu_wd_factor"))
_EPS_KEY = ("eps", "mu_eps_factor")
_SAVED = "_mu_saved"


def param_factors(
    info: ParamInfo,
    kind: str,
    weight_decay_scaling: str = "inverse_lr",
    eps_scaling: bool = False,
) -> dict[str, float]:
    """muP's ``{"lr", "weight_decay", "eps"}`` factors for one parameter.

    Args:
        info: the parameter's :class:`ParamInfo`.
        kind: "sgd" (SGD-like updates) or "adam" (entrywise normalised updates).
        weight_decay_scaling: "inverse_lr" or "none" (module docstring).
        eps_scaling: scale Adam's epsilon (module docstring).

    >>> from tensorprograms.mup._shapes import InfDim, InfShape, ParamInfo, Role
    >>> w = ParamInfo("w", InfShape((InfDim(8, 32), InfDim(8, 32))), Role.HIDDEN, "")
    >>> param_factors(w, "adam")
    {'lr': 0.25, 'weight_decay': 4.0, 'eps': 1.0}
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if weight_decay_scaling not in _WD_MODES:
        raise ValueError(
            f"weight_decay_scaling must be one of {_WD_MODES}, "
            f"got {weight_decay_scaling!r}"
        )
    if info.role is Role.FIXED:
        lr, eps = 1.0, 1.0
    else:
        if info.role is Role.HIDDEN:
            fan_in, fan_out = info.fan_in_mult, info.fan_out_mult
        else:
            fan_in = fan_out = info.width_mult
        s = scaling(
            info.role.value,
            fan_in_mult=fan_in,
            fan_out_mult=fan_out,
            parametrization=get_parametrization(info.parametrization, kind),
            multiplier_exponent=info.multiplier_exponent,
        )
        lr, eps = s.lr, s.eps
    if info.depth_mult != 1.0 and info.role is not Role.FIXED:
        lr *= DEPTH_MUP.lr_factor(kind, info.depth_mult, 1.0)
    wd = 1.0 / lr if weight_decay_scaling == "inverse_lr" else 1.0
    return {"lr": lr, "weight_decay": wd, "eps": eps if eps_scaling else 1.0}


def _user_groups(params) -> list[dict]:
    """Normalise ``params`` to a list of groups whose ``params`` are (name, tensor)."""
    if isinstance(params, nn.Module):
        return [{"params": [(n, p, info) for n, p, info in named_infos(params)]}]
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(items[0], Mapping):
        items = [{"params": items}]
    groups = []
    for g in items:
        if not isinstance(g, Mapping) or "params" not in g:
            raise TypeError(
                "parameter groups must be dicts with a 'params' entry, got "
                f"{type(g).__name__}"
            )
        ps = g["params"]
        if isinstance(ps, nn.Module):
            entries = list(named_infos(ps))
        else:
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            entries = []
            for q in ps:
                if isinstance(q, tuple):
                    q = q[1]
                entries.append((None, q, info_of_tensor(q)))
        groups.append({**g, "params": entries})
    return groups


def mu_param_groups(
    params,
    optimizer: str = "adam",
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    weight_decay_scaling: str = "inverse_lr",
    eps_scaling: bool = False,
) -> list[dict]:
    """Parameter groups with muP factors, for any ``torch.optim`` optimizer.

    Splits each group by the factors of :func:`param_factors`. Each group keeps the
    global ``lr`` / ``weight_decay`` and gets ``mu_lr_factor``, ``mu_wd_factor``
    (and ``mu_eps_factor``) and ``mu_names`` (the parameters' names); build the
    optimizer with :func:`mu_optimizer`, or call :func:`attach_mu_hooks` on it,
    which applies the factors at every step.

    Args:
        params: a set-up model (best: works after deepcopy and under FSDP), its
            ``parameters()``, ``named_parameters()``, or a list of group dicts.
        optimizer: "sgd" for SGD-like optimizers (SGD, momentum, ASGD), "adam" for
            Adam-like ones (Adam, AdamW, RMSprop, Adagrad, ...).
        lr, weight_decay: global values for groups that do not set them.
        weight_decay_scaling, eps_scaling: see the module docstring.

    Returns:
        list of parameter-group dicts.

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes, MuReadout
    >>> def net(w):
    ...     return nn.Sequential(nn.Linear(3, w), nn.ReLU(), nn.Linear(w, w),
    ...                          nn.ReLU(), MuReadout(w, 1))
    >>> model = set_base_shapes(net(64), net(16))
    >>> groups = mu_param_groups(model, "adam", lr=1e-3)
    >>> sorted(g["mu_lr_factor"] for g in groups)
    [0.25, 1.0]
    """
    if optimizer not in _KINDS:
        raise ValueError(f"optimizer must be one of {_KINDS}, got {optimizer!r}")
    out = []
    for g in _user_groups(params):
        extra = {k: v for k, v in g.items() if k != "params"}
        if lr is not None:
            extra.setdefault("lr", lr)
        if weight_decay is not None:
            extra.setdefault("weight_decay", weight_decay)
        buckets: dict[tuple, dict] = {}
        for _, p, info in g["params"]:
            f = param_factors(info, optimizer, weight_decay_scaling, eps_scaling)
            key = (f["lr"], f["weight_decay"], f["eps"])
            if key not in buckets:
                group = {**extra, "params": [], "mu_names": []}
                group["mu_lr_factor"] = f["lr"]
                group["mu_wd_factor"] = f["weight_decay"]
                if eps_scaling:
                    group["mu_eps_factor"] = f["eps"]
                buckets[key] = group
            buckets[key]["params"].append(p)
            buckets[key]["mu_names"].append(info.name)
        out.extend(buckets.values())
    return out


def _restore(optimizer, *_) -> None:
    for g in optimizer.param_groups:
        saved = g.pop(_SAVED, None)
        if saved is not None:
            g.update(saved)


def _apply(optimizer, *_) -> None:
    _restore(optimizer)  # a previous step that raised left scaled values behind
    for g in optimizer.param_groups:
        saved = {}
        for key, fkey in (*_FACTOR_KEYS, _EPS_KEY):
            factor = g.get(fkey)
            if factor is None or factor == 1.0 or key not in g:
                continue
            saved[key] = g[key]
            g[key] = g[key] * factor
        if saved:
            g[_SAVED] = saved


def applied_factor(optimizer, group: Mapping, key: str) -> float:
    """The factor ``group[key]`` (e.g. "mu_lr_factor") that a step of ``optimizer``
    applies: 1 when the optimizer has no muP hooks (groups from
    :func:`mu_param_groups` given to a plain optimizer)."""
    if not optimizer.__dict__.get("_tp_mu_hooked", False):
        return 1.0
    return group.get(key, 1.0)


def attach_mu_hooks(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` apply each group's ``mu_*_factor`` (idempotent).

    Registers a step pre-hook (multiply ``lr``, ``weight_decay``, ``eps`` by the
    factors) and a post-hook (restore them), so that schedulers see and set the
    global values.

    Returns:
        ``optimizer``.
    """
    if not optimizer.__dict__.get("_tp_mu_hooked", False):
        optimizer.register_step_pre_hook(_apply)
        optimizer.register_step_post_hook(_restore)
        optimizer.__dict__["_tp_mu_hooked"] = True
    return optimizer


def mu_optimizer(
    impl: type[torch.optim.Optimizer],
    params,
    kind: str,
    *,
    weight_decay_scaling: str = "inverse_lr",
    eps_scaling: bool = False,
    **kwargs,
) -> torch.optim.Optimizer:
    """Any ``torch.optim`` optimizer class with muP factors.

    Args:
        impl: optimizer class, e.g. ``torch.optim.RMSprop``.
        params: as :func:`mu_param_groups`.
        kind: "sgd" or "adam" (how its updates scale, see :func:`mu_param_groups`).
        weight_decay_scaling, eps_scaling: see the module docstring.
        **kwargs: passed to ``impl`` (``lr``, ``weight_decay``, ...).

    >>> from torch import nn, optim
    >>> from tensorprograms.mup import set_base_shapes
    >>> model = set_base_shapes(nn.Linear(4, 32), nn.Linear(4, 8))
    >>> opt = mu_optimizer(optim.RMSprop, model, "adam", lr=0.01)
    >>> [g["lr"] for g in opt.param_groups]
    [0.01]
    """
    groups = mu_param_groups(
        params,
        kind,
        kwargs.get("lr"),
        kwargs.get("weight_decay"),
        weight_decay_scaling=weight_decay_scaling,
        eps_scaling=eps_scaling,
    )
    return attach_mu_hooks(_mu_class(impl)(groups, **kwargs))


_PREFIX = "MuOptimizer_"
_MU_CLASSES: dict[type, type] = {}


def _setstate_for(impl: type):
    def __setstate__(self, state):
        impl.__setstate__(self, state)
        self.__dict__.pop("_tp_mu_hooked", None)
        attach_mu_hooks(self)

    return __setstate__


def _mu_class(impl: type) -> type:
    """``impl`` itself, or for a ``torch.optim`` class a subclass that keeps the
    muP hooks through pickling and deep copies (found again by name on unpickling,
    see the module ``__getattr__``)."""
    if getattr(torch.optim, impl.__name__, None) is not impl:
        return impl
    cls = _MU_CLASSES.get(impl)
    if cls is None:
        name = _PREFIX + impl.__name__
        doc = f"``torch.optim.{impl.__name__}`` with muP step hooks (see MuAdam)."
        attrs = {
            "__setstate__": _setstate_for(impl),
            "__module__": __name__,
            "__doc__": doc,
        }
        cls = type(name, (impl,), {**attrs, "__qualname__": name})
        _MU_CLASSES[impl] = cls
    return cls


def __getattr__(name: str):
    if name.startswith(_PREFIX):
        impl = getattr(torch.optim, name[len(_PREFIX) :], None)
        if isinstance(impl, type) and issubclass(impl, torch.optim.Optimizer):
            return _mu_class(impl)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def MuSGD(params, impl=SGD, **kwargs):
    """SGD (with momentum, Nesterov, weight decay) with muP learning rates.

    Same signature as ``mup.MuSGD``; ``params`` may also be the model itself.
    Extra keywords ``weight_decay_scaling`` and ``eps_scaling`` as in the module
    docstring. TP5 Table 3, SGD row (readout in Table 8's multiplier form).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> model = set_base_shapes(nn.Linear(4, 32), nn.Linear(4, 8))
    >>> opt = MuSGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> effective_hparams(opt)["weight"]["lr"]
    0.4
    """
    return mu_optimizer(impl, params, "sgd", **kwargs)


def MuAdam(params, impl=Adam, **kwargs):
    """Adam with muP learning rates (TP5 Table 3, Adam row; same signature as
    ``mup.MuAdam``, ``params`` may also be the model).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> model = set_base_shapes(nn.Linear(32, 32), nn.Linear(8, 8))
    >>> effective_hparams(MuAdam(model, lr=0.1))["weight"]["lr"]
    0.025
    """
    return mu_optimizer(impl, params, "adam", **kwargs)


def MuAdamW(params, **kwargs):
    """AdamW with muP learning rates; decoupled weight decay per
    ``weight_decay_scaling`` (module docstring). Same signature and defaults as
    ``mup.MuAdamW``: without ``weight_decay`` there is none (``mup`` sets 0 in every
    group; ``torch.optim.AdamW`` alone would use 0.01).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> model = set_base_shapes(nn.Linear(32, 32), nn.Linear(8, 8))
    >>> h = effective_hparams(MuAdamW(model, lr=0.1, weight_decay=0.01))["weight"]
    >>> round(h["lr"] * h["weight_decay"], 12)
    0.001
    """
    kwargs.setdefault("weight_decay", 0.0)
    return mu_optimizer(AdamW, params, "adam", **kwargs)


def effective_hparams(optimizer: torch.optim.Optimizer, model=None) -> dict:
    """The values each parameter is actually stepped with: ``lr``, ``weight_decay``
    and ``eps`` times the group's muP factors (not applied, so not counted, by an
    optimizer without :func:`attach_mu_hooks`).

    Args:
        optimizer: a muP optimizer (or any optimizer: factors default to 1).
        model: if given, names parameters the groups do not name.

    Returns:
        dict parameter name -> {"lr", "weight_decay", "eps" (when the group has
        them)}; names as recorded in ``group["mu_names"]`` (wrapper prefixes
        removed).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> model = set_base_shapes(nn.Linear(32, 32), nn.Linear(8, 8))
    >>> effective_hparams(MuSGD(model, lr=1.0))["bias"]["lr"]
    4.0
    """
    names = {}
    if model is not None:
        names = {id(p): clean_name(n) for n, p in unwrap(model).named_parameters()}
    out = {}
    for g in optimizer.param_groups:
        saved = g.get(_SAVED, {})
        values = {}
        for key, fkey in (*_FACTOR_KEYS, _EPS_KEY):
            if key in g:
                values[key] = saved.get(key, g[key]) * applied_factor(
                    optimizer, g, fkey
                )
        recorded = g.get("mu_names") or [None] * len(g["params"])
        for p, name in zip(g["params"], recorded):
            if name is None:
                name = names.get(id(p)) or info_of_tensor(p).name
            out[name] = dict(values)
    return out
