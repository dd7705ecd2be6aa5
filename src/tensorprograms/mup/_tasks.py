"""Built-in proxy tasks for muTransfer, with nothing to download.

A task is a small training problem that can be built at any width (and depth)
in muP or in the standard parametrization (SP), so that a learning-rate sweep
on it shows whether the optimum transfers (TP5, Yang et al. 2022, section 3):

* ``mlp``: a ReLU MLP on scikit-learn's bundled 8x8 digits (1,797 images).
* ``resmlp``: a residual MLP on the same digits with TP6's one-layer block
  ``h + m MS(|W h|)`` (mean subtraction, absolute value), with Depth-muP
  (``MuResidual``: branch multipliers ``1 / sqrt(L)`` and Adam learning rates
  ``~ 1 / sqrt(L)``; TP6, Yang et al. 2023) for depth transfer.
* ``resnet``: a ResNet-style convnet on the digits seen as 1 x 8 x 8 images.
* ``transformer``: a GPT-style character-level transformer trained on the
  source text of a module of Python's standard library.

muP is applied through the drop-in API of :mod:`tensorprograms.mup`:
``MuReadout`` for the readout, attention logits ``q.k * sqrt(d_base) / d``
(``1/d`` scaling that equals ``1/sqrt(d)`` at the base width),
``set_base_shapes(model, base, delta=delta)`` and ``MuAdam``. At the base width
the muP model is the SP model exactly, so the two sweep curves coincide there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

PARAMETRIZATIONS = ("mup", "sp")


def _check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"parametrization must be one of {PARAMETRIZATIONS}, "
            f"got {parametrization!r}"
        )


# --------------------------------------------------------------------- data


def digits_data(
    seed: int = 0, train_fraction: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits, standardised, split into train and test.

    Features are standardised with the training mean and standard deviation
    (pixels that are constant in the training set are left at zero).

    Args:
        seed: seed of the random split.
        train_fraction: fraction of the 1,797 images used for training.

    Returns:
        ``x_train (N, 64) float32, y_train (N,) int64, x_test, y_test``.

    Example:
        >>> x, y, xt, yt = digits_data()
        >>> tuple(x.shape), int(y.max()), x.shape[0] + xt.shape[0]
        ((1438, 64), 9, 1797)
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_fraction * len(x)))
    train, test = perm[:n_train], perm[n_train:]
    mean = x[train].mean(0)
    std = x[train].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def stdlib_text(module: str = "textwrap") -> str:
    """The source text of a module of Python's standard library.

    Used as a corpus that ships with every Python installation. When the
    source file is not available (a zipped or frozen standard library), the
    docstrings of the builtins are used instead.

    Example:
        >>> len(stdlib_text()) > 10_000
        True
    """
    spec = importlib.util.find_spec(module)
    origin = getattr(spec, "origin", None)
    if origin and origin.endswith(".py"):
        try:
            with open(origin, encoding="utf-8") as f:
                return f.read()
        except OSError:
            pass
    import builtins

    docs = (getattr(builtins, name).__doc__ or "" for name in sorted(dir(builtins)))
    return "\n".join(docs)


def _minibatches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled minibatches (epochs reshuffled with one generator)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield x[idx], y[idx]


def _char_batches(
    tokens: torch.Tensor, context: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random windows ``(x, y)`` of shape ``(batch, context)``."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context)
    while True:
        start = torch.randint(
            0, len(tokens) - context - 1, (batch_size,), generator=gen
        )
        idx = start[:, None] + offsets
        yield tokens[idx], tokens[idx + 1]


# ------------------------------------------------------------------- models


def _readout(width: int, d_out: int, parametrization: str) -> nn.Module:
    if parametrization == "mup":
        from tensorprograms.mup import MuReadout

        return MuReadout(width, d_out)
    return nn.Linear(width, d_out)


class MLP(nn.Module):
    """ReLU MLP ``x -> W_in -> (relu -> W_h) * (depth - 1) -> relu -> readout``.

    Args:
        width: hidden width n.
        depth: number of hidden layers (>= 1).
        d_in, d_out: input and output dimensions (finite).
        parametrization: ``"mup"`` (readout is ``MuReadout``) or ``"sp"``.
    """

    def __init__(
        self,
        width: int,
        depth: int = 2,
        d_in: int = 64,
        d_out: int = 10,
        parametrization: str = "mup",
    ):
        super().__init__()
        _check_parametrization(parametrization)
        if depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {depth}")
        self.input = nn.Linear(d_in, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.act = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.readout = _readout(width, d_out, parametrization)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act[0](self.input(x))  # (batch, width)
        for layer, act in zip(self.hidden, self.act[1:]):
            h = act(layer(h))  # (batch, width)
        return self.readout(h)  # (batch, d_out)


_BRANCH_NONLINEARITIES = {"abs": torch.abs, "relu": torch.relu}


class _Branch(nn.Module):
    """One-layer residual branch ``MS(phi(W h))`` (TP6's block).

    ``MS(z) = z - mean_i z_i`` subtracts the mean over the width: ``phi(W h)``
    has a positive mean per coordinate for ``phi`` = abs or relu, and without it
    the ``L`` branches would add a common vector of size ``sqrt(L)``.
    """

    def __init__(self, width: int, phi: str = "abs"):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.phi = _BRANCH_NONLINEARITIES[phi]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.phi(self.linear(h))  # (batch, width)
        return z - z.mean(dim=-1, keepdim=True)  # (batch, width)


class _PlainResidual(nn.Module):
    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.branch(h)


class ResidualMLP(nn.Module):
    """Residual MLP with one layer per block (TP6, Yang et al. 2023).

    ``h^0 = W_in x``; ``h^l = h^(l-1) + m MS(phi(W^l h^(l-1)))`` for
    ``l = 1..depth``, with ``MS`` the mean subtraction over the width; output
    ``readout(h^L)``. This is TP6's one-layer block; ``phi = abs`` (the default)
    is the homogeneous nonlinearity that maximises feature diversity across
    blocks (TP6), ``"relu"`` the common alternative. In muP the blocks are
    :class:`tensorprograms.mup.MuResidual` (Depth-muP): ``m = sqrt(base_depth /
    depth)``, and ``MuAdam`` scales the branch learning rates by
    ``sqrt(base_depth / depth)``; in SP ``m = 1`` and nothing is scaled.

    Args:
        width: hidden width n.
        depth: number L of residual blocks (>= 1).
        d_in, d_out: input and output dimensions (finite).
        parametrization: ``"mup"`` (Depth-muP blocks, ``MuReadout``) or ``"sp"``.
        base_depth: L0, the depth at which Depth-muP equals SP.
        phi: the branch nonlinearity, ``"abs"`` or ``"relu"``.

    Example:
        >>> net = ResidualMLP(16, depth=8, parametrization="sp", phi="abs")
        >>> net(torch.zeros(3, 64)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        width: int,
        depth: int = 4,
        d_in: int = 64,
        d_out: int = 10,
        parametrization: str = "mup",
        base_depth: int = 2,
        phi: str = "abs",
    ):
        super().__init__()
        _check_parametrization(parametrization)
        if depth < 1:
            raise ValueError(f"ResidualMLP depth must be >= 1, got {depth}")
        if phi not in _BRANCH_NONLINEARITIES:
            raise ValueError(
                f"ResidualMLP phi must be one of {tuple(_BRANCH_NONLINEARITIES)}, "
                f"got {phi!r}"
            )
        self.input = nn.Linear(d_in, width)
        if parametrization == "mup":
            from tensorprograms.mup import MuResidual

            blocks = (
                MuResidual(_Branch(width, phi), depth, base_depth) for _ in range(depth)
            )
        else:
            blocks = (_PlainResidual(_Branch(width, phi)) for _ in range(depth))
        self.blocks = nn.ModuleList(blocks)
        self.readout = _readout(width, d_out, parametrization)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)  # (batch, width)
        for block in self.blocks:
            h = block(h)  # (batch, width)
        return self.readout(h)  # (batch, d_out)


