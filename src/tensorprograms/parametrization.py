"""abc(d)-parametrizations: exponents, classification, concrete scales (TP4, TP4b, TP5).

A layer l of width n is parametrized by exponents (a, b, c, d) (TP4 section 3, TP4b):
W = n^(-a) w (multiplier), w ~ N(0, n^(-2b)) (init), learning rate eta n^(-c),
Adam epsilon eps n^(-d). The layer types are those of TP5 Table 3: ``input``
(finite fan_in into the width; n = fan_out), ``hidden`` (width to width; n =
fan_in), ``output`` (width to finite fan_out; n = fan_in) and ``vector`` (biases and
gains; n = their length; TP4: biases are input-like).

The tables below are THEORY.md sections 5-8; :func:`classify` is TP4's stability /
feature-learning classification (THEORY.md section 5); :func:`scaling` turns a table
into the factors, relative to a base model, by which a concrete parameter's init
std, multiplier, learning rate and epsilon change with width and depth.

Multiplier symmetry (THEORY.md sections 5 and 8): for SGD, (a, b, c) -> (a + t,
b - t, c - 2t) leaves training unchanged; for Adam (entrywise normalised updates,
TP5 section B) (a, b, c, d) -> (a + t, b - t, c - t, d + t). ``Exponents.shift``
implements both, so any table can be realised with the multipliers a module
actually has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

__all__ = [
    "ROLES",
    "Exponents",
    "Parametrization",
    "DepthScaling",
    "Classification",
    "Scaling",
    "MUP",
    "MUP_ADAM",
    "SP",
    "SP_ADAM",
    "NTP",
    "MEAN_FIELD",
    "SPECTRAL",
    "SPECTRAL_ADAM",
    "DEPTH_MUP",
    "get_parametrization",
    "standard",
    "classify",
    "scaling",
    "ConcreteScaling",
    "param_scaling",
]

ROLES = ("input", "hidden", "output", "vector")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Exponents:
    """Width exponents of one layer type: multiplier n^-a, init std n^-b, LR n^-c,
    Adam epsilon n^-d.

    >>> Exponents(-0.5, 0.5, 0.0).shift(0.5, "sgd")
    Exponents(a=0.0, b=0.0, c=-1.0, d=0.0)
    """

    a: float
    b: float
    c: float
    d: float = 0.0

    def shift(self, t: float, optimizer: str) -> Exponents:
        """Apply the multiplier symmetry by t (THEORY.md sections 5 and 8).

        SGD: (a + t, b - t, c - 2t, d); Adam: (a + t, b - t, c - t, d + t).
        """
        _check_optimizer(optimizer)
        if optimizer == "sgd":
            return Exponents(self.a + t, self.b - t, self.c - 2 * t, self.d)
        return Exponents(self.a + t, self.b - t, self.c - t, self.d + t)

    def with_multiplier(self, a: float, optimizer: str) -> Exponents:
        """The equivalent exponents whose multiplier exponent is ``a``."""
        return self.shift(a - self.a, optimizer)


@dataclass(frozen=True)
class DepthScaling:
    """Depth-muP (TP6, THEORY.md section 9), relative to a base depth L0.

    Residual branch multiplier alpha (L / L0)^(-branch_exponent); learning rate of
    the branch weights times (L / L0)^(-lr_exponent[optimizer]).
    Valid for one layer per residual block (TP6: with two layers per block no depth
    scaling gives an ideal limit).

    >>> DEPTH_MUP.branch_multiplier(depth=16, base_depth=4)
    0.5
    >>> DEPTH_MUP.lr_factor("adam", depth=16, base_depth=4)
    0.5
    """

    branch_exponent: float = 0.5
    lr_exponent: tuple[tuple[str, float], ...] = (("sgd", 0.0), ("adam", 0.5))

    def branch_multiplier(self, depth: int, base_depth: int, alpha=1.0) -> float:
        """alpha (L / L0)^(-branch_exponent)."""
        _check_depth(depth, base_depth)
        return alpha * (depth / base_depth) ** (-self.branch_exponent)

    def lr_factor(self, optimizer: str, depth: int, base_depth: int) -> float:
        """(L / L0)^(-lr_exponent) for the branch weights."""
        _check_optimizer(optimizer)
        _check_depth(depth, base_depth)
        return (depth / base_depth) ** (-dict(self.lr_exponent)[optimizer])


DEPTH_MUP = DepthScaling()


@dataclass(frozen=True)
class Parametrization:
    """An abc(d)-parametrization: :class:`Exponents` per layer type.

    Args:
        name: short name ("mup", "sp", "ntp", "mean_field", "spectral").
        optimizer: "sgd" or "adam": how the learning-rate exponent c is read.
        input, hidden, output, vector: exponents per layer type (``hidden`` may be
            None for a parametrization defined only for one hidden layer, L = 1).
        rectangular_lr: for hidden weights with fan_in != fan_out, SGD learning rate
            times fan_out / fan_in (the spectral condition, THEORY.md section 7;
            equal to Table 3 for square weights).
        reference: paper and section of the table.
    """

    name: str
    optimizer: str
    input: Exponents
    hidden: Exponents | None
    output: Exponents
    vector: Exponents
    rectangular_lr: bool = False
    reference: str = field(default="", compare=False)

    def __post_init__(self):
        _check_optimizer(self.optimizer)

    def layer(self, role: str) -> Exponents:
        """Exponents of one layer type ("input", "hidden", "output", "vector")."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        exps = getattr(self, role)
        if exps is None:
            raise ValueError(
                f"parametrization {self.name!r} is defined for one hidden layer only "
                "(L = 1): it has no hidden-layer exponents"
            )
        return exps

    def shifted(self, multipliers: dict[str, float]) -> Parametrization:
        """The equivalent parametrization with the given multiplier exponent a per
        layer type (others unchanged); e.g. ``{r: 0 for r in ROLES}`` gives TP5
        Table 3's multiplier-free form.

        >>> MUP.shifted({"output": 1.0}).output
        Exponents(a=1.0, b=0.0, c=-1.0, d=0.0)
        """
        changes = {}
        for role, a in multipliers.items():
            changes[role] = self.layer(role).with_multiplier(a, self.optimizer)
        return replace(self, **changes)


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def _check_depth(depth, base_depth) -> None:
    if not (depth > 0 and base_depth > 0):
        raise ValueError(
            f"depth and base_depth must be positive, got depth={depth}, "
            f"base_depth={base_depth}"
        )


