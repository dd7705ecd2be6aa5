"""Empirical NTK vs a naive autograd loop; Monte Carlo NNGP vs closed forms."""

import pytest
import torch
from relu_mlp import NTKMLP, relu_kernels

from tensorprograms.empirical import MonteCarloKernel, empirical_nngp, empirical_ntk

# float64 sums of at most a few hundred products of O(1) numbers: 1e-10 leaves
# five orders of magnitude above rounding.
TOL64 = 1e-10


def naive_ntk(module, x1, x2, trace_outputs=True, batch=False):
    """sum_p J J^T with one torch.autograd.grad call per (input, output) pair."""
    params = [p for p in module.parameters() if p.requires_grad]

    def rows(x):
        out = []
        if batch:  # the outputs of the whole batch, examples coupled
            f = module(x).reshape(x.shape[0], -1)
            for i in range(x.shape[0]):
                out.append(
                    [
                        torch.cat(
                            [
                                g.reshape(-1)
                                for g in torch.autograd.grad(
                                    f[i, o], params, retain_graph=True
                                )
                            ]
                        )
                        for o in range(f.shape[1])
                    ]
                )
            return torch.stack([torch.stack(r) for r in out])
        for i in range(x.shape[0]):
            f = module(x[i : i + 1]).reshape(-1)
            out.append(
                torch.stack(
                    [
                        torch.cat(
                            [
                                g.reshape(-1)
                                for g in torch.autograd.grad(
                                    f[o], params, retain_graph=True
                                )
                            ]
                        )
                        for o in range(f.shape[0])
                    ]
                )
            )
        return torch.stack(out)  # (N, O, P)

    j1, j2 = rows(x1).double(), rows(x2).double()
    full = torch.einsum("iop,jqp->ijoq", j1, j2)
    if trace_outputs:
        return torch.einsum("ijoo->ij", full) / full.shape[-1]
    return full


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 7),
        torch.nn.Tanh(),
        torch.nn.Linear(7, 5),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 2),
    ).to(dtype)
    net[2].bias.requires_grad_(False)  # a frozen parameter stays fixed
    return net


def convnet():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 2, 3, stride=2),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).double()


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp"])
@pytest.mark.parametrize("trace_outputs", [True, False])
def test_mlp_matches_naive_autograd(implementation, trace_outputs):
    net = mlp()
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    x2 = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    for a, b in ((x1, None), (x1, x2)):
        want = naive_ntk(net, a, a if b is None else b, trace_outputs)
        # max_memory=1: no Jacobian tile is kept, every one is recomputed
        for chunk, memory in ((None, None), (1, None), (2, None), (2, 1)):
            got = empirical_ntk(
                net,
                a,
                b,
                chunk_size=chunk,
                trace_outputs=trace_outputs,
                implementation=implementation,
                max_memory=memory,
            )
            assert got.dtype == torch.float64 and got.shape == want.shape
            assert torch.allclose(got, want, rtol=0, atol=TOL64 * want.abs().max())


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp"])
def test_convnet_matches_naive_autograd(implementation):
    net = convnet()
    x = torch.randn(
        4, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    want = naive_ntk(net, x, x, trace_outputs=False)
    got = empirical_ntk(net, x, trace_outputs=False, implementation=implementation)
    assert torch.allclose(got, want, rtol=0, atol=TOL64 * want.abs().max())
    chunked = empirical_ntk(net, x, chunk_size=3, implementation=implementation)
    assert torch.allclose(
        chunked, torch.einsum("ijoo->ij", want) / 3, rtol=0, atol=1e-12
    )
    # K(x, x) is exactly symmetric, whatever order BLAS adds in.
    assert torch.equal(chunked, chunked.T)
    assert torch.equal(got, got.permute(1, 0, 3, 2))


def test_auto_switches_to_products_on_a_small_budget():
    net = mlp()
    x = torch.randn(
        6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    want = naive_ntk(net, x, x)
    # A budget below one example's Jacobian forces NTK-vector products.
    got = empirical_ntk(net, x, max_memory=100)
    assert torch.allclose(got, want, rtol=0, atol=TOL64 * want.abs().max())


def test_batch_norm_in_train_and_eval_mode():
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4),
        torch.nn.BatchNorm1d(4),
        torch.nn.ReLU(),
        torch.nn.Linear(4, 2),
    ).double()
    x = torch.randn(
        6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    net.train()  # the examples of a batch are coupled through batch statistics
    got = empirical_ntk(net, x, chunk_size=2)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"buffer {k} was changed"
    want = naive_ntk(net, x, x, batch=True)  # (this forward does move the stats)
    assert torch.allclose(got, want, rtol=0, atol=TOL64 * want.abs().max())

    net.eval()
    got = empirical_ntk(net, x, chunk_size=4)
    want = naive_ntk(net, x, x)
    assert torch.allclose(got, want, rtol=0, atol=TOL64 * want.abs().max())


def test_float32_module_gives_float64_kernel():
    net32, net64 = mlp(torch.float32), mlp(torch.float64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(7))
    got = empirical_ntk(net32, x)
    want = naive_ntk(net64, x.double(), x.double())
    assert got.dtype == torch.float64
    # float32 Jacobians (relative error ~ a few eps = 1.2e-7), float64 contraction.
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max())


