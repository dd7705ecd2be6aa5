"""The muP metadata kept beside a model, not on its tensors.

``set_base_shapes`` stores one :class:`MuState` in the model's ``__dict__`` under
``_tp_mup``: parameter infos by name, the init rescaling already applied (so that a
second call is harmless) and the parametrization. Being a plain attribute of the
module, it travels with ``copy.deepcopy``, ``pickle``/``torch.save`` of the module,
``torch.compile`` (``OptimizedModule._orig_mod``), ``DistributedDataParallel``
(``.module``) and FSDP (which keeps the module objects). Parameter tensors also get a
``p.infshape`` attribute for code written for ``mup``, but nothing here relies on it:
a tensor without it is found through a weak registry of set-up models.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from ._shapes import ParamInfo, clean_name

STATE_ATTR = "_tp_mup"

# Every live MuState, to map a bare parameter tensor back to its name.
_REGISTRY: weakref.WeakSet = weakref.WeakSet()


@dataclass(eq=False)
class MuState:
    """muP metadata of one model.

    Attributes:
        infos: :class:`ParamInfo` by cleaned parameter name.
        rescaled: init factor already applied to each parameter by set-up.
        parametrization: name of the parametrization applied ("mup").
        root: the module that holds this state.
    """

    infos: dict[str, ParamInfo]
    rescaled: dict[str, float] = field(default_factory=dict)
    parametrization: str = "mup"
    root: nn.Module | None = None

    def __post_init__(self):
        _REGISTRY.add(self)

    def __setstate__(self, state):
        self.__dict__.update(state)
        _REGISTRY.add(self)

    def __deepcopy__(self, memo):
        new = MuState(
            copy.deepcopy(self.infos, memo),
            dict(self.rescaled),
            self.parametrization,
            copy.deepcopy(self.root, memo),
        )
        # Parameter.__deepcopy__ copies the data only: give the copied parameters
        # (copied before this state, which the module stores after its children)
        # their infshape attributes back, for code written for mup
        if self.root is not None:
            for name, p in self.root.named_parameters():
                q, info = memo.get(id(p)), new.infos.get(clean_name(name))
                if isinstance(q, torch.Tensor) and info is not None:
                    q.infshape = info.infshape
                    q._tp_mup_info = info
        return new


def _holder(model: nn.Module) -> tuple[nn.Module, str] | None:
    """(module holding the state, its name inside ``model``) or None."""
    if STATE_ATTR in model.__dict__:
        return model, ""
    for name, module in model.named_modules():
        if STATE_ATTR in module.__dict__:
            return module, name
    return None


def find_state(model: nn.Module) -> tuple[MuState, str] | None:
    """(state, prefix of the set-up module inside ``model``) or None if not set up.

    Works through wrappers: DDP (``module.``), ``torch.compile`` (``_orig_mod.``),
    FSDP; the prefix is stripped from parameter names before lookup.
    """
    found = _holder(model)
    if found is None:
        return None
    module, prefix = found
    return module.__dict__[STATE_ATTR], prefix


def get_state(model: nn.Module) -> MuState:
    """The :class:`MuState` of a model set up by ``set_base_shapes``.

    Raises:
        ValueError: if neither the model nor a submodule was set up.
    """
    found = find_state(model)
    if found is None:
        raise ValueError(
            f"{type(model).__name__} has no muP base shapes; call "
            "tensorprograms.mup.set_base_shapes(model, base) first"
        )
    return found[0]


def named_infos(model: nn.Module):
    """Yield ``(name, parameter, ParamInfo)`` for every parameter of ``model``.

    ``name`` is as in ``model.named_parameters()``; lookup strips wrapper prefixes.
    """
    found = find_state(model)
    if found is None:
        raise ValueError(
            f"{type(model).__name__} has no muP base shapes; call "
            "tensorprograms.mup.set_base_shapes(model, base) first"
        )
    state, prefix = found
    for name, p in model.named_parameters():
        key = clean_name(clean_name(name), clean_name(prefix))
        info = state.infos.get(key)
        if info is None and "flat_param" in key:
            raise ValueError(
                f"parameter {name!r} is an FSDP flat parameter holding several "
                "parameters with different muP learning rates; wrap with "
                "FullyShardedDataParallel(..., use_orig_params=True) or use FSDP2's "
                "fully_shard"
            )
        if info is None:
            raise ValueError(
                f"parameter {name!r} is not in the model's muP base shapes; was a "
                "parameter added after set_base_shapes? Call set_base_shapes again"
            )
        yield name, p, info


def get_infshapes(model: nn.Module) -> dict:
    """``{name: InfShape}`` for every parameter (``mup.get_infshapes``), read from
    the metadata beside the model, so it also works where tensors lost their
    ``infshape`` attribute (deep copies, FSDP).

    >>> from torch import nn
    >>> from tensorprograms.mup import set_base_shapes
    >>> m = set_base_shapes(nn.Linear(3, 32), nn.Linear(3, 8))
    >>> get_infshapes(m)["weight"].width_mult()
    4.0
    """
    return {name: info.infshape for name, _, info in named_infos(model)}


def info_of_tensor(p) -> ParamInfo:
    """The :class:`ParamInfo` of a parameter tensor of a set-up model.

    Uses ``p.infshape``'s companion attribute when present, else searches the set-up
    models still alive (this finds parameters of deep copies and of FSDP-wrapped
    models, whose tensors lost their attributes).
    """
    info = getattr(p, "_tp_mup_info", None)
    if info is not None:
        return info
    for state in list(_REGISTRY):
        root = state.root
        if root is None:
            continue
        params = dict(root.named_parameters())
        if not any(q is p for q in params.values()):
            continue
        # re-attach the attributes (lost by deepcopy, assign-loading, FSDP) so that
        # the next lookups, and code written for mup, find them directly
        for name, q in params.items():
            info = state.infos.get(clean_name(name))
            if info is not None:
                q.infshape = info.infshape
                q._tp_mup_info = info
        return p._tp_mup_info
    raise ValueError(
        f"a parameter of shape {tuple(p.shape)} belongs to no model set up with "
        "set_base_shapes; call tensorprograms.mup.set_base_shapes(model, base) "
        "before building the optimizer, or pass the model itself"
    )