class ResNet(nn.Module):
    """ResNet-style convnet for 1 x 8 x 8 images.

    ``conv3x3(1 -> C)`` and a 2x2 average pooling (8x8 -> 4x4), then ``depth``
    blocks ``h + conv3x3(relu(conv3x3(relu(h))))``, global average pooling and
    a readout. Channels ``C`` is the width.
    """

    def __init__(
        self,
        width: int,
        depth: int = 2,
        d_out: int = 10,
        parametrization: str = "mup",
    ):
        super().__init__()
        _check_parametrization(parametrization)
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.convs1 = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1) for _ in range(depth)
        )
        self.convs2 = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1) for _ in range(depth)
        )
        self.pool = nn.AvgPool2d(2)
        self.readout = _readout(width, d_out, parametrization)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.stem(x.reshape(-1, 1, 8, 8)))  # (batch, C, 4, 4)
        for c1, c2 in zip(self.convs1, self.convs2):
            h = h + c2(torch.relu(c1(torch.relu(h))))  # (batch, C, 4, 4)
        h = torch.relu(h).mean(dim=(2, 3))  # (batch, C)
        return self.readout(h)  # (batch, d_out)


class Attention(nn.Module):
    """Causal multi-head self-attention with muP logit scaling.

    Logits are ``q.k * attn_mult`` with ``attn_mult = sqrt(d_base) / d_head`` in
    muP (the ``1/d`` scaling of TP5, section 4, equal to ``1/sqrt(d_head)`` at
    the base head dimension) and ``1/sqrt(d_head)`` in SP. The logits pass
    through the identity module ``logits`` so that a coordinate check can see
    them.
    """

    def __init__(self, d_model: int, n_heads: int, attn_mult: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(
                f"d_model must be divisible by n_heads, got {d_model} and {n_heads}"
            )
        self.n_heads = n_heads
        self.attn_mult = attn_mult
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.logits = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, h, d // h).transpose(1, 2)  # (b, h, t, d/h)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        logits = self.logits(q @ k.transpose(-2, -1) * self.attn_mult)  # (b,h,t,t)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = logits.masked_fill(mask, float("-inf")).softmax(-1)  # (b, h, t, t)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # (b, t, d)
        return self.o(y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention and a 4x ReLU MLP."""

    def __init__(self, d_model: int, n_heads: int, attn_mult: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, attn_mult)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (b, t, d)
        return x + self.proj(torch.relu(self.fc(self.ln2(x))))  # (b, t, d)


class CharTransformer(nn.Module):
    """GPT-style character-level transformer.

    Args:
        width: model dimension ``d_model``; the head dimension is
            ``width / n_heads`` (the number of heads is fixed, so the head
            dimension grows with width as in TP5's experiments).
        depth: number of blocks.
        vocab: vocabulary size.
        context: maximal sequence length.
        n_heads: number of heads.
        parametrization: ``"mup"`` or ``"sp"``.
        base_width: the width at which muP equals SP (sets ``attn_mult``).
    """

    def __init__(
        self,
        width: int,
        depth: int = 2,
        vocab: int = 128,
        context: int = 32,
        n_heads: int = 4,
        parametrization: str = "mup",
        base_width: int = 32,
    ):
        super().__init__()
        _check_parametrization(parametrization)
        d_head = width // n_heads
        if parametrization == "mup":
            attn_mult = math.sqrt(base_width // n_heads) / d_head
        else:
            attn_mult = 1.0 / math.sqrt(d_head)
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(
            Block(width, n_heads, attn_mult) for _ in range(depth)
        )
        self.ln = nn.LayerNorm(width)
        self.readout = _readout(width, vocab, parametrization)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))  # (b,t,d)
        for block in self.blocks:
            x = block(x)  # (b, t, d)
        return self.readout(self.ln(x))  # (b, t, vocab)


# -------------------------------------------------------------------- tasks


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """A proxy training problem that can be built at any width and depth.

    Attributes:
        name: registry name.
        module: ``module(width, depth, parametrization) -> nn.Module``, the model
            before muP is applied.
        batches: ``batches(seed) -> iterator`` of training batches ``(x, y)``.
        eval_batch: a fixed batch ``(x, y)`` on which the final loss is measured.
        loss_fn: ``loss_fn(outputs, y) -> scalar tensor``.
        base_width: width at which muP equals SP.
        base_depth: depth at which Depth-muP equals SP.
        widths, depths: default sweep sizes.
        log2_lrs: default Adam learning-rate grid (log2).
        steps: default number of training steps.
        coord_log2_lr: Adam learning rate (log2) of the default coordinate
            check: near muP's optimum on the task.
    """

    name: str
    module: Callable[[int, int, str], nn.Module]
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    eval_batch: tuple[torch.Tensor, torch.Tensor]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    base_width: int
    base_depth: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    log2_lrs: tuple[float, ...]
    steps: int
    coord_log2_lr: float = -6.0

    def build(self, width: int, depth: int | None = None, parametrization="mup"):
        """The model at ``width`` and ``depth`` with ``parametrization`` applied.

        For muP, base shapes come from a base model at ``base_width`` and a
        delta model at ``2 * base_width`` (which tells the infinite dimensions
        even when ``width == base_width``).
        """
        _check_parametrization(parametrization)
        depth = self.base_depth if depth is None else depth
        model = self.module(width, depth, parametrization)
        if parametrization == "mup":
            from tensorprograms.mup import set_base_shapes

            with torch.random.fork_rng():
                base = self.module(self.base_width, depth, parametrization)
                delta = self.module(2 * self.base_width, depth, parametrization)
            set_base_shapes(model, base, delta=delta)
        return model

    def optimizer(
        self,
        model: nn.Module,
        lr: float,
        parametrization: str = "mup",
        depth: int | None = None,
    ) -> torch.optim.Optimizer:
        """Adam for the model: ``MuAdam`` in muP (which also applies Depth-muP's
        learning-rate factor inside ``MuResidual`` blocks), plain
        ``torch.optim.Adam`` in SP. ``depth`` is accepted for symmetry with
        :meth:`build` and not needed."""
        _check_parametrization(parametrization)
        if parametrization == "sp":
            return torch.optim.Adam(model.parameters(), lr=lr)
        from tensorprograms.mup import MuAdam

        return MuAdam(model.parameters(), lr=lr)


def train(
    task: Task,
    width: int,
    log2_lr: float,
    parametrization: str = "mup",
    depth: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    callback: Callable[[int, float], None] | None = None,
    metric: str = "mean",
) -> float:
    """Train ``task`` at one width, depth and learning rate; return the loss.

    Adam with learning rate ``2 ** log2_lr`` for ``steps`` minibatch steps.
    With ``metric="mean"`` (the default used by sweeps) the result is the
    minibatch training loss averaged over the run, ``(1/T) sum_t L_t``: a
    smooth measure of how fast the model trains whose optimum in the learning
    rate is sharp even on tasks that the model fits completely. With
    ``metric="final"`` it is the loss on the task's fixed evaluation batch
    after training. A run whose loss becomes non-finite stops and returns
    ``inf``.

    Example:
        >>> loss = train(get_task("mlp"), 16, -8, "sp", steps=5)
        >>> 1.5 < loss < 3.0
        True
    """
    if metric not in ("mean", "final"):
        raise ValueError(f"metric must be 'mean' or 'final', got {metric!r}")
    steps = task.steps if steps is None else steps
    torch.manual_seed(seed)
    model = task.build(width, depth, parametrization)
    opt = task.optimizer(model, 2.0**log2_lr, parametrization, depth)
    batches = task.batches(seed)
    total = 0.0
    for step in range(steps):
        x, y = next(batches)
        loss = task.loss_fn(model(x), y)
        value = loss.item()
        if not math.isfinite(value):
            return math.inf
        total += value
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback is not None:
            callback(step, value)
    if metric == "mean":
        return total / max(steps, 1)
    with torch.no_grad():
        x, y = task.eval_batch
        final = float(task.loss_fn(model(x), y))
    return final if math.isfinite(final) else math.inf


def _digits_task(name: str, module, **kw) -> Task:
    x, y, _, _ = digits_data()
    return Task(
        name=name,
        module=module,
        batches=lambda seed: _minibatches(x, y, 128, seed),
        eval_batch=(x, y),
        loss_fn=_cross_entropy,
        **kw,
    )


def _make_mlp() -> Task:
    return _digits_task(
        "mlp",
        lambda w, d, p: MLP(w, d, parametrization=p),
        base_width=64,
        base_depth=2,
        widths=(64, 128, 256, 512, 1024),
        depths=(2,),
        log2_lrs=tuple(float(v) for v in range(-13, -2)),
        steps=60,
        coord_log2_lr=-5.0,
    )


def _make_resmlp() -> Task:
    # every depth fits the training digits within the 150 steps (full-set loss
    # ~1e-3 near the optimum), so sweeps compare the mean loss over the run (how
    # fast each depth trains), not the final loss (mostly Adam's post-fit spikes)
    return _digits_task(
        "resmlp",
        lambda w, d, p: ResidualMLP(w, d, parametrization=p, base_depth=2),
        base_width=64,
        base_depth=2,
        widths=(64, 256),
        depths=(2, 4, 8, 16),
        log2_lrs=tuple(float(v) for v in range(-14, -3)),
        steps=150,
    )


def _make_resnet() -> Task:
    return _digits_task(
        "resnet",
        lambda w, d, p: ResNet(w, d, parametrization=p),
        base_width=16,
        base_depth=2,
        widths=(16, 32, 64, 128),
        depths=(2,),
        log2_lrs=tuple(float(v) for v in range(-12, -3)),
        steps=60,
    )


def _make_transformer() -> Task:
    text = stdlib_text()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)
    context = 32
    eval_batch = next(_char_batches(tokens, context, 64, seed=12345))
    return Task(
        name="transformer",
        module=lambda w, d, p: CharTransformer(
            w, d, vocab=len(vocab), context=context, parametrization=p, base_width=32
        ),
        batches=lambda seed: _char_batches(tokens, context, 16, seed),
        eval_batch=eval_batch,
        loss_fn=_cross_entropy,
        base_width=32,
        base_depth=2,
        widths=(32, 64, 128),
        depths=(2,),
        log2_lrs=tuple(float(v) for v in range(-12, -3)),
        steps=100,
        coord_log2_lr=-5.0,
    )


_TASKS = {
    "mlp": _make_mlp,
    "resmlp": _make_resmlp,
    "resnet": _make_resnet,
    "transformer": _make_transformer,
}
_CACHE: dict[str, Task] = {}

TASKS = tuple(_TASKS)


def get_task(task: str | Task) -> Task:
    """The built-in task named ``task`` (one of :data:`TASKS`), or ``task``.

    Example:
        >>> get_task("mlp").base_width
        64
    """
    if isinstance(task, Task):
        return task
    if task not in _TASKS:
        raise ValueError(f"task must be one of {TASKS} or a Task, got {task!r}")
    if task not in _CACHE:
        _CACHE[task] = _TASKS[task]()
    return _CACHE[task]
