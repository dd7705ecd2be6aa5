"""``mup.shape``'s names, for code that imports them from there (see
:mod:`tensorprograms.mup._shapes` and :mod:`tensorprograms.mup._setup`)."""

from ._setup import set_base_shapes
from ._shapes import get_shapes, load_base_shapes, make_base_shapes, save_base_shapes
from ._state import get_infshapes

__all__ = [
    "set_base_shapes",
    "make_base_shapes",
    "get_shapes",
    "get_infshapes",
    "save_base_shapes",
    "load_base_shapes",
]
