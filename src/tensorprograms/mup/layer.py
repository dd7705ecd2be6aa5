"""``mup.layer``'s names, for code that imports them from there (see
:mod:`tensorprograms.mup._readout`)."""

from ._readout import MuReadout, MuReadoutConv1d, MuReadoutConv2d, MuSharedReadout

__all__ = ["MuReadout", "MuSharedReadout", "MuReadoutConv1d", "MuReadoutConv2d"]
