"""An independent oracle for tests: relu MLPs in the NTK parametrization, finite
(a torch module) and infinite (the kernel recursion of THEORY.md section 3)."""

import math

import torch

F64 = torch.float64


def relu_kernels(x1, x2, w_std, b_std, depth):
    """NNGP and NTK of a relu MLP with `depth` hidden layers, NTK parametrization.

    S^1 = W^2 x.x'/d + b^2, S^{l+1} = W^2 E[relu relu] + b^2, Sdot^{l+1} = W^2
    E[step step], T^1 = S^1, T^{l+1} = S^{l+1} + Sdot^{l+1} T^l (THEORY.md 3).

    x2=None: K(x1, x1), whose diagonal pairs a point with itself, angle 0 exactly.
    (arccos at rho = 1 would turn rounding in rho into an angle of ~ sqrt(eps).)"""
    same = x2 is None
    x2 = x1 if same else x2
    d = x1.shape[1]
    s12 = w_std**2 * x1 @ x2.T / d + b_std**2
    s11 = w_std**2 * (x1 * x1).sum(1) / d + b_std**2
    s22 = w_std**2 * (x2 * x2).sum(1) / d + b_std**2
    t12 = s12
    for _ in range(depth):
        norm = torch.sqrt(s11[:, None] * s22[None])
        theta = torch.arccos((s12 / norm).clamp(-1, 1))
        if same:
            theta = theta.fill_diagonal_(0.0)
        relu = norm * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))
        step = (math.pi - theta) / (2 * math.pi)
        s12 = w_std**2 * relu / (2 * math.pi) + b_std**2
        t12 = s12 + w_std**2 * step * t12
        # E[relu(u)^2] = q / 2
        s11, s22 = w_std**2 * s11 / 2 + b_std**2, w_std**2 * s22 / 2 + b_std**2
    return s12, t12


class NTKMLP(torch.nn.Module):
    """Relu MLP, NTK parametrization, scalar output h^{depth+1}:

    h^1 = (W/sqrt d) w^1 x + b b^1, h^{l+1} = (W/sqrt n) w^{l+1} relu(h^l) + b b^{l+1}
    with W = w_std, b = b_std, all w, b ~ N(0, 1)."""

    def __init__(self, d, width, depth, w_std, b_std, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        sizes = [d] + [width] * depth + [1]
        self.weights = torch.nn.ParameterList(
            torch.randn(o, i, dtype=F64, generator=g) for i, o in zip(sizes, sizes[1:])
        )
        self.biases = torch.nn.ParameterList(
            torch.randn(o, dtype=F64, generator=g) for o in sizes[1:]
        )
        self.w_std, self.b_std = w_std, b_std

    def forward(self, x):
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            a = h if i == 0 else torch.relu(h)
            h = self.w_std / a.shape[1] ** 0.5 * a @ w.T + self.b_std * b
        return h
