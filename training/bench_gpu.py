"""Real-size training step benchmark (GPU): LTX-2.0 19B architecture with random bf16 weights, SCD LoRA, one card.

    python -m training.bench_gpu --frames 49 --height 512 --width 768 --rank 32 --steps 4
    torchrun --nproc_per_node 2 -m training.bench_gpu ...     # DDP: one process per GPU, LoRA grads all-reduced
    torchrun --nproc_per_node 2 -m training.bench_gpu --strategy fsdp ...   # FSDP2: transformer blocks sharded

Builds the preset on `meta`, materialises it with `to_empty(device="cuda")` and fills it with random values (no
weights are needed), injects the LoRA through the same `TrainModule` as `training.train`, and times full optimiser
steps (encoder at σ=0 without grad, decoder with gradient checkpointing, AdamW on the LoRA). Prints one table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from editctrl_core.loading.models import build_transformer, load_preset
from training.config import config_from_dict
from training.data import Sample
from training.engine import BaseModels, TrainModule


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights in place: matrices N(0, 0.02), norm scales 1, biases 0."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 0.02, generator=g)
        elif name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.zero_()


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--decode", default="masked", choices=["masked", "all"])
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"],
                    help="with several processes: DDP (replicated) or FSDP2 (training.distributed.wrap_fsdp)")
    args = ap.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl")
    preset = load_preset("ltx-2.0-19b")
    t0 = time.perf_counter()
    transformer = build_transformer(preset, empty=True).to_empty(device="cuda").to(torch.bfloat16)
    randomise(transformer)
    build_s = time.perf_counter() - t0
    f, h, w = (args.frames - 1) // 8 + 1, args.height // 32, args.width // 32
    rows = []
    for decode in [args.decode]:
        cfg = config_from_dict({
            "model": {"preset": "ltx-2.0-19b", "dtype": "bfloat16",
                      "gradient_checkpointing": not args.no_checkpointing},
            "data": {"clips": "unused", "frames": args.frames, "height": args.height, "width": args.width},
            "masks": {"mode": "random", "min_area": 0.08, "max_area": 0.12},
            "train": {"mixed_precision": "bf16"},
            "stages": [{"name": "scd", "steps": args.steps, "lr": 1e-5, "decode_tokens": decode,
                        "lora": {"rank": args.rank, "alpha": args.rank}}],
        })
        module = TrainModule(cfg, BaseModels(preset, transformer.requires_grad_(False), None, preset.split_layer),
                             "cuda")
        module.prepare_stage(0)
        fsdp = world > 1 and args.strategy == "fsdp"
        if fsdp:
            from training.distributed import wrap_fsdp

            blocks = wrap_fsdp(module, "bf16")
            torch.cuda.empty_cache()
            held = sum(p.to_local().numel() for b in blocks for p in b.parameters())
            total = sum(p.numel() for b in blocks for p in b.parameters())
            if rank == 0:
                print(f"FSDP2: this process holds {held:,} of {total:,} block parameters; "
                      f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated after sharding", flush=True)
        opt = torch.optim.AdamW(module.param_groups(), fused=not fsdp)
        step_module = module
        if world > 1 and not fsdp:
            step_module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[torch.cuda.current_device()], find_unused_parameters=True)
        g = torch.Generator().manual_seed(rank)
        sample = Sample("bench", torch.randn(128, f, h, w, generator=g), torch.randn(128, f, h, w, generator=g),
                        torch.randn(256, 3840, generator=g), torch.ones(256, dtype=torch.long), "bench",
                        torch.zeros(128, f, h, w))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(args.steps):
            torch.cuda.synchronize()
            s0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = step_module([(sample, step)])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - s0)
            if rank == 0:
                print(f"{decode} step {step}: {times[-1]:.3f} s loss {float(loss):.4f}", flush=True)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        steady = times[1:] or times
        rows.append((decode, f * h * w, trainable, sum(steady) / len(steady), torch.cuda.max_memory_allocated() / 2**30))
    if world > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return
    mode = "one process" if world == 1 else args.strategy.upper()
    print(f"\n{torch.cuda.get_device_name()} x{world} ({mode}) | torch {torch.__version__} | "
          f"build+randomise {build_s:.1f} s | "
          f"{args.frames} frames {args.height}x{args.width} | LoRA rank {args.rank} | gradient checkpointing "
          f"{not args.no_checkpointing}")
    print("| decoder tokens | video tokens | trainable params | s/step (mean of steps 2..) | peak GiB |")
    print("| --- | --- | --- | --- | --- |")
    for decode, tokens, trainable, sec, peak in rows:
        print(f"| {decode} | {tokens} | {trainable:,} | {sec:.3f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
