"""Empirical kernels of finite networks: the NTK from Jacobians, the NNGP by sampling.

For a network f(theta, x) with parameters theta and outputs f_o(theta, x), o = 1..O,

    NTK:  Theta_{oo'}(x, x') = sum_p  d f_o(x) / d theta_p  *  d f_o'(x') / d theta_p
    NNGP: K(x, x') = E_theta[ f(x) . f(x') ] / O

(TP2, arXiv 2006.14548, section 2; neural-tangents' `empirical_ntk_fn` and Monte
Carlo kernels use the same conventions). With `trace_outputs=True` the NTK is traced
over the output axis and divided by O, which in the infinite-width limit equals the
per-output-unit kernel that `tensorprograms.nn` computes.

Any `torch.nn.Module` works: parameters that require a gradient are differentiated,
frozen parameters and buffers are held fixed (and copied, so running statistics of
batch norm are never changed by a kernel computation), train/eval mode is respected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

__all__ = ["MonteCarloKernel", "empirical_nngp", "empirical_ntk"]

_IMPLEMENTATIONS = ("auto", "jacobian", "ntvp")


# ---------------------------------------------------------------------------
# input checks


def _materialise(module: torch.nn.Module, x) -> None:
    """Build lazily created parameters (torch's Lazy* layers, networks sampled
    without an input shape) by one forward pass on the first inputs."""
    params = list(module.parameters())
    lazy = any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in params)
    if (lazy or not params) and isinstance(x, torch.Tensor) and x.ndim >= 1:
        with torch.no_grad():
            module(x[:2])


def _module_state(module: torch.nn.Module):
    """Split a module into differentiated parameters and fixed tensors."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    params = {k: v.detach() for k, v in module.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError(
            f"{type(module).__name__} has no parameter with requires_grad=True: "
            "its NTK is zero"
        )
    fixed = {k: v.detach() for k, v in module.named_parameters() if not v.requires_grad}
    fixed.update({k: v.detach() for k, v in module.named_buffers()})
    return params, fixed


def _check_inputs(name: str, x, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"{name} must have a leading batch axis with at least one input, "
            f"got shape {tuple(x.shape)}"
        )
    if x.is_floating_point() and x.dtype != like.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the module's parameters have dtype "
            f"{like.dtype}; convert with {name}.to({like.dtype})"
        )
    if x.device != like.device:
        raise ValueError(
            f"{name} is on {x.device} but the module's parameters are on "
            f"{like.device}; move it with {name}.to('{like.device}')"
        )
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name} contains NaN or inf (inputs at rows {rows})")
    return x


def _check_pair(x1: torch.Tensor, x2: torch.Tensor) -> None:
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            "x1 and x2 must have the same shape after the batch axis, got "
            f"{tuple(x1.shape)} and {tuple(x2.shape)}"
        )


def _check_outputs(name: str, out: torch.Tensor, offset: int) -> None:
    bad = ~torch.isfinite(out).reshape(out.shape[0], -1).all(dim=1)
    if bool(bad.any()):
        rows = (bad.nonzero().flatten()[:5] + offset).tolist()
        raise ValueError(
            f"the module's output is NaN or inf on {name} rows {rows}; "
            "the kernel is undefined there"
        )


