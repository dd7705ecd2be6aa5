"""``mup.optim``'s names, for code that imports them from there (see
:mod:`tensorprograms.mup._optim`)."""

from ._optim import MuAdam, MuAdamW, MuSGD

__all__ = ["MuAdam", "MuAdamW", "MuSGD"]