E = Exponents
# THEORY.md section 5 (TP4 Table 1 and section 3), in TP4's form with one global c.
MUP = Parametrization(
    "mup", "sgd", E(-0.5, 0.5, 0.0), E(0.0, 0.5, 0.0), E(0.5, 0.5, 0.0),
    E(-0.5, 0.5, 0.0), rectangular_lr=True, reference="TP4 sec. 3; TP5 Table 3",
)  # fmt: skip
NTP = Parametrization(
    "ntp", "sgd", E(0.0, 0.0, 0.0), E(0.5, 0.0, 0.0), E(0.5, 0.0, 0.0),
    E(0.0, 0.0, 0.0), reference="TP4 sec. 3",
)  # fmt: skip
MEAN_FIELD = Parametrization(
    "mean_field", "sgd", E(0.0, 0.0, -1.0), None, E(1.0, 0.0, -1.0),
    E(0.0, 0.0, -1.0), reference="TP4 sec. 3 (L = 1)",
)  # fmt: skip


def standard(c: float = 0.0, optimizer: str = "sgd") -> Parametrization:
    """Standard parametrization (PyTorch's default) with learning rate n^(-c).

    c = 0 is what practitioners use (TP5 Table 3 "SP"; unstable in the limit for
    SGD, TP4); c = 1 is the stable SP of TP4 (kernel regime, r = 1/2).

    >>> standard(1.0).hidden
    Exponents(a=0.0, b=0.5, c=1.0, d=0.0)
    """
    return Parametrization(
        "sp",
        optimizer,
        E(0.0, 0.0, c),
        E(0.0, 0.5, c),
        E(0.0, 0.5, c),
        E(0.0, 0.0, c),
        reference="TP4 sec. 3; TP5 Table 3 (SP)",
    )


