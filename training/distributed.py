"""How the train module is spread over processes: DDP (everything replicated) or FSDP2 (transformer blocks sharded).

``train.distributed: ddp`` (default) wraps the module in ``DistributedDataParallel`` (train.py). With
``train.distributed: fsdp`` every transformer block (its frozen base weights and its LoRA) is wrapped with FSDP2's
``fully_shard``: each process keeps 1/world of every block, gathers a block just for its forward and backward, and
reduce-scatters the block's LoRA gradients. The rest (embeddings, output head, EditCtrl adapters, TMA: small next to
the blocks, and partly called through methods rather than ``forward``, which FSDP does not hook) stays replicated;
its trainable parameters are averaged with one all-reduce per optimiser step (:func:`sync_replicated_grads`).

Weight files and checkpoints gather sharded tensors to full ones (:func:`full_added_state`, :func:`full_lora`,
:func:`full_optimizer_state`: collectives, every rank calls them) and rank 0 writes them in exactly the format of a
single-process run, so an FSDP checkpoint resumes under DDP or one process and the other way round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from training.config import Config, ConfigError

if TYPE_CHECKING:
    from editctrl_core.loading.lora import LoraFile

log = logging.getLogger("editctrl.training")


def _dtensor_type() -> type:
    """torch's DTensor class (imported lazily: torch.distributed.tensor is heavy)."""
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: torch.Tensor | None) -> bool:
    """Whether `t` is a DTensor (an FSDP-sharded parameter, its gradient or its optimizer state)."""
    return t is not None and isinstance(t, _dtensor_type())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered from the shards if `t` is a DTensor (collective), else `t` itself."""
    return t.full_tensor() if is_sharded(t) else t


def check_strategy(cfg: Config) -> None:
    """Refuse settings the configured strategy cannot run, naming the field (bitsandbytes cannot step DTensors)."""
    if cfg.train.distributed == "fsdp" and cfg.train.optimizer == "adamw8bit":
        raise ConfigError("train.optimizer: adamw8bit does not support FSDP-sharded parameters; use adamw with "
                          "train.distributed: fsdp (or train.distributed: ddp)")


def resolve_strategy(cfg: Config, world: int) -> str:
    """The strategy this run uses: ``cfg.train.distributed``, or ``ddp`` (plain) for FSDP with a single process."""
    check_strategy(cfg)
    strategy = cfg.train.distributed
    if strategy != "fsdp":
        return strategy
    if world == 1:
        log.warning("train.distributed: fsdp with one process has nothing to shard; training unsharded (launch "
                    "several processes with accelerate launch / torchrun to shard the transformer blocks)")
        return "ddp"
    return strategy


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a TrainModule (what FSDP shards)."""
    return list(module.transformer.transformer_blocks)


