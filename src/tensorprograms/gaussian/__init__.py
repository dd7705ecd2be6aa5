"""Expectations of functions of jointly Gaussian variables.

The Master Theorem (TP1 section 5, TP3/TP4) turns every scalar of a Tensor Program
into E[f(g)] for a centred Gaussian vector g. This module computes such
expectations with a stated error:

* closed forms (:func:`bivariate`, through :mod:`tensorprograms.nonlinearities`),
  error 0;
* product Gauss rules when the rank r of the covariance is at most
  ``max_quadrature_dim`` (default 3), refined (m = 8, 12, 16, 24, ... nodes)
  until two successive orders agree; the error is their difference;
* seeded Monte Carlo with antithetic pairs beyond, the error its standard error.

A covariance of rank r < k (the same input twice, a vector and a multiple of
it) is integrated in r dimensions: g = L eps with L = V sqrt(Lambda) from the
eigendecomposition and eps ~ N(0, I_r).

The integrands of Tensor Programs are rarely smooth: relu, step, abs and sign
put kinks and jumps on the planes g_i = 0, where tensor Gauss-Hermite grids
converge slowly and their successive differences understate the error. For
r <= 3 the rules here work in spherical coordinates eps = rho * theta: rho by
an m-point Gauss rule for the chi_r law (a function with kinks only on planes
through 0 is smooth along every ray), theta by Gauss-Legendre on the pieces
that the kink planes cut from the circle (r = 2) or the sphere (r = 3; each
meridian is split where it crosses a plane, the azimuths where planes
intersect). Kinks on the coordinate planes g_i = 0 are always resolved, others
when declared (``kinks=``), and smooth integrands converge just as fast.
Ranks above 3 (if ``max_quadrature_dim`` allows) use a Gauss-Hermite grid.
"""

from ._bivariate import bivariate
from ._expect import expect, expect_grad
from ._rules import Estimate, gauss_hermite

__all__ = ["Estimate", "bivariate", "expect", "expect_grad", "gauss_hermite"]