SP = standard(0.0)
SP_ADAM = standard(0.0, "adam")
# THEORY.md section 7 (spectral condition), written directly in multiplier-free form
# with n_0 = d and n_{L+1} fixed: std n_{l-1}^(-1/2) min(1, sqrt(n_l / n_{l-1})), SGD
# LR n_l / n_{l-1}, Adam LR 1 / n_{l-1}; so input (b, c) = (0, -1), hidden (1/2, 0),
# output (1, 1) for SGD, and c = (0, 1, 1) for Adam.
SPECTRAL = Parametrization(
    "spectral", "sgd", E(0.0, 0.0, -1.0), E(0.0, 0.5, 0.0), E(0.0, 1.0, 1.0),
    E(0.0, 0.0, -1.0), rectangular_lr=True, reference="spectral condition sec. 3",
)  # fmt: skip
SPECTRAL_ADAM = Parametrization(
    "spectral", "adam", E(0.0, 0.0, 0.0, 1.0), E(0.0, 0.5, 1.0, 1.0),
    E(0.0, 1.0, 1.0, 0.0), E(0.0, 0.0, 0.0, 1.0), reference="spectral condition",
)  # fmt: skip
# THEORY.md section 6 / TP5 Table 3 (Adam column), multiplier-free. d: epsilon
# follows the gradient entries, Theta(1/n) except for the output weights (check:
# derived from the backward pass of muP, not quoted).
MUP_ADAM = Parametrization(
    "mup", "adam", E(0.0, 0.0, 0.0, 1.0), E(0.0, 0.5, 1.0, 1.0), E(0.0, 1.0, 1.0, 0.0),
    E(0.0, 0.0, 0.0, 1.0), reference="TP4b; TP5 Table 3 (Adam)",
)  # fmt: skip

_TABLES = {
    ("mup", "sgd"): MUP,
    ("mup", "adam"): MUP_ADAM,
    ("sp", "sgd"): SP,
    ("sp", "adam"): SP_ADAM,
    ("ntp", "sgd"): NTP,
    ("mean_field", "sgd"): MEAN_FIELD,
    ("spectral", "sgd"): SPECTRAL,
    ("spectral", "adam"): SPECTRAL_ADAM,
}


def get_parametrization(name: str, optimizer: str = "sgd") -> Parametrization:
    """The table for ``name`` in ("mup", "sp", "ntp", "mean_field", "spectral").

    >>> get_parametrization("mup", "adam").hidden.c
    1.0
    """
    _check_optimizer(optimizer)
    try:
        return _TABLES[(name, optimizer)]
    except KeyError:
        have = sorted({f"{n}/{o}" for n, o in _TABLES})
        raise ValueError(
            f"no table for parametrization {name!r} with {optimizer}; have {have} "
            "(TP4 defines NTP and mean field for SGD only)"
        ) from None


@dataclass(frozen=True)
class Classification:
    """TP4's verdict for an abc-parametrization of an L-hidden-layer MLP (SGD).

    Attributes:
        r: exponent of the coordinate size n^(-r) of the change of the last hidden
            layer's features after one step (TP4 Def. 3.2).
        r_layers: r_l per hidden layer l = 1..L (features of layer l move iff
            r_l = 0).
        stable: TP4 Thm 3.3's conditions hold.
        nontrivial: the output moves by Theta(1) in training.
        regime: "unstable", "trivial", "kernel" (r > 0) or "feature_learning"
            (r = 0); by the Dynamical Dichotomy never both of the last two.
        failed: the conditions that fail, as text.
    """

    r: float
    r_layers: tuple[float, ...]
    stable: bool
    nontrivial: bool
    regime: str
    failed: tuple[str, ...]

    @property
    def feature_learning(self) -> bool:
        """True in the feature-learning regime (r = 0)."""
        return self.regime == "feature_learning"


def _common_c(p: Parametrization, layers: list[Exponents]) -> list[Exponents]:
    """Shift every layer to c = 0 with the SGD symmetry (per-layer learning rates)."""
    return [e.shift(e.c / 2, "sgd") for e in layers]


