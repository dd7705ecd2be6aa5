"""muP and muTransfer for ordinary PyTorch models (TP5; THEORY.md sections 8-9).

Drop-in for Microsoft's ``mup`` 1.0.0: code written for it runs by changing
``import mup`` / ``from mup import ...`` to ``tensorprograms.mup``. Differences,
all deliberate: the metadata lives beside the model (survives deepcopy, pickle,
``torch.compile``, DDP, FSDP), set-up is idempotent, optimizer groups keep the
global learning rate and apply muP's ratios at each step (so every LR scheduler
keeps them), the tied readout's init does not grow with width, and errors say
what is wrong.

Code that imports from ``mup``'s submodules (``mup.optim``, ``mup.layer``,
``mup.shape``, ``mup.infshape``, ``mup.init``) finds the same names here;
``mup.coord_check``'s ``get_coord_data`` and ``plot_coord_data`` are in this
package itself (``tensorprograms.mup.coord_check`` is this library's own check).

Which table each piece implements (TP5 = arXiv 2203.03466):

- :func:`set_base_shapes`: init column of TP5 Table 3 (THEORY.md section 8) for
  input, hidden weights and biases;
- :class:`MuReadout` and relatives: the output column of Table 3 written in the
  multiplier form of TP5 Table 8 (multiplier 1/width_mult);
- :class:`MuSGD`, :class:`MuAdam`, :class:`MuAdamW`, :func:`mu_param_groups`: the
  SGD and Adam learning-rate rows of Table 3 (Table 8 form for the readout);
- :mod:`tensorprograms.mup.init`: ``torch.nn.init`` drop-ins with Table 3's
  init variances (and :func:`attention_scale`: TP5 section 4's 1/d attention);
- :class:`MuResidual`: Depth-muP (TP6, THEORY.md section 9);
- :mod:`tensorprograms.parametrization`: the abc(d) tables these come from (TP4
  section 3, TP4b, spectral condition), which also give SP, NTP, spectral.
"""

from . import init
from ._attention import attention_scale, mu_attention, zero_query_
from ._audit import AuditReport, AuditRow, TransferWarning, audit
from ._coord import (
    CoordCheckResult,
    builtin_coord_check,
    coord_check,
    plot_coord_checks,
)
from ._coord_compat import get_coord_data, plot_coord_data
from ._depth import MuResidual, depth_mults
from ._describe import ParamRow, describe
from ._optim import (
    MuAdam,
    MuAdamW,
    MuSGD,
    attach_mu_hooks,
    effective_hparams,
    mu_optimizer,
    mu_param_groups,
    param_factors,
)
from ._readout import MuReadout, MuReadoutConv1d, MuReadoutConv2d, MuSharedReadout
from ._setup import set_base_shapes, unwrap
from ._shapes import (
    BaseShapes,
    InfDim,
    InfShape,
    ParamInfo,
    Role,
    get_shapes,
    load_base_shapes,
    make_base_shapes,
    save_base_shapes,
)
from ._state import get_infshapes, get_state, named_infos
from ._sweep import TransferResult, fail_stale_trials, run_grid, transfer_sweep
from ._tasks import TASKS, ResidualMLP, Task, get_task, stdlib_text, train
from .init import (
    eye_,
    kaiming_normal_,
    kaiming_uniform_,
    normal_,
    ones_,
    trunc_normal_,
    uniform_,
    xavier_normal_,
    xavier_uniform_,
)

__all__ = [
    "AuditReport",
    "AuditRow",
    "TransferWarning",
    "audit",
    "CoordCheckResult",
    "builtin_coord_check",
    "coord_check",
    "plot_coord_checks",
    "get_coord_data",
    "plot_coord_data",
    "TransferResult",
    "fail_stale_trials",
    "run_grid",
    "transfer_sweep",
    "TASKS",
    "Task",
    "get_task",
    "train",
    "ResidualMLP",
    "stdlib_text",
    "set_base_shapes",
    "make_base_shapes",
    "get_shapes",
    "get_infshapes",
    "save_base_shapes",
    "load_base_shapes",
    "MuReadout",
    "MuSharedReadout",
    "MuReadoutConv1d",
    "MuReadoutConv2d",
    "MuSGD",
    "MuAdam",
    "MuAdamW",
    "MuResidual",
    "attention_scale",
    "mu_attention",
    "zero_query_",
    "init",
    "normal_",
    "uniform_",
    "trunc_normal_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "ones_",
    "eye_",
    "depth_mults",
    "mu_param_groups",
    "mu_optimizer",
    "attach_mu_hooks",
    "effective_hparams",
    "param_factors",
    "named_infos",
    "describe",
    "ParamRow",
    "get_state",
    "unwrap",
    "BaseShapes",
    "InfDim",
    "InfShape",
    "ParamInfo",
    "Role",
]