def wrap_fsdp(module: nn.Module, mixed_precision: str = "no") -> list[nn.Module]:
    """Shard every transformer block of `module` with FSDP2 (idempotent); returns the sharded blocks.

    Call it after every parameter of the blocks exists (LoRA injected) and before building the optimizer: FSDP
    replaces the block parameters by DTensor shards. With ``mixed_precision: bf16`` the gathered weights are bf16 and
    gradients are reduced in float32; block inputs are left as they are because autocast already picks the compute
    dtype, exactly as in the unsharded run.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    scd = getattr(module, "scd", None)
    if scd is not None and scd.options.prefix == "one_way" and scd.stack.prompt_depends_on_sigma:
        raise ConfigError("train.distributed: fsdp cannot train this model's one-way SCD decoder: its prompt AdaLN "
                          "depends on σ (LTX-2.3), so every decoder block runs twice per step (prefix at σ=0, then "
                          "the noisy tokens), which FSDP-sharded blocks do not support; use train.distributed: ddp")
    blocks = transformer_blocks(module)
    if all(isinstance(b, FSDPModule) for b in blocks):
        for i, block in enumerate(blocks):
            late = [n for n, p in block.named_parameters() if not is_sharded(p)]
            if late:
                raise ConfigError(f"train.distributed: fsdp shards the transformer blocks when the first stage starts, "
                                  f"but block {i} gained unsharded parameters later ({late[0]}, ...): configure the "
                                  "LoRA (lora: {rank, alpha}) on the first stage, or use train.distributed: ddp")
        return blocks
    device = next(module.transformer.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                      cast_forward_inputs=False)
    else:
        policy = MixedPrecisionPolicy()
    for block in blocks:
        # Each block is its own FSDP root (the transformer's own forward never runs): reshard explicitly after
        # forward, or a root block would keep its gathered weights until backward.
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    held = sum(p.to_local().numel() for b in blocks for p in b.parameters())
    total = sum(p.numel() for b in blocks for p in b.parameters())
    log.info("FSDP2: %d transformer blocks sharded over %d processes; this process holds %d of their %d parameters",
             len(blocks), dist.get_world_size(), held, total)
    return blocks


@contextlib.contextmanager
def gradient_sync(model: nn.Module, fsdp_blocks: list[nn.Module], enabled: bool) -> Iterator[None]:
    """Context of one micro-batch: gradient communication on (`enabled`, the last micro-batch) or deferred.

    DDP: ``no_sync()`` when deferred. FSDP: the blocks keep accumulating unsharded gradients until a synced backward
    reduce-scatters them.
    """
    if fsdp_blocks:
        for block in fsdp_blocks:
            block.set_requires_gradient_sync(enabled)
        yield
    elif not enabled and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def sync_replicated_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of the replicated (non-DTensor) trainable parameters over all processes (one bucket).

    A parameter without a gradient on this process joins with zeros, so every rank reduces the same buffer.
    """
    replicated = [p for p in params if not is_sharded(p)]
    if not replicated or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for p in replicated:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in replicated]
    world = dist.get_world_size()
    for dtype in sorted({g.dtype for g in grads}, key=str):
        group = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded (DTensor) and replicated gradients alike: one global 2-norm, one scale.

    Replicated gradients must already be averaged (identical on every rank); the squared norms of the local shards
    are summed over ranks. Without sharded gradients this is torch.nn.utils.clip_grad_norm_. ``max_norm`` 0 only
    measures the norm (no clipping). The norm is the same on every rank.
    """
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    if not sharded:
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not grads:
            return torch.zeros(())
        return torch.nn.utils.get_total_norm(grads)
    plain = [g for g in grads if not is_sharded(g)]
    device = sharded[0].to_local().device
    local = torch.zeros((), device=device, dtype=torch.float32)
    for g in sharded:
        local += g.to_local().float().pow(2).sum()
    dist.all_reduce(local, op=dist.ReduceOp.SUM)
    for g in plain:
        local += g.float().pow(2).sum().to(device)
    total = local.sqrt()
    if max_norm <= 0:
        return total
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in sharded:
        g.to_local().mul_(coef.to(g.dtype))
    for g in plain:
        g.mul_(coef.to(g.device, g.dtype))
    return total


def full_added_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`TrainModule.added_state()` with sharded parameters gathered: collective, every rank calls it."""
    if not any(is_sharded(p) for p in module.parameters()):
        return module.added_state()
    # the same selection as TrainModule.added_state: LoRA and everything outside the base transformer
    return {name: full_tensor(p.detach()).cpu().clone() for name, p in module.named_parameters()
            if "lora_" in name or not name.startswith("transformer.")}


def full_lora(transformer: nn.Module) -> LoraFile:
    """`lora_from_peft(transformer)` with sharded LoRA factors gathered (collective when sharded)."""
    from editctrl_core.loading.lora import lora_from_peft

    lora = lora_from_peft(transformer)
    layers = {name: dataclasses.replace(w, A=full_tensor(w.A), B=full_tensor(w.B)) for name, w in lora.layers.items()}
    return dataclasses.replace(lora, layers=layers)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with sharded state (AdamW moments of FSDP parameters) gathered: collective."""
    state = optimizer.state_dict()
    return {**state, "state": {key: {name: full_tensor(value) for name, value in entry.items()}
                               for key, entry in state["state"].items()}}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict` of a full state dict, cutting the state of sharded parameters to their shards."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state["param_groups"] for i in group["params"]]
    local = dict(state)
    if len(ids) == len(params):
        local["state"] = {}
        for pid, p in zip(ids, params):
            entry = state["state"].get(pid)
            if entry is not None and is_sharded(p):
                entry = {name: distribute_tensor(value.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                         if torch.is_tensor(value) and tuple(value.shape) == tuple(p.shape) else value
                         for name, value in entry.items()}
            if entry is not None:
                local["state"][pid] = entry
    optimizer.load_state_dict(local)


class StateDictView:
    """A ready state dict behind a ``state_dict()`` method (what checkpoint.save_state reads from an optimizer)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        """The wrapped state dict."""
        return self.state


def sharded_numel(module: nn.Module) -> tuple[int, int]:
    """(frozen, trainable) parameter counts inside the transformer blocks: what FSDP divides over processes."""
    frozen = trainable = 0
    for block in transformer_blocks(module):
        for p in block.parameters():
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
    return frozen, trainable