def _couples_batch(module: torch.nn.Module) -> bool:
    """True when the outputs of one example depend on the other examples."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
        for m in module.modules()
    )


def _default_memory(device: torch.device) -> int:
    """Half the free accelerator memory, or a quarter of the free RAM (<= 2 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 8 * 2**30
    return int(min(free // 4, 2 * 2**30))


def _tiles(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------
# Jacobians and NTK-vector products


class _Functional:
    """The module as pure functions of (parameters, inputs)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.params, self.fixed = _module_state(module)
        self.like = next(iter(self.params.values()))
        self.n_params = sum(p.numel() for p in self.params.values())
        self.coupled = _couples_batch(module)

    def _fixed_copy(self):
        return {k: v.clone() for k, v in self.fixed.items()}

    def batch(self, params, fixed, x):
        out = functional_call(self.module, (params, fixed), (x,))
        return out.reshape(out.shape[0], -1)

    def single(self, params, fixed, x):
        out = functional_call(self.module, (params, fixed), (x.unsqueeze(0),))
        return out.reshape(-1)

    def jacobian(self, x: torch.Tensor):
        """Jacobian per parameter, each of shape (N, O, *param.shape), and f(x)."""

        def with_aux(fn):
            def g(params, fixed, x):
                out = fn(params, fixed, x)
                return out, out

            return g

        if self.coupled:
            jac_fn = jacrev(with_aux(self.batch), has_aux=True)
        else:
            jac_fn = vmap(
                jacrev(with_aux(self.single), has_aux=True), in_dims=(None, None, 0)
            )
        return jac_fn(self.params, self._fixed_copy(), x)

    def transposed_rows(self, x: torch.Tensor, rows: torch.Tensor, n_out: int):
        """J^T e_r for rows r = (example, output) of x: dicts of (R, *param.shape)."""
        fixed = self._fixed_copy()
        eye = torch.eye(n_out, dtype=self.like.dtype, device=self.like.device)

        def row(xi, e):
            _, pullback = vjp(lambda p: self.single(p, fixed, xi), self.params)
            return pullback(e)[0]

        return vmap(row)(x[rows // n_out], eye[rows % n_out])

    def forward_products(self, x: torch.Tensor, tangents):
        """J(x) u for a batch of tangents u: shape (R, N, O)."""
        fixed = self._fixed_copy()

        def push(u):
            return jvp(lambda p: self.batch(p, fixed, x), (self.params,), (u,))[1]

        return vmap(push)(tangents)


def _contract(jac1, jac2, trace_outputs: bool) -> torch.Tensor:
    """sum_p J1 J2^T over parameter blocks (N, O, *shape): matrix products, float64."""
    total = None
    for name, a in jac1.items():
        b = jac2[name]
        n1, n_out, n2 = a.shape[0], a.shape[1], b.shape[0]
        if trace_outputs:  # sum over outputs and parameter entries at once
            term = a.reshape(n1, -1).double() @ b.reshape(n2, -1).double().T
        else:
            term = (
                a.reshape(n1 * n_out, -1).double()
                @ b.reshape(n2 * n_out, -1).double().T
            )
        total = term if total is None else total + term
    if trace_outputs:
        return total
    return total.reshape(n1, n_out, n2, n_out).permute(0, 2, 1, 3)


def empirical_ntk(
    module: torch.nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    trace_outputs: bool = True,
    implementation: str = "auto",
    max_memory: int | None = None,
) -> torch.Tensor:
    """Empirical neural tangent kernel of any module (TP2, arXiv 2006.14548, sec. 2).

    Theta_{oo'}(x, x') = sum_p (d f_o(x) / d theta_p)(d f_o'(x') / d theta_p), the sum
    running over every parameter with ``requires_grad=True``. With
    ``trace_outputs=True`` the result is (1/O) sum_o Theta_{oo}(x, x'), the kernel
    per output unit (neural-tangents' ``trace_axes=(-1,)`` convention). Outputs of
    any shape are flattened after the batch axis into O units.

    Two implementations, chosen by ``implementation="auto"`` from ``max_memory``:

    - ``"jacobian"``: per-example Jacobians (torch.func ``vmap(jacrev)``) of tiles of
      ``chunk_size`` inputs, contracted block by block; memory ~ chunk * O * P.
    - ``"ntvp"``: NTK-vector products, J(x1) (J(x2)^T e) by ``vjp`` then ``jvp``,
      never holding a Jacobian of x1; memory ~ chunk * P for the tangents. Used
      when even one example's O x P Jacobian does not fit.

    Inputs are tiled so memory stays below ``max_memory`` bytes (default: half the
    free GPU memory, or a quarter of the free RAM up to 2 GiB). With ``x2=None`` only
    the upper triangle of tiles is computed. Contractions are done in float64.

    Modules whose parameters are created at the first call (torch's ``Lazy*``
    layers, ``tensorprograms.nn`` networks sampled without ``input_shape``) are
    built by one forward pass on ``x1[:2]``.

    Batch norm in training mode couples the examples of a batch; it is detected, and
    then x1 and x2 are each evaluated as one whole batch (``chunk_size`` is ignored
    for them) by the Jacobian of the batched output.

    Args:
        module: the network; parameters with ``requires_grad=True`` are
            differentiated, everything else is held fixed. Kept unchanged.
        x1: inputs, shape (N1, *input_shape), dtype and device of the parameters.
        x2: inputs, shape (N2, *input_shape); None means x1 (symmetric kernel).
        chunk_size: inputs per tile (rows of J^T per product for ``"ntvp"``);
            None chooses from ``max_memory``.
        trace_outputs: average over the output axis (True) or keep it (False).
        implementation: ``"auto"``, ``"jacobian"`` or ``"ntvp"``.
        max_memory: memory budget in bytes for Jacobian tiles.

    Returns:
        float64 tensor of shape (N1, N2) if ``trace_outputs`` else (N1, N2, O, O),
        on the module's device.

    Raises:
        ValueError: NaN/inf in inputs or outputs, inputs of different shapes, a
            module without trainable parameters, an unknown implementation.

    Example:
        >>> import torch
        >>> from tensorprograms.empirical import empirical_ntk
        >>> net = torch.nn.Linear(3, 2, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64)
        >>> empirical_ntk(net, x)  # for a linear layer, x x^T
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]], dtype=torch.float64)
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(module, torch.nn.Module):
        _materialise(module, x1)
    fn = _Functional(module)
    x1 = _check_inputs("x1", x1, fn.like)
    symmetric = x2 is None
    x2 = x1 if symmetric else _check_inputs("x2", x2, fn.like)
    _check_pair(x1, x2)
    budget = _default_memory(fn.like.device) if max_memory is None else max_memory

    n_out, acts = _sizes(fn, x1)
    item = fn.like.element_size()
    # One example's Jacobian (O x P), its float64 copy for the contraction (none for
    # float64 parameters), and the O activation cotangents of reverse mode.
    copy = 0 if fn.like.dtype == torch.float64 else 8
    per_example = n_out * (fn.n_params * (item + copy) + acts * item)
    if implementation == "auto":
        implementation = (
            "jacobian" if fn.coupled or 4 * per_example <= budget else "ntvp"
        )
    if implementation == "ntvp" and fn.coupled:
        raise ValueError(
            "implementation='ntvp' needs examples that do not interact; this module "
            "has batch norm in training mode: use implementation='jacobian'"
        )

    try:
        if implementation == "jacobian" and fn.coupled:
            theta = _ntk_coupled(fn, x1, x2, symmetric, trace_outputs)
        elif implementation == "jacobian":
            chunk = chunk_size or max(1, budget // (2 * per_example))
            cache_x2 = (x2.shape[0] + chunk) * per_example <= budget
            theta = _ntk_jacobian(
                fn, x1, x2, symmetric, trace_outputs, chunk, n_out, cache_x2
            )
        else:
            # Tangents J(x2)^T e: R x P; forward-mode products over a tile of c
            # inputs: R x c x (activations + outputs), primal and tangent.
            rows = chunk_size or max(
                1, min(n_out * x2.shape[0], budget // (4 * fn.n_params * item))
            )
            tile = max(1, budget // (4 * rows * (acts + n_out) * 2 * item))
            theta = _ntk_ntvp(fn, x1, x2, trace_outputs, rows, tile, n_out)
    except RuntimeError as err:
        if "random" in str(err):
            raise ValueError(
                f"{type(module).__name__} draws random numbers in its forward pass "
                "(dropout in training mode?), so its NTK is not defined: call "
                "module.eval() first"
            ) from err
        raise
    if symmetric:
        # J J^T by BLAS need not be bit-symmetric: Theta_{oo'}(x, x') and
        # Theta_{o'o}(x', x) are averaged, which changes only rounding.
        swap = (1, 0) if trace_outputs else (1, 0, 3, 2)
        theta = (theta + theta.permute(swap)) / 2
    return theta


def _sizes(fn: _Functional, x: torch.Tensor) -> tuple[int, int]:
    """Outputs per example, and activation entries per example (leaf-module outputs).

    Modules that compute inside one forward without submodules are counted by their
    output only: the memory plan then underestimates, and max_memory should be
    lowered.
    """
    counts = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            counts.append(output.numel())

    leaves = [m for m in fn.module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            sample = x if fn.coupled else x[:1]
            out = fn.batch(fn.params, fn._fixed_copy(), sample)
    finally:
        for h in handles:
            h.remove()
    return out.shape[1], max(1, sum(counts) // sample.shape[0])


def _finish(theta: torch.Tensor, trace_outputs: bool, n_out: int) -> torch.Tensor:
    return theta / n_out if trace_outputs else theta


def _ntk_coupled(fn, x1, x2, symmetric, trace_outputs):
    jac1, out1 = fn.jacobian(x1)
    _check_outputs("x1", out1, 0)
    if symmetric:
        jac2 = jac1
    else:
        jac2, out2 = fn.jacobian(x2)
        _check_outputs("x2", out2, 0)
    return _finish(_contract(jac1, jac2, trace_outputs), trace_outputs, out1.shape[1])


def _ntk_jacobian(fn, x1, x2, symmetric, trace_outputs, chunk, n_out, cache_x2):
    n1, n2 = x1.shape[0], x2.shape[0]
    shape = (n1, n2) if trace_outputs else (n1, n2, n_out, n_out)
    theta = torch.empty(shape, dtype=torch.float64, device=fn.like.device)
    tiles1, tiles2 = _tiles(n1, chunk), _tiles(n2, chunk)

    def jac(name, x, s):
        j, out = fn.jacobian(x[s])
        _check_outputs(name, out, s.start)
        return j

    # Keep the Jacobians of x2 (x1 when symmetric) when all of them fit.
    cache = {} if cache_x2 else None

    def jac2(j):
        if cache is not None and j in cache:
            return cache[j]
        out = jac("x1" if symmetric else "x2", x2, tiles2[j])
        if cache is not None:
            cache[j] = out
        return out

    for i, s1 in enumerate(tiles1):
        j1 = jac2(i) if symmetric else jac("x1", x1, s1)
        for j, s2 in enumerate(tiles2):
            if symmetric and j < i:
                continue
            block = _contract(
                j1, j1 if symmetric and j == i else jac2(j), trace_outputs
            )
            theta[s1, s2] = block
            if symmetric and j != i:
                # Theta_{oo'}(x, x') = Theta_{o'o}(x', x)
                theta[s2, s1] = block.T if trace_outputs else block.permute(1, 0, 3, 2)
        if symmetric and cache is not None:
            cache.pop(i, None)  # no later tile needs it
    return _finish(theta, trace_outputs, n_out)


def _ntk_ntvp(fn, x1, x2, trace_outputs, rows_per_batch, tile, n_out):
    n1, n2 = x1.shape[0], x2.shape[0]
    with torch.no_grad():
        for name, x in (("x1", x1), ("x2", x2)):
            for s in _tiles(x.shape[0], tile):
                out = fn.batch(fn.params, fn._fixed_copy(), x[s])
                _check_outputs(name, out, s.start)
    dev = fn.like.device
    shape = (n1, n2) if trace_outputs else (n1, n_out, n2, n_out)
    theta = torch.zeros(shape, dtype=torch.float64, device=dev)
    all_rows = torch.arange(n2 * n_out, device=dev)
    for s in _tiles(n2 * n_out, rows_per_batch):
        rows = all_rows[s]
        example, unit = rows // n_out, rows % n_out
        tangents = fn.transposed_rows(x2, rows, n_out)  # J(x2)^T e_r, (R, *shape)
        for t in _tiles(n1, tile):
            prod = fn.forward_products(x1[t], tangents).double()  # (R, n, O)
            if trace_outputs:  # keep output unit o of J(x1) J(x2)^T e_(j, o)
                diag = prod[torch.arange(len(rows), device=dev), :, unit]  # (R, n)
                theta[t].index_add_(1, example, diag.T)
            else:
                theta[t, :, example, unit] = prod.permute(1, 2, 0)
    if trace_outputs:
        return theta / n_out
    return theta.permute(0, 2, 1, 3)


# ---------------------------------------------------------------------------
# Monte Carlo NNGP


@dataclass(frozen=True)
class MonteCarloKernel:
    """A kernel estimated by sampling, with its standard error.

    Attributes:
        value: float64 tensor (N1, N2), the sample mean over seeds.
        stderr: float64 tensor (N1, N2), the standard error of that mean
            (sample standard deviation over seeds / sqrt(n_samples)).
        n_samples: number of independent samples (seeds).
    """

    value: torch.Tensor
    stderr: torch.Tensor
    n_samples: int


def empirical_nngp(
    module_factory: Callable[[int], torch.nn.Module],
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    seeds: Iterable[int],
    chunk_size: int | None = None,
) -> MonteCarloKernel:
    """Monte Carlo NNGP kernel over random initialisations (TP1, arXiv 1910.12478).

    K(x, x') = E_theta[ f(x) . f(x') ] / O, estimated by the average over seeds s of
    f_s(x1) f_s(x2)^T / O, with f_s = ``module_factory(s)``. The O output units of
    one network are averaged first, so the standard error (over seeds) accounts for
    their correlation.

    Args:
        module_factory: seed -> torch.nn.Module (e.g. ``lambda s: model.sample(n, s)``).
        x1: inputs (N1, *input_shape).
        x2: inputs (N2, *input_shape); None means x1.
        seeds: at least two distinct integer seeds.
        chunk_size: inputs per forward pass (None: all at once). Use only for
            modules whose examples do not interact (no batch norm in training mode).

    Returns:
        MonteCarloKernel with ``value`` and ``stderr`` of shape (N1, N2), float64.

    Example:
        >>> import torch
        >>> from tensorprograms.empirical import empirical_nngp
        >>> def make(seed):
        ...     torch.manual_seed(seed)
        ...     return torch.nn.Linear(2, 50, bias=False).double()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> k = empirical_nngp(make, x, seeds=range(20))
        >>> k.value.shape, k.n_samples
        (torch.Size([2, 2]), 20)
        >>> exact = torch.eye(2) / 6  # weights U(-1/sqrt(2), 1/sqrt(2)): variance 1/6
        >>> bool(((k.value - exact).abs() < 4 * k.stderr).all())
        True
    """
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(
            f"seeds must hold at least 2 seeds to estimate a standard error, "
            f"got {len(seeds)}"
        )
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct: repeated seeds are not independent")
    symmetric = x2 is None
    mean = m2 = None
    n_out = None
    for count, seed in enumerate(seeds, start=1):
        module = module_factory(seed)
        if isinstance(module, torch.nn.Module):
            _materialise(module, x1)
        _, fixed_like = _module_state_any(module)
        a = _check_inputs("x1", x1, fixed_like)
        b = a if symmetric else _check_inputs("x2", x2, fixed_like)
        _check_pair(a, b)
        f1 = _outputs(module, a, "x1", chunk_size)
        f2 = f1 if symmetric else _outputs(module, b, "x2", chunk_size)
        if n_out is None:
            n_out = f1.shape[1]
        elif f1.shape[1] != n_out:
            raise ValueError(
                f"module_factory({seed}) gives {f1.shape[1]} outputs per input, "
                f"earlier seeds gave {n_out}"
            )
        sample = f1 @ f2.T / n_out
        # Welford's update keeps the variance accurate in float64.
        if mean is None:
            mean, m2 = sample.clone(), torch.zeros_like(sample)
        else:
            delta = sample - mean
            mean += delta / count
            m2 += delta * (sample - mean)
    n = len(seeds)
    stderr = torch.sqrt(m2 / (n - 1) / n)
    return MonteCarloKernel(value=mean, stderr=stderr, n_samples=n)


def _module_state_any(module: torch.nn.Module):
    """The module and a tensor whose dtype/device inputs must match."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"module_factory must return a torch.nn.Module, got {type(module).__name__}"
        )
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return module, t
    raise ValueError(f"{type(module).__name__} has no floating-point parameter")


def _outputs(module, x, name, chunk_size):
    with torch.no_grad():
        if chunk_size is None:
            out = module(x)
        else:
            out = torch.cat([module(x[s]) for s in _tiles(x.shape[0], chunk_size)])
    out = out.reshape(out.shape[0], -1)
    _check_outputs(name, out, 0)
    return out.double()
