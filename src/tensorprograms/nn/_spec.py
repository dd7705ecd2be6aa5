"""Build networks from JSON-friendly descriptions: lists of [layer_name, kwargs]."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["from_spec"]

# Keyword spellings accepted in specs besides this package's own.
_ALIASES = {"parameterization": "parametrization"}


def _registry() -> dict:
    from .. import nn as package

    return {
        name: obj
        for name, obj in vars(package).items()
        if isinstance(obj, type)
        and name[0].isupper()
        and name not in ("Kernel", "Layer")
    }


def from_spec(spec: Sequence) -> object:
    """A serial network from a list of ``[layer_name, kwargs]`` pairs.

    Layer names and keywords are those of `tensorprograms.nn` (which follow
    neural-tangents' stax: ``Dense`` with ``out_dim, W_std, b_std``, ``Conv`` with
    ``out_chan, filter_shape, strides, padding``, ...); neural-tangents' spelling
    ``parameterization`` is accepted too. ``Residual`` takes
    ``{"block": spec_list, "multiplier": float}``, ``Parallel`` takes
    ``{"branches": [spec_list, ...]}``.

    Args:
        spec: list of pairs [name, kwargs] (kwargs a dict, possibly empty or
            missing).

    Returns:
        `serial` of the layers.

    Example:
        >>> from tensorprograms import nn
        >>> nn.from_spec([["Dense", {"out_dim": 3, "b_std": 0.1}], ["Relu", {}]])
        serial(Dense(out_dim=3, W_std=1.0, b_std=0.1, parametrization='ntk'), Relu())
    """
    from ._combinators import serial

    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise TypeError(f"from_spec: expected a list of [name, kwargs], got {spec!r}")
    registry = _registry()
    layers = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, Sequence) and 1 <= len(item) <= 2:
            name = item[0]
            kwargs = dict(item[1]) if len(item) == 2 and item[1] else {}
        else:
            raise ValueError(
                f"from_spec: entry {i} must be [name, kwargs], got {item!r}"
            )
        if name not in registry:
            raise ValueError(
                f"from_spec: entry {i}: unknown layer {name!r}; known: "
                f"{', '.join(sorted(registry))}"
            )
        kwargs = {_ALIASES.get(k, k): v for k, v in kwargs.items()}
        if name == "Residual" and isinstance(kwargs.get("block"), list | tuple):
            kwargs["block"] = from_spec(kwargs["block"])
        if name == "Parallel":
            branches = kwargs.pop("branches", None)
            if not isinstance(branches, list | tuple) or kwargs:
                raise ValueError(
                    f"from_spec: entry {i} (Parallel) takes only 'branches', a list "
                    f"of spec lists, got {item!r}"
                )
            layers.append(registry[name](*(from_spec(b) for b in branches)))
            continue
        for key in ("filter_shape", "strides", "window_shape"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        try:
            layers.append(registry[name](**kwargs))
        except TypeError as e:
            raise TypeError(f"from_spec: entry {i} ({name}): {e}") from None
    return serial(*layers)
