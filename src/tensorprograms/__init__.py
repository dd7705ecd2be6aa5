"""tensorprograms: Tensor Programs at finite width and in the infinite-width limit."""

__version__ = "0.1.0"