def test_errors_name_the_problem():
    net = mlp()
    x = torch.randn(3, 3, dtype=torch.float64)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x1 contains NaN .*rows \[1\]"):
        empirical_ntk(net, bad)
    with pytest.raises(ValueError, match=r"same shape after the batch axis"):
        empirical_ntk(net, x, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"dtype torch.float32 .* torch.float64"):
        empirical_ntk(net, x.float())
    with pytest.raises(ValueError, match="implementation must be one of"):
        empirical_ntk(net, x, implementation="fast")

    class Log(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1).double()

        def forward(self, x):
            return torch.sqrt(self.lin(x))  # NaN where the pre-activation is < 0

    log = Log()
    with torch.no_grad():
        log.lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        log.lin.bias.zero_()
    y = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=torch.float64)
    for impl in ("jacobian", "ntvp"):
        with pytest.raises(ValueError, match=r"output is NaN or inf on x1 rows \[1\]"):
            empirical_ntk(log, y, implementation=impl)


def test_monte_carlo_nngp_of_a_gaussian_linear_layer():
    # f(x) = W x with W_ij ~ N(0, s^2 / d): E[f(x) . f(x')] / O = s^2 x . x' / d.
    s, d, width = 1.5, 3, 4

    def make(seed):
        torch.manual_seed(seed)
        lin = torch.nn.Linear(d, width, bias=False).double()
        torch.nn.init.normal_(lin.weight, std=s / d**0.5)
        return lin

    x = torch.randn(
        4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(8)
    )
    exact = s**2 * x @ x.T / d
    k = empirical_nngp(make, x, seeds=range(400))
    assert isinstance(k, MonteCarloKernel) and k.n_samples == 400
    # |error| < 4.5 standard errors for all 16 entries (fixed seeds).
    assert bool(((k.value - exact).abs() < 4.5 * k.stderr).all())
    # Standard error of an average of 400 width-4 samples: Var f_a f_b / O =
    # (K_aa K_bb + K_ab^2) / O, so stderr ~ sqrt((K_aa K_bb + K_ab^2) / (4 * 400)).
    want_se = torch.sqrt((exact.diag()[:, None] * exact.diag()[None] + exact**2) / 1600)
    assert torch.allclose(k.stderr, want_se, rtol=0.25)
    cross = empirical_nngp(make, x[:2], x[2:], seeds=range(400))
    assert torch.allclose(cross.value, k.value[:2, 2:], atol=1e-12)


def test_monte_carlo_nngp_errors():
    make = lambda seed: torch.nn.Linear(2, 3).double()  # noqa: E731
    x = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        empirical_nngp(make, x, seeds=[0])
    with pytest.raises(ValueError, match="distinct"):
        empirical_nngp(make, x, seeds=[0, 0])
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="x1 contains NaN or inf"):
        empirical_nngp(make, bad, seeds=[0, 1])


@pytest.mark.parametrize("depth, widths", [(1, (256, 4096)), (2, (64, 1024))])
def test_empirical_ntk_of_wide_relu_mlps_approaches_the_limit(depth, widths):
    w_std, b_std = 2**0.5, 0.2
    x = torch.randn(
        6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    nngp, ntk = relu_kernels(x, None, w_std, b_std, depth)
    err = {}
    for width in widths:
        errs = []
        for seed in range(8):
            net = NTKMLP(4, width, depth, w_std, b_std, seed)
            got = empirical_ntk(net, x)
            errs.append(float(torch.linalg.norm(got - ntk) / torch.linalg.norm(ntk)))
        err[width] = sum(errs) / len(errs)
    # Fluctuations of the finite NTK are ~ n^-1/2: 16x the width, ~4x less error.
    small, large = widths
    assert 2.0 < err[small] / err[large] < 8.0, err
    assert err[large] < 0.1, err


def test_random_forward_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5)).double()
    x = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"dropout in training mode\?"):
        empirical_ntk(net, x)
    net.eval()  # dropout off: the NTK of the linear layer, x x^T + 1 per unit
    assert torch.allclose(empirical_ntk(net, x), x @ x.T + 1, atol=1e-12)
