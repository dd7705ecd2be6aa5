"""Coordinate checks: is every layer's coordinate size independent of width?

In a stable parametrization with feature learning (muP; TP4, Yang and Hu
2021, section 5; TP5, Yang et al. 2022, section D.1 "coordinate check") every
activation vector ``h`` of a network has coordinates of size Theta(1) at
initialisation and after any fixed number of training steps, and so does its
change ``h_t - h_0``. In SP trained with a width-independent learning rate the
changes of the hidden and output activations grow like a power of the width
(``n^1`` with Adam, ``n^(1/2)`` for hidden layers with SGD) and the attention
logits grow like ``n^(1/2)``.

A coordinate check measures, for every chosen module, the mean absolute
coordinate ``mean |h_t|`` and ``mean |h_t - h_0|`` on a fixed probe batch
after ``t = 0..steps`` optimizer steps, for several widths and seeds; fits the
log-log slope of the seed-averaged sizes against width; and flags every layer
whose slope exceeds a tolerance (it "grows" with width).

The default tolerance is 1/4: a correct parametrization has slope 0 up to
finite-width corrections of relative size O(n^(-1/2)), and the slowest
instability of the tables above grows like ``n^(1/2)``; 1/4 is the midpoint.
Over widths 64..1024 a slope of 1/4 is a factor 2 over the whole range.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

DEFAULT_TOL = 0.25
OUTPUT = "output"


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


def _default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return nn.functional.cross_entropy(
            out.reshape(-1, out.shape[-1]), y.reshape(-1)
        )
    return nn.functional.mse_loss(out, y)


def _select(model: nn.Module, modules) -> list[tuple[str, nn.Module]]:
    named = list(model.named_modules())
    if modules is None:
        chosen = [(n, m) for n, m in named if n and not list(m.children())]
    elif callable(modules):
        chosen = [(n, m) for n, m in named if n and modules(n, m)]
    else:
        by_name = dict(named)
        missing = [n for n in modules if n not in by_name]
        if missing:
            raise ValueError(
                f"coord_check: modules {missing} are not in the model; "
                f"expected names from named_modules(), e.g. {list(by_name)[1:6]}"
            )
        chosen = [(n, by_name[n]) for n in modules if n]
    return chosen


def _probe(model: nn.Module, chosen, x) -> dict[str, torch.Tensor]:
    """Forward ``x`` once; return every chosen module's output and the model's."""
    outs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in chosen:

        def hook(mod, inp, out, name=name):
            t = _first_tensor(out)
            if t is not None and name not in outs:
                outs[name] = t.detach().to(torch.float64).clone()

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.train(False)
    try:
        with torch.no_grad():
            out = _first_tensor(model(x))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if out is not None:
        outs[OUTPUT] = out.detach().to(torch.float64).clone()
    return outs


def _batches_for_seed(data, seed: int, steps: int) -> list:
    if callable(data):
        data = data(seed)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(d, torch.Tensor) for d in data)
    ):
        return [tuple(data)] * max(steps, 1)
    batches = list(itertools.islice(iter(data), max(steps, 1)))
    if not batches:
        raise ValueError("coord_check: data gave no batches; expected (x, y) pairs")
    while len(batches) < steps:  # a finite list shorter than steps: cycle it
        batches.append(batches[len(batches) % max(len(batches), 1)])
    return batches


@dataclasses.dataclass(frozen=True)
class CoordCheckResult:
    """Coordinate sizes across widths, seeds and steps.

    Attributes:
        widths: the widths, increasing, shape ``(W,)``.
        seeds: the seeds, shape ``(S,)``.
        layers: module names in the model's module order, then ``"output"``, ``(L,)``.
        act: ``mean |h_t|``, shape ``(W, S, T + 1, L)`` (``T`` = steps).
        delta: ``mean |h_t - h_0|``, same shape (zero at ``t = 0``).
        tol: largest log-log slope against width that still passes.
    """

    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    layers: tuple[str, ...]
    act: np.ndarray
    delta: np.ndarray
    tol: float = DEFAULT_TOL

    @property
    def steps(self) -> int:
        return self.act.shape[2] - 1

    def slopes(self, quantity: str = "delta") -> np.ndarray:
        """Least-squares slope of ``log2 size`` against ``log2 width``.

        The size is averaged over seeds first. Widths where the size is exactly
        zero (a zero-initialised layer) are left out; with fewer than two
        widths left the slope is NaN.

        Returns:
            array of shape ``(T + 1, L)``.
        """
        values = {"act": self.act, "delta": self.delta}.get(quantity)
        if values is None:
            raise ValueError(f"quantity must be 'act' or 'delta', got {quantity!r}")
        mean = values.mean(axis=1)  # (W, T + 1, L)
        logw = np.log2(np.asarray(self.widths, dtype=np.float64))
        out = np.full(mean.shape[1:], np.nan)
        for t, layer in itertools.product(*map(range, out.shape)):
            v = mean[:, t, layer]
            keep = np.isfinite(v) & (v > 0)
            if keep.sum() >= 2:
                out[t, layer] = np.polyfit(logw[keep], np.log2(v[keep]), 1)[0]
        return out

    def verdicts(self) -> dict[str, str]:
        """Per layer: ``"grows"`` if a slope of ``mean |h_t|`` (any step) or of
        ``mean |h_t - h_0|`` (steps >= 1) exceeds ``tol``; else ``"shrinks"``
        if the change after training has slope below ``-tol`` at every step,
        which does not fail the check: the layer does not learn features at
        large width (kernel regime), or, after a few steps, its learned part has
        not yet overtaken a random part that vanishes with width (muP's
        readout and attention logits at init); else ``"ok"``."""
        act, delta = self.slopes("act"), self.slopes("delta")[1:]
        out = {}
        for j, layer in enumerate(self.layers):
            worst = np.nanmax(np.r_[act[:, j], delta[:, j], -np.inf])
            trained = delta[:, j][np.isfinite(delta[:, j])]
            if worst > self.tol:
                out[layer] = "grows"
            elif trained.size and np.all(trained < -self.tol):
                out[layer] = "shrinks"
            else:
                out[layer] = "ok"
        return out

    @property
    def passed(self) -> bool:
        """True when no layer grows with width."""
        return "grows" not in self.verdicts().values()

    @property
    def failing(self) -> list[str]:
        """Names of the layers whose coordinates grow with width."""
        return [k for k, v in self.verdicts().items() if v == "grows"]

    def table(self) -> str:
        """A text table: per layer the worst slopes and the verdict."""
        act, delta = self.slopes("act"), self.slopes("delta")
        verdicts = self.verdicts()
        width = max(len(n) for n in self.layers + ("layer",))
        head = (
            f"{'layer':<{width}}  slope|h_0|  max slope|h_t|  max slope|dh_t|  verdict"
        )
        lines = [head, "-" * len(head)]
        for j, layer in enumerate(self.layers):
            a0 = act[0, j]
            a = np.nanmax(np.r_[act[1:, j], -np.inf])
            d = np.nanmax(np.r_[delta[1:, j], -np.inf])
            lines.append(
                f"{layer:<{width}}  {_fmt(a0):>10}  {_fmt(a):>14}  {_fmt(d):>15}"
                f"  {verdicts[layer]}"
            )
        status = "PASS" if self.passed else "FAIL: " + ", ".join(self.failing)
        lines.append(f"widths {list(self.widths)}, tol {self.tol:g}: {status}")
        return "\n".join(lines)

    def plot(self, path=None, title: str | None = None, quantities=("act", "delta")):
        """The muP paper's figure: one panel per step, one line per layer,
        mean |coordinate| against width on log-log axes. Rows: ``quantities``.

        Returns the matplotlib figure (saved to ``path`` when given).
        """
        return plot_coord_checks({title or "": self}, path, quantities=quantities)


def _fmt(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:+.2f}"


def plot_coord_checks(
    results: dict[str, CoordCheckResult], path=None, quantities=("act", "delta")
):
    """Several coordinate checks in one figure, one row per (result, quantity).

    Example: ``plot_coord_checks({"muP": r_mup, "SP": r_sp}, "coord.png")``.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    rows = [(k, q) for k in results for q in quantities]
    legend: dict = {}
    ncols = max(r.steps + 1 for r in results.values())
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(2.6 * ncols, 2.4 * len(rows)), squeeze=False
    )
    for i, (key, quantity) in enumerate(rows):
        res = results[key]
        values = {"act": res.act, "delta": res.delta}[quantity].mean(axis=1)
        verdicts = res.verdicts()
        cmap = plt.get_cmap("tab10" if len(res.layers) <= 10 else "turbo")
        ncolor = 10 if len(res.layers) <= 10 else len(res.layers)
        for t in range(ncols):
            ax = axes[i, t]
            if t > res.steps or (quantity == "delta" and t == 0):
                ax.axis("off")
                continue
            for j, layer in enumerate(res.layers):
                v = values[:, t, j]
                if not np.any(v > 0):
                    continue
                bad = verdicts[layer] == "grows"
                ax.plot(
                    res.widths,
                    np.where(v > 0, v, np.nan),
                    marker="o",
                    ms=3,
                    color=cmap(j % ncolor if ncolor == 10 else j / ncolor),
                    lw=2.4 if bad else 1,
                    ls="-" if bad else "--",
                    label=layer,
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(res.widths, [str(w) for w in res.widths], fontsize=7)
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.yaxis.set_major_formatter(ticker.LogFormatter())
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.tick_params(axis="y", labelsize=7)
            ax.set_title(f"{key} t={t}".strip(), fontsize=9)
            if t == 0 or (quantity == "delta" and t == 1):
                label = "mean |h_t|" if quantity == "act" else "mean |h_t - h_0|"
                ax.set_ylabel(label, fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel("width", fontsize=8)
        for j, layer in enumerate(res.layers):
            color = cmap(j % ncolor if ncolor == 10 else j / ncolor)
            legend.setdefault(layer, Line2D([], [], color=color, marker="o", ms=3))
    legend["grows with width"] = Line2D([], [], color="0.3", lw=2.4)
    legend["flat or shrinks"] = Line2D([], [], color="0.3", lw=1, ls="--")
    fig.tight_layout()
    fig.legend(
        list(legend.values()),
        list(legend),
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
    )
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def coord_check(
    model_factory: Callable[[int], nn.Module],
    optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer],
    widths: Sequence[int],
    data,
    *,
    steps: int = 3,
    seeds: Sequence[int] = (0, 1),
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    modules: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
    tol: float = DEFAULT_TOL,
) -> CoordCheckResult:
    """Coordinate check of a model family across widths (TP5, section D.1).

    For each width ``n`` and seed ``s``: ``torch.manual_seed(s)``, build
    ``model = model_factory(n)`` and ``opt = optimizer_factory(model)``, then
    for ``t = 0..steps`` record on the probe batch (the first batch)

        act[t, l]   = mean_i |h^l_t,i|,
        delta[t, l] = mean_i |h^l_t,i - h^l_0,i|

    for every chosen module ``l`` (its output) and the model output, taking
    one optimizer step on batch ``t`` between records. Probes run without
    gradient and in eval mode. A correct muP model has sizes flat in width;
    see :class:`CoordCheckResult` for the slopes and verdicts.

    Args:
        model_factory: ``width -> nn.Module`` (with its parametrization set up).
        optimizer_factory: ``model -> optimizer``.
        widths: at least two distinct widths.
        data: an iterable of ``(x, y)`` batches, one ``(x, y)`` pair reused at
            every step, or ``seed -> iterable`` for batches per seed.
        steps: number of optimizer steps (>= 1).
        seeds: seeds averaged over.
        loss_fn: ``(outputs, y) -> loss``; default cross-entropy for integer
            targets, else mean squared error.
        modules: names of modules to record, or a predicate
            ``(name, module) -> bool``; default every leaf module.
        tol: slope tolerance (default 1/4, see the module docstring).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> x, y = torch.randn(16, 4), torch.randn(16, 1)
        >>> def make(n):
        ...     return nn.Sequential(nn.Linear(4, n), nn.Tanh(), nn.Linear(n, 1))
        >>> r = coord_check(make, lambda m: torch.optim.SGD(m.parameters(), 0.1),
        ...                 [32, 64, 128], (x, y), steps=2)
        >>> r.layers
        ('0', '1', '2', 'output')
        >>> r.act.shape
        (3, 2, 3, 4)
    """
    widths = tuple(int(w) for w in widths)
    if len(set(widths)) < 2:
        raise ValueError(
            f"coord_check needs at least two distinct widths, got {widths}"
        )
    if steps < 1:
        raise ValueError(f"coord_check needs steps >= 1, got {steps}")
    order = np.argsort(widths)
    widths = tuple(widths[i] for i in order)
    seeds = tuple(int(s) for s in seeds)
    loss_fn = _default_loss if loss_fn is None else loss_fn

    layers: list[str] | None = None
    act = delta = None
    for wi, width in enumerate(widths):
        for si, seed in enumerate(seeds):
            batches = _batches_for_seed(data, seed, steps)
            torch.manual_seed(seed)
            model = model_factory(width)
            opt = optimizer_factory(model)
            chosen = _select(model, modules)
            probe_x = batches[0][0]
            h0 = _probe(model, chosen, probe_x)
            if layers is None:
                layers = [n for n, _ in chosen if n in h0] + [OUTPUT]
                shape = (len(widths), len(seeds), steps + 1, len(layers))
                act, delta = np.full(shape, np.nan), np.full(shape, np.nan)
            for t in range(steps + 1):
                if t > 0:
                    x, y = batches[t - 1]
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model(x), y).backward()
                    opt.step()
                    h = _probe(model, chosen, probe_x)
                else:
                    h = h0
                for j, name in enumerate(layers):
                    if name not in h:
                        raise ValueError(
                            f"coord_check: module {name!r} gave no tensor output at "
                            f"width {width}; expected the same modules at every width"
                        )
                    act[wi, si, t, j] = float(h[name].abs().mean())
                    d = (h[name] - h0[name]).abs().mean()
                    delta[wi, si, t, j] = float(d)
    if not np.all(np.isfinite(act)):
        bad = sorted({layers[j] for j in np.argwhere(~np.isfinite(act))[:, 3]})
        raise ValueError(
            f"coord_check: non-finite activations in {bad}; the model diverged "
            "(lower the learning rate or check the parametrization)"
        )
    return CoordCheckResult(widths, seeds, tuple(layers), act, delta, float(tol))


def builtin_coord_check(
    task: str = "mlp",
    parametrization: str = "mup",
    widths: Sequence[int] | None = None,
    *,
    log2_lr: float | None = None,
    steps: int = 3,
    seeds: Sequence[int] = (0, 1),
    depth: int | None = None,
    tol: float = DEFAULT_TOL,
) -> CoordCheckResult:
    """Coordinate check of a built-in task's model trained with Adam.

    Args:
        task: a name from :data:`tensorprograms.mup._tasks.TASKS`.
        parametrization: ``"mup"`` or ``"sp"``.
        widths: default the task's sweep widths.
        log2_lr: Adam learning rate ``2 ** log2_lr`` (the same at every width);
            default the task's ``coord_log2_lr``, near muP's optimum.
    """
    from ._tasks import get_task

    t = get_task(task)
    widths = t.widths if widths is None else widths
    lr = 2.0 ** (t.coord_log2_lr if log2_lr is None else log2_lr)
    return coord_check(
        lambda n: t.build(n, depth, parametrization),
        lambda m: t.optimizer(m, lr, parametrization, depth),
        widths,
        t.batches,
        steps=steps,
        seeds=seeds,
        loss_fn=t.loss_fn,
        tol=tol,
    )
