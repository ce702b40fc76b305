"""Training CLI: ``python -m training.train --config training/configs/scd_finetune.yaml [--dry-run] [--resume]``.

Runs the configured stages in order (``scd`` → ``editctrl_local`` → ``editctrl_global`` → ``tma``), each training only
its own parameters, with atomic checkpoints every ``output.checkpoint_every`` steps and exact resume. Multi-process
through ``accelerate launch`` (DDP, or FSDP2 with ``train.distributed: fsdp``: see training/distributed.py; gloo on
CPU). Progress: tqdm (loss, it/s), TensorBoard under ``<out>/tensorboard``, ``<out>/losses.jsonl`` and debug PNGs under
``<out>/debug``.

Exit status: 0 done; 2 a config, usage or data mistake (one ``config error: …`` / ``data error: …`` line on stderr);
3 training stopped because a step's loss or gradient norm was not finite (nothing of that step is applied or written,
so the last checkpoint stays the last good one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from editctrl_core.checks import NonFiniteError, check_finite_tensor, check_finite_value
from editctrl_core.loading.scd_metadata import options_metadata
from editctrl_core.loading.weights_file import write_text
from training import checkpoint as ckpt
from training.cli import ArgumentParser, UsageError, report_config_error
from training.config import Config, ConfigError, config_hash, load_config, to_dict
from training.data import (
    CachedDataset,
    DataError,
    Encoders,
    ShapeRule,
    discover_clips,
    precompute,
    write_synthetic_clips,
)
from training.distributed import (
    StateDictView,
    check_strategy,
    clip_grad_norm,
    full_added_state,
    full_lora,
    full_optimizer_state,
    gradient_sync,
    load_optimizer_state,
    resolve_strategy,
    sharded_numel,
    sync_replicated_grads,
    wrap_fsdp,
)
from training.engine import BaseModels, TrainModule, config_field, load_base

log = logging.getLogger("editctrl.training")
DIVERGED_EXIT = 3


class TrainingDivergedError(RuntimeError):
    """A step's loss or gradient norm was NaN/Inf: training stopped before that step changed any weight."""


def check_step(step: int, stage: int, cfg: Config, stage_step: int, loss: float, grad_norm: float,
               out_dir: Path, previous_loss: float | None = None) -> None:
    """Raise TrainingDivergedError naming the step and the likely cause unless loss and gradient norm are finite.

    `previous_loss` is the last loss this process trained on (None at its first step: then the inputs, the starting
    weights or the resumed checkpoint are at fault, not the learning rate).
    """
    st = cfg.stages[stage]
    try:
        check_finite_value("loss", loss)
        check_finite_value("gradient norm", grad_norm)
        return
    except NonFiniteError:
        loss_ok = math.isfinite(loss)
    what = f"the loss is {loss:.6g} but the gradient norm is {grad_norm}" if loss_ok else f"the loss is {loss}"
    where = f"step {step} (stage {stage} {st.name}, its step {stage_step + 1} of {st.steps})"
    precision = (", or train in float32 (model.dtype: float32, train.mixed_precision: no), where bf16 overflows"
                 if cfg.model.dtype == "bfloat16" or cfg.train.mixed_precision == "bf16" else "")
    if previous_loss is None:
        cause = ("the first step this run took already overflows, so the inputs or starting weights are bad, not the "
                 "learning rate: check the cached latents and text embeddings (delete data.cache_dir to re-encode), "
                 "model.weights and the model.init_* files, or the checkpoint it resumed from" + precision)
    else:
        clip = cfg.train.max_grad_norm
        cause = (f"the run diverged after a loss of {previous_loss:.6g}: lower stages[{stage}].lr (now {st.lr:g}), "
                 f"add train.warmup_steps (now {cfg.train.warmup_steps})"
                 + (", set train.max_grad_norm (now 0: no clipping)" if clip == 0 else "") + precision
                 + "; or a sample of this step is broken (huge values in its cached latents)")
    last_checkpoint = ckpt.latest_state(out_dir)
    resume = (f"the last good checkpoint is {last_checkpoint}; resume from it with --resume {last_checkpoint} after "
              "the change" if last_checkpoint is not None else "no checkpoint was written before this step")
    raise TrainingDivergedError(f"training stopped at {where}: {what}. Likely cause: {cause}. Nothing of this step "
                                f"was applied or saved; {resume}")


