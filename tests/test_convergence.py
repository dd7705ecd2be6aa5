"""Finite widths approach the limit like n^(-1/2) (the Master Theorem's CLT scale)."""

import pytest

from tensorprograms import tour


@pytest.mark.slow
@pytest.mark.parametrize("name", ["marchenko-pastur", "zdot", "backprop"])
def test_error_falls_like_inverse_square_root_of_width(name):
    ex = tour.EXAMPLES[name]()
    conv = tour.convergence(
        ex.program, ex.scalar, widths=(128, 256, 512, 1024, 2048, 4096), seeds=16
    )
    # Mean |error| over 16 seeds has ~25% relative noise per width; over six
    # octaves that moves the fitted slope by ~0.1, inside the accepted band.
    assert -0.7 <= conv.slope <= -0.3, conv
    assert float(conv.errors[-1]) < float(conv.errors[0])
