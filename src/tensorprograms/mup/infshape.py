"""``mup.infshape``'s names, for code that imports them from there (see
:mod:`tensorprograms.mup._shapes`)."""

from ._shapes import InfDim, InfShape

__all__ = ["InfDim", "InfShape"]