def check_finite_state(state: dict[str, torch.Tensor], step: int) -> None:
    """Refuse to write a checkpoint whose trainable tensors hold NaN/Inf (TrainingDivergedError naming the tensor)."""
    for name, value in state.items():
        try:
            check_finite_tensor(name, value, "the weights diverged; lower the learning rate")
        except NonFiniteError as exc:
            raise TrainingDivergedError(f"not writing the step-{step} checkpoint: {exc}") from None


def _module_digest(module: torch.nn.Module) -> str:
    """Short hash of a module's weights (enters the latent cache key, so a different VAE re-encodes)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def prepare_data(cfg: Config, base: BaseModels, out_dir: Path) -> tuple[list[Path], Encoders]:
    """Write synthetic clips if asked, discover clips + captions, and precompute the latent/text cache."""
    from training.data import training_text_encoder

    d = cfg.data
    folder = Path(d.clips) if d.clips else out_dir / "clips"
    if d.synthetic is None:
        if not folder.is_dir():
            raise ConfigError(f"data.clips: {folder} is not a folder; point it at a folder of .mp4 clips with "
                              "captions, or set data.synthetic to generate some")
        if not any(p.suffix.lower() == ".mp4" for p in folder.iterdir()):
            raise ConfigError(f"data.clips: no .mp4 clips in {folder}")
    if d.synthetic is not None:
        s = d.synthetic
        write_synthetic_clips(folder, s.count, s.frames, s.height, s.width, s.seed, s.caption, s.with_targets,
                              mask_dir=cfg.masks.semantic_mask_dir)
    specs = discover_clips(folder, d.captions)
    rule = ShapeRule(d.frames, d.height, d.width, d.frame_stride)
    if base.vae is None:
        raise DataError("model.weights holds no VAE; give model.vae_weights to encode clips")
    cache = Path(d.cache_dir) if d.cache_dir else out_dir / "cache"
    with config_field("data.text_encoder"):  # the Gemma weights load on first use, inside precompute
        text, text_id = training_text_encoder(cfg, base.preset, base.transformer, cache)
        encoders = Encoders(base.vae, text, f"{base.preset.model_id}|vae:{_module_digest(base.vae)}|text:{text_id}")
        log.info("shape rule: %s", rule.describe())
        files, stats = precompute(specs, rule, encoders, cache)
    log.info("data: %d clips (%d encoded, %d cached) in %s", len(files), stats["encoded"], stats["skipped"], cache)
    return files, encoders


def make_optimizer(groups: list[dict], cfg: Config) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW when configured (and installed)."""
    t = cfg.train
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ConfigError("train.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes) — "
                              "or use adamw") from exc
        return bnb.optim.AdamW8bit(groups, betas=tuple(t.betas), weight_decay=t.weight_decay)
    return torch.optim.AdamW(groups, betas=tuple(t.betas), weight_decay=t.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then constant / linear / cosine decay over the stage's steps."""
    t = cfg.train
    warm, kind, total = t.warmup_steps, t.lr_scheduler, max(steps, 1)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def estimate_memory(cfg: Config, module: TrainModule, shards: int = 1) -> dict[str, float]:
    """Rough peak memory (GiB) per process of one step: weights, trainable state, activations of one sample.

    `shards` > 1 (FSDP): the transformer blocks' weights and trainable state are split over that many processes.
    """
    base_bytes = 2 if cfg.model.dtype == "bfloat16" else 4
    n_base = sum(p.numel() for n, p in module.named_parameters() if not p.requires_grad)
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if shards > 1:
        block_base, block_train = sharded_numel(module)
        n_base -= block_base - block_base // shards
        n_train -= block_train - block_train // shards
    opt_bytes = 2 if cfg.train.optimizer == "adamw8bit" else 8
    d = cfg.data
    frames, height, width = d.frames, d.height or 512, d.width or 768
    tokens = ((frames - 1) // 8 + 1) * (height // 32) * (width // 32)
    dec_tokens = 2 * tokens * (cfg.masks.max_area if cfg.stages[0].decode_tokens == "masked" else 1.0)
    inner = module.inner_dim
    act_bytes = 2 if cfg.train.mixed_precision == "bf16" or cfg.model.dtype == "bfloat16" else 4
    decoder_blocks = module.num_layers - module.split_layer
    per_block = dec_tokens * inner * act_bytes * 24
    if cfg.model.gradient_checkpointing:
        acts = dec_tokens * inner * act_bytes * decoder_blocks + per_block
    else:
        acts = per_block * decoder_blocks
    acts += tokens * inner * act_bytes * 24
    gib = 1024 ** 3
    return {"weights": n_base * base_bytes / gib, "trainable_state": n_train * (8 + opt_bytes) / gib,
            "activations": acts / gib, "total": (n_base * base_bytes + n_train * (8 + opt_bytes) + acts) / gib,
            "tokens": tokens}


def dry_run(cfg: Config) -> str:
    """The plan without training: stages, trainable parameter counts, memory estimate (model built on meta)."""
    from editctrl_core.loading.models import build_transformer, load_preset

    check_strategy(cfg)
    preset = load_preset(cfg.model.preset)
    transformer = build_transformer(preset, empty=True)
    split = cfg.model.split_layer or preset.split_layer
    base = BaseModels(preset, transformer.requires_grad_(False), None, split)
    module = TrainModule(cfg, base, "cpu")
    lines = [f"config hash {config_hash(cfg)}; model {preset.name} ({preset.model_id}), "
             f"{len(transformer.transformer_blocks)} blocks, SCD split at {split}; "
             f"base parameters {sum(p.numel() for p in transformer.parameters()):,}"]
    rule = ShapeRule(cfg.data.frames, cfg.data.height, cfg.data.width, cfg.data.frame_stride)
    lines.append(f"data: {cfg.data.clips or 'synthetic'}; shape rule: {rule.describe()}")
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    lines.append(f"batch {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} x processes {world} = global "
                 f"batch {cfg.train.batch_size * cfg.train.grad_accum * world}; optimizer {cfg.train.optimizer}; "
                 f"precision {cfg.model.dtype}/{cfg.train.mixed_precision}; gradient checkpointing "
                 f"{cfg.model.gradient_checkpointing}")
    strategy = cfg.train.distributed
    if strategy == "fsdp":
        lines.append(f"distributed: fsdp (FSDP2), transformer blocks sharded over {world} process(es)"
                     + ("; with one process it trains unsharded" if world == 1 else "")
                     + "; the rest replicated")
    else:
        lines.append(f"distributed: ddp, model replicated on each of {world} process(es)")
    shards = world if strategy == "fsdp" else 1
    qwen_dim = 3584 if preset.family != "tiny" else 32
    for i, st in enumerate(cfg.stages):
        module.prepare_stage(i, qwen_dim=qwen_dim)
        groups = module.param_groups()
        count = sum(p.numel() for g in groups for p in g["params"])
        desc = ", ".join(f"{g['name']} {sum(p.numel() for p in g['params']):,} @ lr {g['lr']:g}" for g in groups)
        lines.append(f"stage {i} {st.name}: {st.steps} steps, trainable {count:,} ({desc}); decoder tokens "
                     f"{st.decode_tokens}")
        mem = estimate_memory(cfg, module, shards)
        per = f" per process ({shards} shards)" if shards > 1 else ""
        lines.append(f"  memory estimate{per} (rough, one sample of {int(mem['tokens'])} tokens): weights "
                     f"{mem['weights']:.2f} GiB + trainable/optimizer {mem['trainable_state']:.3f} GiB + activations "
                     f"{mem['activations']:.2f} GiB = {mem['total']:.2f} GiB")
    return "\n".join(lines)


@dataclass
class RunResult:
    """What a run produced."""

    out_dir: Path
    steps: int
    losses: list[float]
    files: dict[str, Path]


class Trainer:
    """One training run: data, model, stages, checkpoints, logging."""

    def __init__(self, cfg: Config, resume: str | None = "auto", quiet: bool = False):
        from accelerate import Accelerator

        self.cfg = cfg
        self.quiet = quiet
        if cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.sharded = resolve_strategy(cfg, self.world) == "fsdp"
        self.fsdp_blocks: list[torch.nn.Module] = []
        self.out = Path(cfg.output.dir)
        self.resume_from = self._find_resume(resume)
        self.out.mkdir(parents=True, exist_ok=True)
        self.hash = config_hash(cfg)
        self.base = load_base(cfg, self.device)
        with self.accelerator.main_process_first():
            files, encoders = prepare_data(cfg, self.base, self.out)
        self.dataset = CachedDataset(files, cfg.data.qwen_feature_dir)
        self.module = TrainModule(cfg, self.base, self.device)
        null = encoders.text.encode([""])
        self.module.null_text = (null.embeds[0].cpu(), null.mask[0].cpu())
        self.writer = None
        self.files: dict[str, Path] = {}
        if self.main:
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))

    def _find_resume(self, resume: str | None) -> Path | None:
        """State folder to resume from: 'auto' (latest in the output folder, if any), a path, or None."""
        if resume in (None, "none", "no"):
            return None
        if resume == "auto":
            return ckpt.latest_state(self.out)
        path = Path(resume)
        if path.is_dir() and (path / "state.json").is_file():
            return path
        found = ckpt.latest_state(path) if path.is_dir() else None
        if found is None:
            raise ConfigError(f"--resume {resume}: no complete checkpoint there (give a state_step_NNNNN folder or "
                              "the run's output folder, or 'auto' / 'none')")
        return found

    def _autocast(self) -> object:
        """bf16 autocast when train.mixed_precision is bf16 (trainable parameters stay float32)."""
        enabled = self.cfg.train.mixed_precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _sample_indices(self, stage: int, stage_step: int, micro: int) -> list[int]:
        """Global sample indices of this process's share of one micro-batch."""
        t = self.cfg.train
        first = ((stage_step * t.grad_accum + micro) * self.world + self.rank) * t.batch_size
        return [first + j for j in range(t.batch_size)]

    def _item(self, stage: int, k: int) -> int:
        """Dataset position of global sample index k (a fresh seeded permutation per epoch)."""
        n = len(self.dataset)
        epoch, pos = divmod(k, n)
        g = torch.Generator().manual_seed(self.cfg.train.seed * 31 + stage * 7 + epoch * 1009)
        return int(torch.randperm(n, generator=g)[pos])

    def _log_losses(self, records: list[dict], truncate_after: int | None) -> None:
        """Append step records to losses.jsonl (dropping records past a resumed step first)."""
        path = self.out / "losses.jsonl"
        if truncate_after is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and
                    json.loads(line)["step"] <= truncate_after]
            write_text(path, "".join(line + "\n" for line in kept))
        with path.open("a") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")

    def _tensorboard(self) -> object | None:
        """A SummaryWriter under <out>/tensorboard (None, with a warning, if tensorboard is not installed)."""
        if not self.cfg.output.tensorboard or not self.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install tensorboard); logging to losses.jsonl only")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _wandb(self) -> object | None:
        """A W&B run when output.wandb is set and wandb is installed (None, with a warning, otherwise)."""
        if not self.cfg.output.wandb or not self.main:
            return None
        try:
            import wandb
        except ImportError:
            log.warning("output.wandb is set but wandb is not installed (pip install wandb); skipping W&B logging")
            return None
        return wandb.init(project="editctrl", dir=str(self.out), config=to_dict(self.cfg), name=self.out.name)

    def save_weights(self, step: int | None) -> dict[str, Path]:
        """LoRA (native ComfyUI keys) and adapter files, step-named or final (`step=None`); the main process writes.

        Under FSDP every process calls it (the sharded LoRA is gathered first); the others return {}.
        """
        from editctrl_core.edit.adapters import save_adapter
        from editctrl_core.loading.lora import save_lora
        from editctrl_core.perception.tma import save_tma

        m = self.module
        lora = full_lora(m.transformer) if m.has_lora else None
        if not self.main:
            return {}
        model_id, split = m.preset.model_id, m.split_layer
        files = {}

        def name(prefix: str) -> Path:
            return self.out / (ckpt.step_name(prefix, step) if step is not None else f"{prefix}.safetensors")

        stage = self.cfg.stages[m.stage_index].name
        if m.has_lora:
            lo = m.lora_config
            meta = {"base_model": model_id, "preset": m.preset.name, "lora_rank": lo.rank, "lora_alpha": lo.alpha,
                    "split_layer": split, "stage": stage, "config_hash": self.hash,
                    "step": -1 if step is None else step, "lora_targets": lo.targets, "lora_attentions": lo.attentions,
                    "lora_encoder": lo.encoder, **options_metadata(m.scd.options)}
            files["lora"] = save_lora(lora, name("lora_weights"), meta)
        if m.local is not None:
            save_adapter(m.local, name("local_context"), model_id, split, options_metadata(m.scd.options))
            files["local"] = name("local_context")
        if m.global_context is not None:
            save_adapter(m.global_context, name("global_context"), model_id, split, options_metadata(m.scd.options))
            files["global"] = name("global_context")
        if m.tma is not None:
            save_tma(m.tma, name("tma"), base_model=model_id)
            files["tma"] = name("tma")
        return files

    def checkpoint(self, step: int, stage: int, stage_step: int, optimizer, scheduler) -> None:
        """Step-named weights + state folder (written by the main process; gathered by all under FSDP), then prune."""
        if not (self.main or self.sharded):
            return
        trainable = full_added_state(self.module)
        check_finite_state(trainable, step)  # every rank here holds the same gathered tensors: all stop together
        self.save_weights(step)
        opt_state = full_optimizer_state(optimizer)
        if not self.main:
            return
        ckpt.save_state(self.out, step, trainable=trainable, optimizer=StateDictView(opt_state), scheduler=scheduler,
                        extra={"stage": stage, "stage_step": stage_step, "config_hash": self.hash,
                               "world_size": self.world, "distributed": "fsdp" if self.sharded else "ddp"},
                        extra_tensors={"mask_sampler": self.module.masks.state_dict()["generator"]})
        ckpt.prune(self.out, self.cfg.output.keep_checkpoints)

    def run(self, max_steps: int | None = None) -> RunResult:
        """Train every stage (or stop after `max_steps` global steps); returns the losses logged by this call."""
        cfg, acc, m = self.cfg, self.accelerator, self.module
        qwen_dim = None
        if self.dataset[0].qwen is not None:
            qwen_dim = int(self.dataset[0].qwen.shape[-1])
        total = sum(st.steps for st in cfg.stages)
        step, start_stage, start_stage_step, restored = 0, 0, 0, None
        if self.resume_from is not None:
            restored = ckpt.load_state(self.resume_from)
            state = restored["state"]
            if state.get("config_hash") != self.hash:
                log.warning("resuming from %s written with config hash %s (now %s)", self.resume_from,
                            state.get("config_hash"), self.hash)
            step, start_stage, start_stage_step = state["step"], state["stage"], state["stage_step"]
            if start_stage_step >= cfg.stages[start_stage].steps:
                start_stage, start_stage_step = start_stage + 1, 0
            log.info("resuming at step %d (stage %d, step %d of it) from %s", step, start_stage, start_stage_step,
                     self.resume_from)
        if self.main:
            self._log_losses([], truncate_after=step)
        self.writer = self._tensorboard()
        wandb_run = self._wandb()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, disable=not self.main or self.quiet, desc="train", unit="step",
                   dynamic_ncols=True)
        losses: list[float] = []
        stop = False
        try:
            for si in range(start_stage, len(cfg.stages)):
                st = cfg.stages[si]
                m.prepare_stage(si, qwen_dim)
                if restored is not None and si == start_stage:
                    m.load_added_state(restored["trainable"])
                if self.sharded:
                    self.fsdp_blocks = wrap_fsdp(m, cfg.train.mixed_precision)
                groups = m.param_groups()
                params = [p for g in groups for p in g["params"]]
                optimizer = make_optimizer(groups, cfg)
                scheduler = make_scheduler(optimizer, cfg, st.steps)
                first = 0
                if restored is not None and si == start_stage and start_stage_step > 0:
                    load_optimizer_state(optimizer, restored["optimizer"])
                    scheduler.load_state_dict(restored["scheduler"])
                    ckpt.set_rng_state(restored["rng"], restored["state"]["rng"])
                    m.masks.load_state_dict({"generator": restored["rng"]["mask_sampler"]})
                    first = start_stage_step
                restored = None
                model = m
                if self.world > 1 and not self.sharded:
                    model = torch.nn.parallel.DistributedDataParallel(m, find_unused_parameters=False)
                bar.set_description(f"{st.name}")
                for stage_step in range(first, st.steps):
                    if max_steps is not None and step >= max_steps:
                        stop = True
                        break
                    t0 = time.perf_counter()
                    debug_every = cfg.output.debug_image_every
                    want_debug = self.main and debug_every > 0 and (step + 1) % debug_every == 0 and self.base.vae
                    total_loss = torch.zeros((), device=self.device)
                    debug = {}
                    for micro in range(cfg.train.grad_accum):
                        samples = [(self.dataset[self._item(si, k)], k)
                                   for k in self._sample_indices(si, stage_step, micro)]
                        sync = micro == cfg.train.grad_accum - 1 or self.world == 1
                        with gradient_sync(model, self.fsdp_blocks, sync), self._autocast():
                            loss, dbg = model(samples, want_debug=bool(want_debug) and micro == 0)
                            acc.backward(loss / cfg.train.grad_accum)
                        total_loss += loss.detach() / cfg.train.grad_accum
                        debug = debug or dbg
                    if self.sharded:
                        sync_replicated_grads(params)
                    mean_loss = float(acc.reduce(total_loss, reduction="mean")) if self.world > 1 else float(total_loss)
                    # the same on every rank (reduced loss, norm of synced gradients), so all ranks stop together;
                    # the norm is measured before clipping
                    grad_norm = float(clip_grad_norm(params, cfg.train.max_grad_norm))
                    check_step(step + 1, si, cfg, stage_step, mean_loss, grad_norm, self.out,
                               losses[-1] if losses else None)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    losses.append(mean_loss)
                    lr = optimizer.param_groups[-1]["lr"]
                    if self.main:
                        self._log_losses([{"step": step, "stage": st.name, "loss": mean_loss, "lr": lr,
                                           "grad_norm": grad_norm, "seconds": time.perf_counter() - t0}], None)
                        if self.writer is not None and step % cfg.output.log_every == 0:
                            self.writer.add_scalar(f"loss/{st.name}", mean_loss, step)
                            self.writer.add_scalar("loss/all", mean_loss, step)
                            self.writer.add_scalar("lr", lr, step)
                            self.writer.add_scalar("grad_norm", grad_norm, step)
                        if wandb_run is not None and step % cfg.output.log_every == 0:
                            wandb_run.log({f"loss/{st.name}": mean_loss, "lr": lr}, step=step)
                        if debug:
                            from training.debug import debug_grid, save_debug_png

                            png = save_debug_png(self.base.vae, debug, self.out / "debug" / f"step_{step:05d}.png")
                            if self.writer is not None:
                                self.writer.add_image("debug", debug_grid(self.base.vae, debug), step,
                                                      dataformats="HWC")
                            log.info("debug image %s", png)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                    if step % cfg.output.checkpoint_every == 0 or stage_step + 1 == st.steps:
                        self.checkpoint(step, si, stage_step + 1, optimizer, scheduler)
                if (self.main or self.sharded) and not stop:
                    check_finite_state(full_added_state(m), step)
                    self.files.update(self.save_weights(None))
                acc.wait_for_everyone()
                if stop:
                    break
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
            if wandb_run is not None:
                wandb_run.finish()
        return RunResult(self.out, step, losses, self.files)


