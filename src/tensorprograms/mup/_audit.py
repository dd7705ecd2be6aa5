"""Audit of a muP set-up: what each parameter is, and what breaks transfer.

For every parameter the audit lists its inferred role (the column of TP5,
Yang et al. 2022, Table 3: input, hidden, output, vector, fixed), its width
multipliers, its measured init standard deviation, its forward multiplier
(``output_mult / width_mult`` for readouts, Table 8's form), the learning-rate
factor the optimizer really applies (effective lr / global lr) and the factor
muP asks for. It warns (:class:`TransferWarning`) about the usual reasons why a
coordinate check or a transfer fails:

* ``nn.MultiheadAttention`` or ``F.scaled_dot_product_attention`` without an
  explicit ``scale``: logits ``q.k / sqrt(d)`` grow like ``sqrt(d)`` once
  queries and keys align during training; muP uses ``q.k / d`` (TP5, sec. 4);
* a readout that is not zero-initialised (TP5, sec. D.2: a random readout
  adds a width-dependent initial output, so the proxy and target differ);
* a parameter that muP scales but the optimizer does not (a plain
  ``torch.optim`` optimizer, or a model without base shapes);
* an LR scheduler that changes the ratios between parameter groups (one that
  writes absolute values into groups holding pre-scaled learning rates).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch import nn

from ._optim import applied_factor


class TransferWarning(UserWarning):
    """Something in a muP set-up that commonly breaks hyperparameter transfer."""


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One parameter's entry: name, shape, role, width multipliers
    ``(fan_out, fan_in)``, measured init std, forward multiplier, the
    learning-rate factor applied by the optimizer (None without optimizer or
    when it does not train the parameter) and the one muP asks for."""

    name: str
    shape: tuple[int, ...]
    role: str
    width_mults: tuple[float, float]
    init_std: float
    multiplier: float
    lr_factor: float | None
    expected_lr_factor: float | None


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The audit's table (:attr:`rows`) and the problems found (:attr:`issues`)."""

    rows: tuple[AuditRow, ...]
    issues: tuple[str, ...]

    def table(self) -> str:
        head = (
            "parameter",
            "shape",
            "role",
            "wm out/in",
            "init std",
            "mult",
            "lr factor",
            "muP lr",
        )
        body = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "scalar",
                r.role,
                f"{r.width_mults[0]:g}/{r.width_mults[1]:g}",
                f"{r.init_std:.3g}",
                f"{r.multiplier:.3g}",
                "-" if r.lr_factor is None else f"{r.lr_factor:.4g}",
                "-" if r.expected_lr_factor is None else f"{r.expected_lr_factor:.4g}",
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head]]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
        if self.issues:
            lines.append("issues:")
            lines += [f"  - {msg}" for msg in self.issues]
        else:
            lines.append("no issues found")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _kind(optimizer: torch.optim.Optimizer) -> str:
    """ "sgd" for SGD-like optimizers, else "adam" (entrywise normalised)."""
    if isinstance(optimizer, (torch.optim.SGD, torch.optim.ASGD)):
        return "sgd"
    return "adam"


def _global_lr(optimizer, group) -> float:
    if "mu_lr_factor" in group:
        return float(group.get("_mu_saved", {}).get("lr", group["lr"]))
    return float(optimizer.defaults.get("lr", group["lr"]))


def _lr_factors(optimizer) -> dict[int, float]:
    """id(param) -> effective lr / global lr."""
    out = {}
    for g in optimizer.param_groups:
        base = _global_lr(optimizer, g)
        lr = float(g.get("_mu_saved", {}).get("lr", g["lr"])) * applied_factor(
            optimizer, g, "mu_lr_factor"
        )
        for p in g["params"]:
            out[id(p)] = lr / base if base else math.nan
    return out


def _effective_lrs(optimizer) -> list[float]:
    return [
        float(g.get("_mu_saved", {}).get("lr", g["lr"]))
        * applied_factor(optimizer, g, "mu_lr_factor")
        for g in optimizer.param_groups
    ]