def classify(p: Parametrization, depth: int = 2, tol: float = 1e-12) -> Classification:
    """TP4's classification of an abc-parametrization (THEORY.md section 5).

    Per-layer learning rates are first moved into the multipliers with the symmetry
    (a, b, c) -> (a + c/2, b - c/2, 0), then with c = 0:

        r_l = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c) + c - 1 + min_{m<=l} (2 a_m + [m=1])
        r = r_L;
        stable iff a_1 + b_1 = 0, a_l + b_l = 1/2 (2 <= l <= L), a_{L+1} + b_{L+1} >=
        1/2, r >= 0, 2 a_{L+1} + c >= 1, a_{L+1} + b_{L+1} + r >= 1;
        nontrivial iff a_{L+1} + b_{L+1} + r = 1 or 2 a_{L+1} + c = 1;
        feature learning iff r = 0, kernel regime iff r > 0 (when stable and
        nontrivial).

    Biases (``vector``) are input-like and must satisfy the input conditions.

    Args:
        p: an SGD parametrization.
        depth: number of hidden layers L >= 1 (layers 2..L are ``hidden``).
        tol: tolerance for the equalities between exponents.

    Returns:
        :class:`Classification`.

    >>> c = classify(MUP)
    >>> c.r, c.regime
    (0.0, 'feature_learning')
    >>> classify(NTP).regime, classify(NTP).r
    ('kernel', 0.5)
    """
    if p.optimizer != "sgd":
        raise ValueError(
            f"classify covers TP4's SGD classification; got a parametrization for "
            f"{p.optimizer!r} (TP4b's Adam classification is not implemented)"
        )
    if depth < 1:
        raise ValueError(f"depth (number of hidden layers) must be >= 1, got {depth}")
    hidden = [p.layer("hidden")] * (depth - 1) if depth > 1 else []
    first, *mid, last = _common_c(p, [p.input, *hidden, p.output])
    vector = _common_c(p, [p.vector])[0]
    c = 0.0
    out_ab = last.a + last.b
    head = min(out_ab, 2 * last.a + c) + c - 1
    inner, r_layers = math.inf, []
    for m, e in enumerate([first, *mid], start=1):
        inner = min(inner, 2 * e.a + (1 if m == 1 else 0))
        r_layers.append(head + inner)
    r = r_layers[-1]

    def eq(x, y):
        return abs(x - y) <= tol

    checks = [
        (eq(first.a + first.b, 0), "a_1 + b_1 = 0"),
        (eq(vector.a + vector.b, 0), "bias a + b = 0 (biases are input-like)"),
        (all(eq(e.a + e.b, 0.5) for e in mid), "a_l + b_l = 1/2 for 2 <= l <= L"),
        (out_ab >= 0.5 - tol, "a_{L+1} + b_{L+1} >= 1/2"),
        (r >= -tol, "r >= 0"),
        (2 * last.a + c >= 1 - tol, "2 a_{L+1} + c >= 1"),
        (out_ab + r >= 1 - tol, "a_{L+1} + b_{L+1} + r >= 1"),
    ]
    failed = tuple(text for ok, text in checks if not ok)
    stable = not failed
    nontrivial = eq(out_ab + r, 1) or eq(2 * last.a + c, 1)
    if not stable:
        regime = "unstable"
    elif not nontrivial:
        regime = "trivial"
    elif abs(r) <= tol:
        regime = "feature_learning"
    else:
        regime = "kernel"
    r_layers = tuple(0.0 if abs(x) <= tol else x for x in r_layers)
    return Classification(
        0.0 if abs(r) <= tol else r, r_layers, stable, nontrivial, regime, failed
    )


@dataclass(frozen=True)
class Scaling:
    """Concrete factors for one parameter, relative to the base model (1 at base).

    Attributes:
        init_std: factor on the init std (n^-b).
        multiplier: the module's forward multiplier (n^-a).
        lr: factor on the learning rate (n^-c, times depth and rectangular terms).
        eps: factor on Adam's epsilon (n^-d).
    """

    init_std: float
    multiplier: float
    lr: float
    eps: float


def scaling(
    role: str,
    *,
    fan_in_mult: float = 1.0,
    fan_out_mult: float = 1.0,
    parametrization: Parametrization = MUP,
    multiplier_exponent: float | None = 0.0,
    depth_mult: float = 1.0,
    depth: DepthScaling | None = None,
) -> Scaling:
    """Init std, multiplier, LR and epsilon factors of one parameter vs. its base.

    With n the layer type's width multiplier (input: fan_out_mult; hidden and
    output: fan_in_mult; vector: fan_out_mult, its length) and (a, b, c, d) the
    table's exponents moved by the multiplier symmetry to multiplier exponent
    ``multiplier_exponent`` (0: TP5 Table 3; 1 for an output layer: Table 8 /
    ``MuReadout``; None: the table as stored):

        init_std = n^-b, multiplier = n^-a, lr = n^-c, eps = n^-d,

    times fan_out_mult / fan_in_mult on a hidden SGD learning rate when the table
    is ``rectangular_lr`` (spectral condition), and times the depth factor
    (``depth.lr_factor`` with depth / base depth = ``depth_mult``) when ``depth``
    is given.

    Args:
        role: "input", "hidden", "output" or "vector".
        fan_in_mult, fan_out_mult: fan_in / base fan_in and fan_out / base fan_out
            (1 for a finite dimension).
        parametrization: the table.
        multiplier_exponent: the multiplier exponent a of the module.
        depth_mult: L / L0 for parameters inside residual branches, else 1.
        depth: a :class:`DepthScaling` (e.g. ``DEPTH_MUP``) or None.

    >>> s = scaling("hidden", fan_in_mult=4, fan_out_mult=4,
    ...             parametrization=MUP_ADAM)
    >>> s.init_std, s.lr
    (0.5, 0.25)
    """
    exps = parametrization.layer(role)
    if multiplier_exponent is not None:
        exps = exps.with_multiplier(multiplier_exponent, parametrization.optimizer)
    n = fan_out_mult if role in ("input", "vector") else fan_in_mult
    lr = n ** (-exps.c)
    if role == "hidden" and parametrization.rectangular_lr:
        if parametrization.optimizer == "sgd":
            lr *= fan_out_mult / fan_in_mult
    if depth is not None:
        lr *= depth.lr_factor(parametrization.optimizer, depth_mult, 1)
    return Scaling(n ** (-exps.b), n ** (-exps.a), lr, n ** (-exps.d))