def build_parser() -> ArgumentParser:
    """Command-line options (usage mistakes raise UsageError)."""
    parser = ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see training/configs/)")
    parser.add_argument("--dry-run", action="store_true", help="print stages, trainable counts, memory; no training")
    parser.add_argument("--resume", default="auto",
                        help="'auto' (latest checkpoint in output.dir, default), 'none', or a checkpoint folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set stages[0].steps=10 --set output.dir=runs/x")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many global steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 done, 2 a config/usage/data mistake (one line on stderr), 3 a non-finite loss/gradient."""
    try:
        args = build_parser().parse_args(argv)
        if args.max_steps is not None and args.max_steps < 0:
            raise UsageError(f"--max-steps must be >= 0, got {args.max_steps}")
    except UsageError as exc:
        return report_config_error(exc)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config, args.set)
        if args.dry_run:
            print(dry_run(cfg))
            return 0
        result = Trainer(cfg, resume=args.resume, quiet=args.quiet).run(max_steps=args.max_steps)
    except ConfigError as exc:
        named = str(args.config) in str(exc)
        return report_config_error(exc if named else ConfigError(f"{exc} (config {args.config})"))
    except DataError as exc:
        print(f"data error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return DIVERGED_EXIT
    if result.files:
        for kind, path in result.files.items():
            print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