def _ratios_change(optimizer, scheduler, steps: int = 3) -> bool:
    """Whether ``scheduler`` makes the ratios of effective learning rates between
    parameter groups differ from those at the optimizer's creation (the groups'
    ``initial_lr``), now or over a few steps (stepped on saved state, restored
    after)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return False  # multiplies every group by one factor
    groups = optimizer.param_groups
    initial = [
        float(g.get("initial_lr", g["lr"]))
        * applied_factor(optimizer, g, "mu_lr_factor")
        for g in groups
    ]

    def differs(lrs) -> bool:
        if any(v == 0 for v in lrs) or any(v == 0 for v in initial):
            return False
        r0 = [v / initial[0] for v in initial]
        r1 = [v / lrs[0] for v in lrs]
        return any(not math.isclose(x, y, rel_tol=1e-6) for x, y in zip(r0, r1))

    if differs(_effective_lrs(optimizer)):
        return True
    opt_state = optimizer.state_dict()
    sched_state = scheduler.state_dict()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(steps):
                scheduler.step()
                if differs(_effective_lrs(optimizer)):
                    return True
        return False
    finally:
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(sched_state)


def _attention_issues(model: nn.Module, example_input) -> list[str]:
    issues = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            issues.append(
                f"module {name!r} is nn.MultiheadAttention, whose logits are "
                "q.k/sqrt(d): muP needs q.k/d (TP5 sec. 4); use "
                "F.scaled_dot_product_attention(q, k, v, scale=c / d_head)"
            )
    if example_input is None:
        return issues
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kw):
        calls.append(kw.get("scale", args[3] if len(args) > 3 else None))
        return real(q, k, v, *args, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    if any(s is None for s in calls):
        issues.append(
            "F.scaled_dot_product_attention is called without `scale`, so its "
            "logits are q.k/sqrt(d): muP needs q.k/d (TP5 sec. 4); pass "
            "scale=c / d_head"
        )
    return issues


def audit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    example_input=None,
    warn: bool = True,
) -> AuditReport:
    """Table of every parameter's muP role, init, multiplier and LR factor.

    The expected LR factor is muP's (TP5 Table 3, Adam or SGD row by the
    optimizer's kind; readout in Table 8's multiplier form), from
    :func:`tensorprograms.mup.param_factors`; the applied factor is the group's
    effective learning rate over the global one (the ``lr`` passed to a muP
    optimizer, or the optimizer's default ``lr`` for a plain one).

    Args:
        model: the model (set up by ``set_base_shapes``, or not: then every
            parameter is reported as unscaled).
        optimizer: its optimizer, to check the learning-rate factors.
        scheduler: an LR scheduler of ``optimizer``, to check that it keeps the
            ratios between groups (stepped on saved state, then restored).
        example_input: a batch to run once, to catch attention calls without
            an explicit scale.
        warn: emit one :class:`TransferWarning` per issue.

    Returns:
        an :class:`AuditReport`; ``print(report)`` shows the table.

    Example:
        >>> from tensorprograms.mup import set_base_shapes, MuReadout, MuAdam
        >>> def net(w):
        ...     return nn.Sequential(nn.Linear(3, w), nn.ReLU(), nn.Linear(w, w),
        ...                          nn.ReLU(), MuReadout(w, 1, readout_zero_init=True))
        >>> model = set_base_shapes(net(64), net(16))
        >>> r = audit(model, MuAdam(model, lr=1e-2))
        >>> [(row.name, row.role) for row in r.rows[::2]]
        [('0.weight', 'input'), ('2.weight', 'hidden'), ('4.weight', 'output')]
        >>> [row.lr_factor for row in r.rows[::2]]
        [1.0, 0.25, 1.0]
        >>> r.issues
        ()
    """
    from ._optim import param_factors
    from ._readout import is_readout
    from ._setup import unwrap
    from ._state import find_state, named_infos

    inner = unwrap(model)
    issues: list[str] = []
    set_up = find_state(inner) is not None
    if not set_up:
        issues.append(
            f"{type(inner).__name__} has no muP base shapes: every parameter is "
            "in SP and nothing is scaled; call set_base_shapes(model, base)"
        )
    readouts = {id(m.weight): m for m in inner.modules() if is_readout(m)}
    factors = _lr_factors(optimizer) if optimizer is not None else {}
    kind = _kind(optimizer) if optimizer is not None else "adam"
    in_optimizer = set(factors)

    rows = []
    unscaled = []
    if set_up:
        entries = [(n, p, info) for n, p, info in named_infos(inner)]
    else:
        entries = [(n, p, None) for n, p in inner.named_parameters()]
    for name, p, info in entries:
        role = info.role.value if info is not None else "sp"
        wm = (info.fan_out_mult, info.fan_in_mult) if info is not None else (1.0, 1.0)
        mult = 1.0
        ro = readouts.get(id(p))
        if ro is not None:
            mult = ro.output_mult / (ro.width_mult() if set_up else 1.0)
        if info is not None and info.depth_mult != 1.0:
            mult *= info.depth_mult**-0.5
        std = float(p.detach().float().std()) if p.numel() > 1 else 0.0
        expected = None
        if info is not None:
            expected = param_factors(info, kind)["lr"]
        actual = factors.get(id(p)) if optimizer is not None else None
        rows.append(
            AuditRow(name, tuple(p.shape), role, wm, std, mult, actual, expected)
        )
        if (
            actual is not None
            and expected is not None
            and not math.isclose(expected, 1.0)
            and math.isclose(actual, 1.0)
        ):
            unscaled.append(f"{name} (muP factor {expected:.4g})")
        if ro is not None and ro.weight is p and bool(p.detach().abs().sum() > 0):
            issues.append(
                f"readout {name!r} is not zero-initialised: its random initial "
                "output differs between proxy and target widths; use "
                "readout_zero_init=True (TP5 sec. D.2)"
            )
    if unscaled:
        issues.append(
            f"the optimizer ({type(optimizer).__name__}) does not scale "
            f"{', '.join(unscaled)}: use MuAdam / MuSGD / mu_optimizer"
        )
    if optimizer is not None:
        missing = [
            n
            for n, p in inner.named_parameters()
            if p.requires_grad and id(p) not in in_optimizer
        ]
        if missing:
            issues.append(f"parameters not in the optimizer: {', '.join(missing)}")
    if scheduler is not None and optimizer is not None:
        if _ratios_change(optimizer, scheduler):
            issues.append(
                f"{type(scheduler).__name__} changes the ratios between the "
                "parameter groups' learning rates (it sets absolute values), which "
                "undoes muP's per-group scaling; use MuAdam/MuSGD, whose groups "
                "keep the global lr and apply the factors at each step"
            )
    issues += _attention_issues(inner, example_input)
    if warn:
        for msg in issues:
            warnings.warn(msg, TransferWarning, stacklevel=2)
    return AuditReport(tuple(rows), tuple(issues))
