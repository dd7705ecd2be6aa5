"""Dense layers: the affine map that gives every layer's NNGP its new Gaussian."""

from __future__ import annotations

import torch

from ._kernel import _State
from ._layer import Layer, _BuildContext
from ._sample import affine_params

__all__ = ["Dense", "check_parametrization", "check_std"]


def check_parametrization(value: str, layer: str) -> str:
    if not isinstance(value, str) or value.lower() not in ("ntk", "standard"):
        raise ValueError(
            f"{layer}: parametrization must be 'ntk' or 'standard', got {value!r}"
        )
    return value.lower()


def check_std(value, name: str, layer: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{layer}: {name} must be a number, got {value!r}") from None
    if not v >= 0 or v == float("inf"):
        raise ValueError(f"{layer}: {name} must be finite and >= 0, got {value!r}")
    return v


def affine_kernel(
    s: _State,
    W_std: float,
    b_std: float | None,
    parametrization: str,
    fan_in: float,
    nngp: torch.Tensor | None = None,
    ntk: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NNGP and NTK after an affine layer whose pre-weight covariance is `nngp`.

    NTK parametrization (TP1 section 3 / Jacot et al.): nngp' = W^2 nngp + b^2,
    ntk' = nngp' + W^2 ntk. Standard parametrization (neural-tangents' convention,
    Sohl-Dickstein et al. 2020): the same nngp', and ntk' = fan_in * nngp + W^2 ntk
    (+ 1 with a bias), since d h / d W_ij = x_j carries no 1/sqrt(fan_in).
    """
    nngp = s.nngp if nngp is None else nngp
    ntk = s.ntk if ntk is None else ntk
    b2 = 0.0 if b_std is None else b_std**2
    new = W_std**2 * nngp + b2
    if parametrization == "ntk":
        return new, new + W_std**2 * ntk
    new_ntk = fan_in * nngp + W_std**2 * ntk
    if b_std is not None:
        new_ntk = new_ntk + 1.0
    return new, new_ntk


def affine_kernel_(
    total: torch.Tensor,
    ntk_total: torch.Tensor,
    W_std: float,
    b_std: float | None,
    parametrization: str,
    fan_in: float,
    mean_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`affine_kernel` in place, on fresh tensors that the caller owns.

    `total` and `ntk_total` hold sums whose means are ``mean_scale * total`` (a
    convolution's window sums, mean_scale = 1/k), so the window's division and the
    affine map take one pass; both tensors are overwritten and returned as
    (nngp', ntk'). ntk_total must have nngp's full shape.
    """
    w2 = W_std**2 * mean_scale
    b2 = 0.0 if b_std is None else b_std**2
    ntk = ntk_total
    if parametrization == "standard":
        ntk = ntk.mul_(w2).add_(total, alpha=fan_in * mean_scale)
        if b_std is not None:
            ntk.add_(1.0)
    # nngp' = b2 + w2 total in one pass (torch.add scales its second operand).
    nngp = torch.add(total.new_tensor(b2), total, alpha=w2, out=total)
    if parametrization == "ntk":
        ntk = torch.add(nngp, ntk, alpha=w2, out=ntk)
    return nngp, ntk


class Dense(Layer):
    """Fully connected layer applied to the channel axis (at every spatial position).

    NTK parametrization: ``h = (W_std / sqrt(fan_in)) w x + b_std b`` with
    w, b ~ N(0, 1); standard: ``h = w x + b`` with w ~ N(0, W_std^2 / fan_in),
    b ~ N(0, b_std^2) (neural-tangents' `Dense`). Limit rule (TP1 section 3):
    nngp' = W_std^2 nngp + b_std^2, ntk' = nngp' + W_std^2 ntk; in the standard
    parametrization ntk' = fan_in nngp + W_std^2 ntk (+ 1 with a bias), where fan_in
    is the declared input width.

    Args:
        out_dim: output channels (ignored by the NTK-parametrized kernel; the width of
            the readout when sampled).
        W_std: weight standard deviation.
        b_std: bias standard deviation; None for no bias.
        parametrization: "ntk" or "standard".

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> nn.Dense(1, W_std=1.0).kernel(x).nngp.tolist()  # x.x'/2
        [[0.5, 0.5], [0.5, 1.0]]
    """

    _variance_only_ok = True

    parametric = True

    def __init__(
        self,
        out_dim: int,
        W_std: float = 1.0,
        b_std: float | None = None,
        parametrization: str = "ntk",
    ):
        if isinstance(out_dim, bool) or int(out_dim) != out_dim or out_dim < 1:
            raise ValueError(
                f"Dense: out_dim must be a positive integer, got {out_dim!r}"
            )
        self.out_dim = int(out_dim)
        self.W_std = check_std(W_std, "W_std", "Dense")
        self.b_std = check_std(b_std, "b_std", "Dense", allow_none=True)
        self.parametrization = check_parametrization(parametrization, "Dense")

    def out_shape(self, in_shape):
        if not in_shape:
            raise ValueError("Dense: inputs need a channel axis, got scalar examples")
        return (*in_shape[:-1], self.out_dim)

    def _step(self, s: _State, out_full: bool) -> _State:
        nngp, ntk = affine_kernel(
            s, self.W_std, self.b_std, self.parametrization, s.channels
        )
        b2 = 0.0 if self.b_std is None else self.b_std**2
        cov1, cov2 = s.map_covs(lambda c, _: self.W_std**2 * c + b2)
        s = s.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            channels=self.out_dim,
            gaussian=True,
            mixed=False,
        )
        return s if out_full else s.to_diagonal()

    def _build(self, in_shape, ctx: _BuildContext):
        n_out = ctx.size(self, self.out_dim)
        module = _DenseModule(ctx, in_shape[-1], n_out, self)
        return module, (*in_shape[:-1], n_out)


class _DenseModule(torch.nn.Module):
    def __init__(self, ctx: _BuildContext, n_in: int, n_out: int, layer: Dense):
        super().__init__()
        self.w_mult, self.b_mult = affine_params(
            self,
            ctx,
            (n_out, n_in),
            n_in,
            n_out,
            layer.W_std,
            layer.b_std,
            layer.parametrization,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_mult * (x @ self.weight.T)  # (..., n_out)
        if self.bias is not None:
            h = h + self.b_mult * self.bias
        return h
