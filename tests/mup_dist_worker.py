"""Worker for the 2-process DDP / FSDP tests (gloo on CPU), run by mp.spawn."""

import os
import traceback

import torch
import torch.distributed as dist
from mup_models import MLP

import tensorprograms.mup as tpm

STEPS = 3


def build():
    torch.manual_seed(0)
    model = MLP(64, tpm.MuReadout)
    return tpm.set_base_shapes(model, MLP(16, tpm.MuReadout))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def train(model, opt, x, y):
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _ddp(rank, out):
    model = build()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = tpm.MuAdam(ddp, lr=0.01)
    from_tensors = tpm.effective_hparams(tpm.MuAdam(ddp.parameters(), lr=0.01))
    x, y = data()
    half = slice(4 * rank, 4 * rank + 4)
    train(ddp, opt, x[half], y[half])
    if rank == 0:
        out["ddp_params"] = {k: v.clone() for k, v in model.state_dict().items()}
        out["ddp_hparams"] = tpm.effective_hparams(opt)
        out["ddp_hparams_tensors"] = from_tensors
        out["ddp_output"] = ddp(x).detach()


def _fsdp(rank, out):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = build()
    mesh = init_device_mesh("cpu", (2,))
    for layer in (model.fc1, model.fc2, model.fc3, model.out):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = tpm.MuAdam(model, lr=0.01)
    x, y = data()
    half = slice(4 * rank, 4 * rank + 4)
    train(model, opt, x[half], y[half])
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    output = model(x).detach()
    if rank == 0:
        out["fsdp_params"] = full
        out["fsdp_hparams"] = tpm.effective_hparams(opt, model)
        out["fsdp_output"] = output


def _fsdp1(rank, out):
    """FSDP1 flattens parameters into FlatParameters (use_orig_params keeps views)."""
    import warnings

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FSDP1's deprecation notice
        wrapped = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))
    opt = tpm.MuAdam(wrapped, lr=0.01)
    hp = tpm.effective_hparams(opt)
    x, y = data()
    half = slice(4 * rank, 4 * rank + 4)
    train(wrapped, opt, x[half], y[half])
    with FSDP.summon_full_params(wrapped):
        full = {n: p.detach().clone() for n, p in model.named_parameters()}
        output = wrapped(x).detach()
    if rank == 0:
        out["fsdp1_params"] = full
        out["fsdp1_hparams"] = hp
        out["fsdp1_output"] = output


def run(rank, world, tmpdir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=world
    )
    out = {}
    try:
        _ddp(rank, out)
        for key, fn in (("fsdp", _fsdp), ("fsdp1", _fsdp1)):
            try:
                fn(rank, out)
            except Exception:  # reported to the test, which skips with the reason
                out[f"{key}_error"] = traceback.format_exc(limit=3)
        if rank == 0:
            torch.save(out, f"{tmpdir}/result.pt")
    finally:
        dist.destroy_process_group()