@dataclass(frozen=True)
class ConcreteScaling:
    """Absolute init std and factors for one parameter (see :func:`param_scaling`).

    Attributes:
        init_std: the std to initialise the stored tensor with.
        multiplier: width multiplier n^-a the module applies to it in forward.
        branch_multiplier: Depth-muP residual multiplier (1 outside branches).
        lr_factor: factor on the base learning rate.
        eps_factor: factor on Adam's epsilon.
    """

    init_std: float
    multiplier: float
    branch_multiplier: float
    lr_factor: float
    eps_factor: float


def param_scaling(
    role: str,
    fan_in: int,
    fan_out: int,
    base_fan_in: int | None = None,
    base_fan_out: int | None = None,
    *,
    parametrization: Parametrization = MUP,
    multiplier_exponent: float | None = 0.0,
    depth: int | None = None,
    base_depth: int | None = None,
    sigma: float = 1.0,
) -> ConcreteScaling:
    """Concrete init std, multipliers and LR / epsilon factors of one parameter.

    The init std is sigma / sqrt(base_fan_in) times n^-b (TP5 Table 3: variance
    sigma^2 / fan_in at the base, biases and gains counting as fan_in = 1), so at
    the base shapes it is PyTorch's fan_in rule; the other factors are those of
    :func:`scaling` with width multipliers fan / base_fan, plus Depth-muP
    (TP6: branch multiplier sqrt(L0 / L), LR factor ``DEPTH_MUP.lr_factor``)
    when ``depth`` and ``base_depth`` are given (for a parameter inside a
    residual branch).

    Args:
        role: "input", "hidden", "output" or "vector".
        fan_in, fan_out: the parameter's fans (a vector: fan_out = its length).
        base_fan_in, base_fan_out: the base model's (default: the same, i.e. the
            dimension is not a width).
        parametrization: the table (its ``optimizer`` picks the LR row).
        multiplier_exponent: the module's multiplier exponent (0: Table 3).
        depth, base_depth: network depth L and base depth L0, for branch weights.
        sigma: init std scale at the base (a transferable hyperparameter).

    >>> s = param_scaling("hidden", 1024, 1024, 256, 256, parametrization=MUP_ADAM)
    >>> s.init_std == 1024**-0.5, s.lr_factor
    (True, 0.25)
    >>> param_scaling("output", 1024, 10, 256, 10).init_std == 256**-0.5 / 4
    True
    """
    base_fan_in = fan_in if base_fan_in is None else base_fan_in
    base_fan_out = fan_out if base_fan_out is None else base_fan_out
    if min(fan_in, fan_out, base_fan_in, base_fan_out) <= 0:
        raise ValueError(
            f"fans must be positive, got fan_in={fan_in}, fan_out={fan_out}, "
            f"base_fan_in={base_fan_in}, base_fan_out={base_fan_out}"
        )
    fi, fo = fan_in / base_fan_in, fan_out / base_fan_out
    if (depth is None) != (base_depth is None):
        raise ValueError("give both depth and base_depth, or neither")
    depth_mult = 1.0 if depth is None else depth / base_depth
    s = scaling(
        role,
        fan_in_mult=fi,
        fan_out_mult=fo,
        parametrization=parametrization,
        multiplier_exponent=multiplier_exponent,
        depth_mult=depth_mult,
        depth=None if depth is None else DEPTH_MUP,
    )
    base_std = sigma if role == "vector" else sigma / math.sqrt(base_fan_in)
    branch = 1.0 if depth is None else DEPTH_MUP.branch_multiplier(depth, base_depth)
    return ConcreteScaling(base_std * s.init_std, s.multiplier, branch, s.lr, s.eps)
