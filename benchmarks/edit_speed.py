"""Edit speed on one GPU: full-attention LTX-2 versus the SCD + EditCtrl edit path, denoising and whole edit.

Builds the real-size LTX-2.0 19B transformer, the real LTX-2 video VAE and (optionally) the Gemma-3 12B text encoder
with the LTX-2 text connectors, all with random bf16 weights (speed does not depend on the values), and measures for
121 frames at 768×512 (latent grid 16×16×24 = 6144 tokens, 1024 prompt tokens), 30 Euler steps, batch 1 (no CFG;
CFG doubles the batch of both paths alike):

- ``baseline-diffusers``: all 48 blocks over all 6144 tokens every step, through diffusers' block code (what a user
  of the plain model pays);
- ``baseline-fast``: the same full-attention model through our fast block code (cached text K/V, no audio stream,
  CUDA graph) — the like-for-like baseline;
- ``scd-eager``: ``SCDModel.encode`` once + ``SCDModel.decode`` per step with both adapters attached (the reference
  code that training runs);
- ``fast``: what the sampler runs: the same arithmetic with per-edit caches (text, global-context and the one-way
  prefix's keys/values, so each step runs the noisy tokens only) and a CUDA graph;
- ``fast-bidirectional``: the SCD paper's plain token concat (the prefix attends to the noisy tokens, so it is
  recomputed every step), cached text K/V + CUDA graph — what the one-way prefix saves;
- ``fast-compiled`` (``--compile``): ``fast`` with its blocks through torch.compile (dynamic token counts, compiled
  once per process; the compile time is reported apart).

For each path and mask (5/10/25/50/100 % of the tokens, a compact blob in every frame): per-step time, denoising time
(encoder + per-edit setup + 30 steps), peak VRAM (weights included), the FLOP floor (counted FLOPs at the bf16 matmul
rate measured in the same run), and the whole edit = text encode + VAE encode + denoising + VAE decode (full for the
baselines, the edit box + halo for ours) + pixel composite. Stage times are warm (models resident, shapes seen once).

    python benchmarks/edit_speed.py --out docs            # the GPU measurement (writes benchmarks.json/.md)
    python benchmarks/edit_speed.py --preset tiny --device cpu --steps 2 --frames 17 --height 256 --width 384
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.flops import blob_mask  # noqa: E402
from editctrl_core.adapters import (  # noqa: E402
    GlobalContextConfig,
    GlobalContextEmbedder,
    LocalContextConfig,
    LocalContextModule,
    blank_latents,
)
from editctrl_core.blend import composite  # noqa: E402
from editctrl_core.context import to_tokens  # noqa: E402
from editctrl_core.fast_decode import FastDecoder, FastStack, GraphedStep, fast_encode  # noqa: E402
from editctrl_core.masks import token_mask_to_pixel_mask  # noqa: E402
from editctrl_core.models import build_transformer, build_vae, load_preset  # noqa: E402
from editctrl_core.sampler import flow_sigmas  # noqa: E402
from editctrl_core.scd import SCDModel, SCDOptions  # noqa: E402
from editctrl_core.text import TextConditioning  # noqa: E402
from editctrl_core.vae import decode_latents, encode_frames  # noqa: E402
from editctrl_core.vae_tiles import DEFAULT_HALO_TOKENS, composite_local, edit_box, local_decode  # noqa: E402

MASKS = (0.05, 0.10, 0.25, 0.50, 1.00)
FEATHER_PX = 16.0
GEMMA_12B = {  # Gemma-3 12B text config as LTX-2.0 uses it (editctrl_core/presets/text/ltx-2.0.json)
    "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 256, "query_pre_attn_scalar": 256, "vocab_size": 262208,
    "max_position_embeddings": 131072, "sliding_window": 1024, "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
}
TEXT_TOKENS = 1024


class Clock:
    """Wall-clock timing that waits for the device."""

    def __init__(self, device: torch.device):
        """Remember the device to synchronise."""
        self.device = device

    def sync(self) -> None:
        """Wait for queued GPU work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], repeat: int = 1, warmup: int = 0) -> tuple[float, Any]:
        """Median seconds of `repeat` calls after `warmup` calls, and the last result."""
        out = None
        for _ in range(warmup):
            out = fn()
        self.sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out


def peak_gb(device: torch.device) -> float:
    """Peak allocated device memory since the last reset, GB."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free(device: torch.device) -> None:
    """Drop cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (matrix products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, clock: Clock) -> float:
    """Measured dense matmul FLOP/s (8192³ bf16 on the GPU; 1024³ on the CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds, _ = clock.time(lambda: a @ b, repeat=10, warmup=3)
    return 2 * n ** 3 / seconds


def init_random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter in place: weights ~ N(0, 1/fan_in), norm weights 1, biases 0 (fast, on the device)."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=gen)
            elif "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return module


def materialise(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A meta-built module moved to `device` in `dtype` without a float32 copy, then randomly initialised."""
    module = module.to(dtype=dtype).to_empty(device=device)
    return init_random_(module, seed).eval()


def text_encode(kind: str, preset_name: str, device: torch.device, dtype: torch.dtype, clock: Clock
                ) -> tuple[TextConditioning, dict[str, Any]]:
    """Encode one prompt with the chosen text encoder; returns the conditioning and its timing/memory record."""
    info: dict[str, Any] = {"text_encoder": kind}
    reset_peak(device)
    if kind == "gemma3-12b":
        from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
        from transformers import Gemma3TextConfig, Gemma3TextModel

        t0 = time.perf_counter()
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                gemma = Gemma3TextModel(Gemma3TextConfig(**GEMMA_12B)).eval()
                connectors = LTX2TextConnectors(rope_type="split").eval()
        finally:
            torch.set_default_dtype(previous)
        clock.sync()
        info["build_s"] = time.perf_counter() - t0
        info["params_b"] = (sum(p.numel() for p in gemma.parameters())
                            + sum(p.numel() for p in connectors.parameters())) / 1e9
        ids = torch.randint(3, GEMMA_12B["vocab_size"], (1, TEXT_TOKENS), device=device)
        mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device=device)
        mask[:, -96:] = 1  # left padding, a 96-token prompt (the model still runs all 1024 positions)

        def run() -> torch.Tensor:
            with torch.no_grad():
                hidden = gemma(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                packed = torch.stack(hidden, dim=-1).flatten(2, 3)
                video, _audio, _m = connectors(packed, mask, padding_side="left")
            return video

        info["text_encode_s"], video = clock.time(run, repeat=3, warmup=1)
        info["peak_gb"] = peak_gb(device)
        info["finite"] = bool(torch.isfinite(video).all())
        embeds = video.float() if info["finite"] else torch.randn(video.shape, device=device)
        del gemma, connectors
        free(device)
        return TextConditioning(embeds, None), info
    if kind == "random":
        cfg = load_preset(preset_name).transformer
        projected = cfg.get("use_prompt_embeddings", True)
        width = cfg["caption_channels"] if projected else cfg["cross_attention_dim"]
        g = torch.Generator(device=device).manual_seed(0)
        embeds = torch.randn(1, TEXT_TOKENS, width, device=device, generator=g)
        audio = None if projected else torch.randn(1, TEXT_TOKENS, cfg["audio_cross_attention_dim"], device=device,
                                                   generator=g)
        mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device=device)
        mask[:, -96:] = 1
        info["text_encode_s"] = 0.0
        info["note"] = "random prompt embeddings of the model's widths (no text encoder run)"
        return TextConditioning(embeds, mask, audio_embeds=audio), info
    if kind == "tiny":
        from editctrl_core.text import TinyTextEncoder

        enc = TinyTextEncoder(load_preset(preset_name), device=device)
        info["text_encode_s"], cond = clock.time(lambda: enc.encode(["a red boat on a calm lake"]), repeat=3,
                                                 warmup=1)
        info["peak_gb"] = peak_gb(device)
        return cond, info
    raise ValueError(f"unknown text encoder {kind!r}")


def euler(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` flow-matching Euler steps from x (σ 1 → 0); step(x, σ[B]) → velocity."""
    sigmas = flow_sigmas(steps).tolist()
    sig = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    for i in range(steps):
        sig.fill_(sigmas[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * step(x, sig).float()
    return x


class Bench:
    """Everything resident for the measurement: models, inputs, and the run's records."""

    def __init__(self, args: argparse.Namespace):
        """Parse the setting, build models (text encoder first, then freed), inputs."""
        self.args = args
        self.t_start = time.perf_counter()
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.clock = Clock(self.device)
        self.preset = load_preset(args.preset)
        self.steps = args.steps
        self.frames, self.height, self.width = args.frames, args.height, args.width
        self.grid = ((self.frames - 1) // 8 + 1, self.height // 32, self.width // 32)
        self.log: list[str] = []
        self.env = environment(self.device)
        self.say(f"device: {self.env['card']}; torch {self.env['torch']}")
        self.rate = matmul_rate(self.device, self.dtype, self.clock)
        self.say(f"measured matmul rate: {self.rate / 1e12:.1f} TFLOP/s ({self.dtype})")
        self.text, self.text_info = text_encode(args.text_encoder, args.preset, self.device, self.dtype, self.clock)
        self.say(f"text encode ({args.text_encoder}): {self.text_info}")
        t0 = time.perf_counter()
        self.model = materialise(build_transformer(self.preset, empty=True), self.device, self.dtype)
        self.vae = materialise(build_vae(self.preset, empty=True), self.device, self.dtype, seed=1)
        with torch.no_grad():
            self.vae.latents_mean.zero_()
            self.vae.latents_std.fill_(1.0)
        self.clock.sync()
        self.say(f"built transformer ({sum(p.numel() for p in self.model.parameters()) / 1e9:.2f} B params) and VAE "
                 f"({sum(p.numel() for p in self.vae.parameters()) / 1e9:.2f} B) in {time.perf_counter() - t0:.1f} s")
        self.local, self.global_context = self.adapters()
        self.scd = SCDModel(self.model, SCDOptions(split_layer=self.preset.split_layer))
        self.scd.attach(self.local, self.global_context)
        self.plain = SCDModel(self.model, SCDOptions(split_layer=self.preset.split_layer, causal=False, shift=False,
                                                     concat=False))
        gen = torch.Generator().manual_seed(0)
        self.source = torch.rand(self.frames, self.height, self.width, 3, generator=gen)
        self.channels = self.preset.transformer["in_channels"]
        self.records: list[dict[str, Any]] = []
        self.profile: list[dict[str, Any]] = []

    def say(self, line: str) -> None:
        """Print and keep a log line."""
        print(line, flush=True)
        self.log.append(line)

    def adapters(self) -> tuple[LocalContextModule, GlobalContextEmbedder]:
        """The seed's default adapter sizes for the real model; scaled-down ones for the tiny preset."""
        t = self.preset.transformer
        inner = t["num_attention_heads"] * t["attention_head_dim"]
        dec = t["num_layers"] - self.preset.split_layer
        if self.args.preset == "tiny":
            lc = LocalContextConfig(in_channels=t["in_channels"] + 1, width=16, num_blocks=2, heads=2, head_dim=8,
                                    text_dim=inner, model_dim=inner, target_blocks=tuple(range(0, dec, 2)))
            gc_ = GlobalContextConfig(in_channels=t["in_channels"] + 1, model_dim=inner, max_tokens=16, heads=2,
                                      head_dim=16, target_blocks=tuple(range(dec)))
        else:
            lc, gc_ = LocalContextConfig(), GlobalContextConfig()
        local = materialise(LocalContextModule(lc, device="meta"), self.device, self.dtype, seed=2)
        glob = materialise(GlobalContextEmbedder(gc_, device="meta"), self.device, self.dtype, seed=3)
        return local, glob

    # ---------------------------------------------------------------- shared stages
    def vae_stages(self) -> dict[str, Any]:
        """Full VAE encode and decode times (warm), and the source latents."""
        out: dict[str, Any] = {}
        reset_peak(self.device)
        out["vae_encode_s"], self.latents = self.clock.time(lambda: encode_frames(self.vae, self.source), warmup=1)
        out["vae_encode_peak_gb"] = peak_gb(self.device)
        reset_peak(self.device)
        out["vae_decode_tiled"] = False
        try:
            out["vae_decode_s"], self.full_frames = self.clock.time(lambda: decode_latents(self.vae, self.latents),
                                                                    warmup=1)
        except torch.cuda.OutOfMemoryError:
            free(self.device)
            self.say("full VAE decode ran out of memory: using diffusers' tiled decode for the full decode")
            self.vae.enable_tiling()
            out["vae_decode_tiled"] = True
            reset_peak(self.device)
            out["vae_decode_s"], self.full_frames = self.clock.time(lambda: decode_latents(self.vae, self.latents),
                                                                    warmup=1)
        out["vae_decode_peak_gb"] = peak_gb(self.device)
        self.say(f"VAE: encode {out['vae_encode_s']:.3f} s, full decode {out['vae_decode_s']:.3f} s, "
                 f"latents {tuple(self.latents.shape)}")
        return out

    def masks(self, fraction: float) -> dict[str, Any]:
        """Token mask, indices, pixel mask, background latents (latent-space blanking) for one fraction."""
        token_mask = blob_mask(self.grid, fraction)
        index = token_mask.flatten().nonzero().squeeze(1)
        return {"fraction": fraction, "token_mask": token_mask, "index": index, "n": index.numel(),
                "pixel_mask": token_mask_to_pixel_mask(token_mask, self.frames),
                "background": blank_latents(self.latents, token_mask.to(self.latents.device), 0.0)}

    # ---------------------------------------------------------------- baselines
    def baseline(self, fast: bool) -> dict[str, Any]:
        """Full-attention denoising: every block over every token, every step."""
        free(self.device)
        grid, steps = self.grid, self.steps
        x = to_tokens(self.latents).to(self.device)
        sigma = torch.full((1,), 0.5, device=self.device)
        if fast:
            stack = FastStack(self.scd.stack, self.text)
            rope = stack.rope(grid)

            def step(x_: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return stack.full_step(x_, s, rope)
        else:
            def step(x_: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return self.plain.forward_split(x_, s, grid, self.text)
        flops = count_flops(lambda: step(x, sigma))
        reset_peak(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            run = GraphedStep(step, x, sigma) if fast and self.device.type == "cuda" else step
            self.clock.sync()
            setup_s = time.perf_counter() - t0
            denoise_s, out = self.clock.time(lambda: euler(run, x, steps))
        finite = bool(torch.isfinite(out).all())
        peak = peak_gb(self.device)
        name = "baseline-fast" if fast else "baseline-diffusers"
        self.say(f"{name}: {denoise_s / steps * 1e3:.1f} ms/step, {steps} steps {denoise_s:.2f} s "
                 f"(+ graph capture {setup_s:.2f} s), floor {flops / self.rate * 1e3:.1f} ms/step, peak {peak:.1f} GB, "
                 f"finite={finite}")
        return {"path": name, "mask_fraction": 1.0, "tokens": x.shape[1], "step_flops": flops,
                "ms_per_step": denoise_s / steps * 1e3, "denoise_s": denoise_s + (setup_s if fast else 0.0),
                "graph_capture_s": setup_s if fast else 0.0, "encoder_s": 0.0, "peak_gb": peak,
                "floor_ms": flops / self.rate * 1e3, "finite": finite}

    # ---------------------------------------------------------------- edit paths
    def edit(self, m: dict[str, Any], path: str) -> dict[str, Any]:
        """One edit path at one mask: encoder once, per-edit setup, `steps` decoder steps."""
        free(self.device)
        scd, grid, steps = self.scd, self.grid, self.steps
        bg_tokens = to_tokens(m["background"])
        x = torch.randn(1, m["n"], self.channels, device=self.device)
        sigma = torch.full((1,), 0.5, device=self.device)
        reset_peak(self.device)
        with torch.no_grad():
            encode = (lambda: scd.encode(bg_tokens, grid, self.text)) if path == "scd-eager" else \
                (lambda: fast_encode(scd, bg_tokens, grid, self.text))
            encoder_s, context = self.clock.time(encode, warmup=1)
            t0 = time.perf_counter()
            plan = scd.plan(m["index"], context, grid, self.text, background=m["background"],
                            edit_mask=m["token_mask"])
            if path == "scd-eager":
                def step(x_: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                    return scd.decode(plan, x_, s)
                run = step
            else:
                step = FastDecoder(scd, plan, one_way_prefix=None if path == "fast" else False)
                self.clock.sync()
                caches_s = time.perf_counter() - t0
                run = GraphedStep(step, x, sigma) if self.device.type == "cuda" else step
            self.clock.sync()
            setup_s = time.perf_counter() - t0
            if path == "scd-eager":
                run(x, sigma)  # warm-up step (kernels, allocator)
            loop_s, out = self.clock.time(lambda: euler(run, x, steps))
        peak = peak_gb(self.device)
        finite = bool(torch.isfinite(out).all())
        flops = count_flops(lambda: step(x, sigma))
        encoder_flops = self.encoder_flops["scd-eager" if path == "scd-eager" else "fast"]
        denoise_s = encoder_s + setup_s + loop_s
        rec = {"path": path, "mask_fraction": m["fraction"], "tokens": m["n"], "step_flops": flops,
               "encoder_flops": encoder_flops, "ms_per_step": loop_s / steps * 1e3, "denoise_s": denoise_s,
               "encoder_s": encoder_s, "setup_s": setup_s, "peak_gb": peak, "floor_ms": flops / self.rate * 1e3,
               "plan_and_caches_s": setup_s if path == "scd-eager" else caches_s,
               "denoise_floor_s": (encoder_flops + steps * flops) / self.rate, "finite": finite}
        self.say(f"{path} {m['fraction']:.0%} ({m['n']} tokens): {rec['ms_per_step']:.1f} ms/step "
                 f"(floor {rec['floor_ms']:.1f}), encoder {encoder_s * 1e3:.0f} ms, setup {setup_s * 1e3:.0f} ms, "
                 f"denoise {denoise_s:.2f} s, peak {peak:.1f} GB, finite={finite}")
        return rec

    def local_vae(self, m: dict[str, Any]) -> dict[str, Any]:
        """Local decode (edit box + halo) and composite for one mask; error against the full decode inside the mask."""
        halo = self.args.halo
        reset_peak(self.device)
        decode_s, (frames, crop) = self.clock.time(lambda: local_decode(self.vae, self.latents, m["token_mask"], halo),
                                                   warmup=1)
        peak = peak_gb(self.device)
        composite_s, _ = self.clock.time(lambda: composite_local(self.source, frames, crop, m["pixel_mask"],
                                                                 FEATHER_PX))
        full_composite_s, _ = self.clock.time(lambda: composite(self.full_frames, self.source, m["pixel_mask"],
                                                                FEATHER_PX))
        y0, y1, x0, x1 = crop.pixels()
        box = edit_box(m["token_mask"])
        inner = (slice(None), slice(box.y0 * 32 - y0, box.y1 * 32 - y0), slice(box.x0 * 32 - x0, box.x1 * 32 - x0))
        ref = self.full_frames[:, y0:y1, x0:x1][inner]
        err = (frames[inner] - ref).abs()
        rec = {"halo_tokens": halo, "box": [crop.y0, crop.y1, crop.x0, crop.x1],
               "area_fraction": crop.area / (self.grid[1] * self.grid[2]), "vae_local_decode_s": decode_s,
               "vae_local_decode_peak_gb": peak, "composite_s": composite_s, "full_composite_s": full_composite_s,
               "local_vs_full_max_abs": float(err.max()), "local_vs_full_mean_abs": float(err.mean())}
        self.say(f"local VAE {m['fraction']:.0%}: box {rec['box']} ({rec['area_fraction']:.0%} of the frame) decode "
                 f"{decode_s:.3f} s, composite {composite_s:.3f} s; |local − full| inside the mask max "
                 f"{rec['local_vs_full_max_abs']:.3g} mean {rec['local_vs_full_mean_abs']:.3g} (random weights)")
        return rec

    def profile_step(self, m: dict[str, Any]) -> list[dict[str, Any]]:
        """Kernel-time breakdown of the eager fast step at one mask (top CUDA kernels)."""
        if self.device.type != "cuda":
            return []
        from torch.profiler import ProfilerActivity, profile

        with torch.no_grad():
            context = fast_encode(self.scd, to_tokens(m["background"]), self.grid, self.text)
            plan = self.scd.plan(m["index"], context, self.grid, self.text, background=m["background"],
                                 edit_mask=m["token_mask"])
            x = torch.randn(1, m["n"], self.channels, device=self.device)
            sigma = torch.full((1,), 0.5, device=self.device)
            rows = []
            for one_way in (False, True):
                step = FastDecoder(self.scd, plan, one_way_prefix=one_way)  # True = `fast`, False = bidirectional
                step(x, sigma)
                self.clock.sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        step(x, sigma)
                    self.clock.sync()
                events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
                total = sum(e.self_device_time_total for e in events) / 3
                for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12]:
                    rows.append({"mask_fraction": m["fraction"], "one_way": one_way, "kernel": e.key[:90], "ms_per_step": e.self_device_time_total / 3e3,
                                 "share": e.self_device_time_total / 3 / total, "calls_per_step": e.count / 3})
                self.say(f"profile fast{'' if one_way else '-bidirectional'} {m['fraction']:.0%}: kernel time "
                         f"{total / 1e3:.1f} ms/step (eager, no graph)")
                for r in rows[-12:]:
                    self.say(f"  {r['ms_per_step']:7.2f} ms {r['share']:6.1%} ×{r['calls_per_step']:.0f}  {r['kernel']}")
        free(self.device)
        return rows

    def compiled(self, m: dict[str, Any], path: str) -> dict[str, Any]:
        """`fast` with its blocks through torch.compile (inductor, dynamic token counts) and a CUDA graph; the first
        call's compile time is reported apart (later masks reuse the compiled blocks)."""
        free(self.device)
        if time.perf_counter() - self.t_start > self.args.budget_s:
            raise RuntimeError(f"skipped: past the {self.args.budget_s:.0f} s budget")
        scd, grid, steps = self.scd, self.grid, self.steps
        x = torch.randn(1, m["n"], self.channels, device=self.device)
        sigma = torch.full((1,), 0.5, device=self.device)
        reset_peak(self.device)
        with torch.no_grad():
            encoder_s, context = self.clock.time(lambda: fast_encode(scd, to_tokens(m["background"]), grid, self.text))
            plan = scd.plan(m["index"], context, grid, self.text, background=m["background"],
                            edit_mask=m["token_mask"])
            t0 = time.perf_counter()
            FastDecoder(scd, plan, one_way_prefix=path == "fast", compile=True)(x, sigma)
            self.clock.sync()
            first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            plan = scd.plan(m["index"], context, grid, self.text, background=m["background"],
                            edit_mask=m["token_mask"])
            step = FastDecoder(scd, plan, one_way_prefix=path == "fast", compile=True)
            run = GraphedStep(step, x, sigma) if self.device.type == "cuda" else step
            self.clock.sync()
            setup_s = time.perf_counter() - t0
            compile_s = max(0.0, first_s - setup_s)
            loop_s, out = self.clock.time(lambda: euler(run, x, steps))
        peak = peak_gb(self.device)
        eager_step = FastDecoder(scd, plan, one_way_prefix=path == "fast")
        flops = count_flops(lambda: eager_step(x, sigma))
        denoise_s = encoder_s + setup_s + loop_s
        rec = {"path": f"{path}-compiled", "mask_fraction": m["fraction"], "tokens": m["n"], "step_flops": flops,
               "encoder_flops": self.encoder_flops["fast"], "ms_per_step": loop_s / steps * 1e3,
               "denoise_s": denoise_s, "encoder_s": encoder_s, "setup_s": setup_s, "compile_s": compile_s,
               "peak_gb": peak, "floor_ms": flops / self.rate * 1e3,
               "denoise_floor_s": (self.encoder_flops["fast"] + steps * flops) / self.rate,
               "finite": bool(torch.isfinite(out).all())}
        self.say(f"{path}-compiled {m['fraction']:.0%}: {rec['ms_per_step']:.1f} ms/step (floor "
                 f"{rec['floor_ms']:.1f}), first call {first_s:.1f} s (compile ≈ {compile_s:.1f} s, not in denoise), "
                 f"denoise {denoise_s:.2f} s")
        return rec

    def run(self) -> dict[str, Any]:
        """The whole measurement; returns the JSON document."""
        self.vae_info = self.vae_stages()
        self.encoder_flops = {
            "scd-eager": count_flops(lambda: self.scd.encode(to_tokens(self.latents), self.grid, self.text)),
            "fast": count_flops(lambda: fast_encode(self.scd, to_tokens(self.latents), self.grid, self.text)),
        }
        self.say(f"SCD encoder FLOPs: dense masked {self.encoder_flops['scd-eager'] / 1e12:.2f} T, chunked "
                 f"frame-causal {self.encoder_flops['fast'] / 1e12:.2f} T")
        text_s = self.text_info["text_encode_s"]
        for fast in (False, True):
            b = self.stage(f"baseline fast={fast}", lambda fast=fast: self.baseline(fast=fast))
            if b is not None:
                # the baselines decode everything and return it: no composite counted (in their favour)
                b["whole_edit_s"] = text_s + self.vae_info["vae_encode_s"] + b["denoise_s"] + self.vae_info["vae_decode_s"]
                b["peak_gb"] = max(b["peak_gb"], self.vae_info["vae_encode_peak_gb"], self.vae_info["vae_decode_peak_gb"])
                self.records.append(b)
                self.checkpoint()
        paths = self.args.paths.split(",")
        for fraction in self.args.masks:
            m = self.masks(fraction)
            local = self.stage(f"local VAE {fraction}", lambda m=m: self.local_vae(m))
            for path in paths:
                rec = self.stage(f"{path} {fraction}", lambda m=m, path=path: self.edit(m, path))
                if rec is None or local is None:
                    continue
                rec.update(local)
                rec["whole_edit_s"] = (text_s + self.vae_info["vae_encode_s"] + rec["denoise_s"]
                                       + local["vae_local_decode_s"] + local["composite_s"])
                rec["whole_edit_two_encodes_s"] = rec["whole_edit_s"] + self.vae_info["vae_encode_s"]
                rec["peak_gb"] = max(rec["peak_gb"], self.vae_info["vae_encode_peak_gb"], local["vae_local_decode_peak_gb"])
                self.records.append(rec)
                self.checkpoint()
            if fraction in self.args.profile_masks:
                self.profile += self.stage("profile", lambda m=m: self.profile_step(m)) or []
                self.checkpoint()
        for item in self.args.compile:
            path, fraction = item.split(":")
            m = self.masks(float(fraction))
            local = next((r for r in self.records if r.get("mask_fraction") == m["fraction"] and "box" in r), None)
            comp = self.stage(f"compile {item}", lambda m=m, path=path: self.compiled(m, path))
            if comp is None or local is None:
                continue
            for key in ("halo_tokens", "box", "area_fraction", "vae_local_decode_s", "vae_local_decode_peak_gb",
                        "composite_s", "full_composite_s", "local_vs_full_max_abs", "local_vs_full_mean_abs"):
                comp[key] = local[key]
            comp["whole_edit_s"] = (text_s + self.vae_info["vae_encode_s"] + comp["denoise_s"]
                                    + local["vae_local_decode_s"] + local["composite_s"])
            comp["whole_edit_two_encodes_s"] = comp["whole_edit_s"] + self.vae_info["vae_encode_s"]
            comp["peak_gb"] = max(comp["peak_gb"], self.vae_info["vae_encode_peak_gb"], local["vae_local_decode_peak_gb"])
            self.records.append(comp)
            self.checkpoint()
        return self.document()

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one stage; on failure log it and go on (so one failure does not lose the run)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a benchmark keeps going and reports what failed
            self.say(f"STAGE FAILED {name}: {type(exc).__name__}: {exc}")
            free(self.device)
            return None

    def document(self) -> dict[str, Any]:
        """The JSON document of everything measured so far (speedups against both baselines)."""
        base = {r["path"]: r for r in self.records if r["path"].startswith("baseline")}
        ref, fast_ref = base.get("baseline-diffusers"), base.get("baseline-fast")
        for r in self.records:
            r["card"] = self.env["card"]
            r["floor_ratio"] = r["ms_per_step"] / r["floor_ms"]
            for key, b in (("", ref), ("_vs_fast_baseline", fast_ref)):
                if b is not None:
                    r["denoise_speedup" + key] = b["denoise_s"] / r["denoise_s"]
                    r["whole_edit_speedup" + key] = b["whole_edit_s"] / r["whole_edit_s"]
        return {"generated_by": "benchmarks/edit_speed.py", "environment": self.env,
                "setting": {"preset": self.args.preset, "frames": self.frames, "height": self.height,
                            "width": self.width, "grid": list(self.grid), "tokens": math.prod(self.grid),
                            "text_tokens": int(self.text.embeds.shape[1]), "steps": self.steps, "batch": 1,
                            "dtype": str(self.dtype), "feather_px": FEATHER_PX, "halo_tokens": self.args.halo},
                "matmul_tflops": self.rate / 1e12, "text": self.text_info, "vae": getattr(self, "vae_info", None),
                "encoder_flops": getattr(self, "encoder_flops", None), "records": self.records,
                "profile": getattr(self, "profile", []), "elapsed_s": time.perf_counter() - self.t_start,
                "log": self.log}

    def checkpoint(self) -> None:
        """Write what is measured so far (a later failure or timeout loses nothing)."""
        if self.args.json is not None:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps(self.document(), indent=1) + "\n")


PATH_NOTES = {
    "baseline-diffusers": "all 48 blocks × all tokens, diffusers block code (what the plain model costs)",
    "baseline-fast": "all 48 blocks × all tokens, our fast block code + CUDA graph (like-for-like)",
    "scd-eager": "SCDModel.encode once + SCDModel.decode per step, both adapters (the reference code training runs)",
    "fast": "what the sampler runs: one-way prefix with its K/V cached per edit (steps run the noisy tokens only), "
            "cached text/global K/V, CUDA graph",
    "fast-bidirectional": "the SCD paper's plain token concat (prefix recomputed every step), cached text K/V + "
                          "CUDA graph",
    "fast-compiled": "fast with its blocks through torch.compile (inductor, dynamic token counts: compiled once per "
                     "process, compile time apart) + CUDA graph (the sampler's `compile` option)",
}
TARGETS = {"denoise_10": 10.0, "denoise_100": 2.5, "whole_10": 5.0, "floor_10": 2.0, "peak_gb": 60.0}


def _f(value: float | None, fmt: str = ".2f") -> str:
    """Format a number, or a dash."""
    return "–" if value is None else format(value, fmt)


def _setup(r: dict[str, Any]) -> str:
    """Per-edit setup seconds, split into plan + caches and graph capture where known."""
    total = r.get("setup_s", r.get("graph_capture_s"))
    if total is None:
        return "–"
    caches = r.get("plan_and_caches_s")
    if caches is None or r["path"] == "scd-eager":
        return f"{total:.3f}"
    return f"{total:.3f} ({caches:.3f} / {total - caches:.3f})"


def targets(doc: dict[str, Any], path: str) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for one edit path against the diffusers baseline."""
    recs = {r["mask_fraction"]: r for r in doc["records"] if r["path"] == path}
    out: list[tuple[str, str, bool | None]] = []
    r10, r100 = recs.get(0.1), recs.get(1.0)

    def row(name: str, rec: dict[str, Any] | None, key: str, limit: float, fmt: str, below: bool = False) -> None:
        if rec is None or rec.get(key) is None:
            out.append((name, "not measured", None))
            return
        value = rec[key]
        out.append((name, format(value, fmt), value <= limit if below else value >= limit))

    row("denoising ≥ 10× at 10%", r10, "denoise_speedup", TARGETS["denoise_10"], ".1f")
    row("denoising ≥ 2.5× at 100%", r100, "denoise_speedup", TARGETS["denoise_100"], ".2f")
    row("whole edit ≥ 5× at 10%", r10, "whole_edit_speedup", TARGETS["whole_10"], ".1f")
    row("decoder step ≤ 2× its FLOP floor at 10%", r10, "floor_ratio", TARGETS["floor_10"], ".2f", below=True)
    peak = max((r["peak_gb"] for r in recs.values()), default=None)
    out.append(("peak VRAM ≤ 60 GB (all masks)", _f(peak, ".1f") + " GB" if peak is not None else "not measured",
                None if peak is None else peak <= TARGETS["peak_gb"]))
    return out


def _rec(doc: dict[str, Any], path: str, fraction: float) -> dict[str, Any] | None:
    """The record of one path at one mask, or None."""
    return next((r for r in doc["records"] if r["path"] == path and r["mask_fraction"] == fraction), None)


def findings(doc: dict[str, Any]) -> list[str]:
    """The summary lines: targets per path in one table, then what the measurements and profiles show."""
    paths = [p for p in ("scd-eager", "fast", "fast-bidirectional", "fast-compiled")
             if any(r["path"] == p for r in doc["records"])]
    if not paths:
        return []
    table = {p: targets(doc, p) for p in paths}
    lines = ["| target | " + " | ".join(f"`{p}`" for p in paths) + " |", "|---|" + "---:|" * len(paths)]
    for i, (name, _, _) in enumerate(table[paths[0]]):
        cells = []
        for p in paths:
            _, value, met = table[p][i]
            cells.append(value if met is None else (f"{value} ✓" if met else f"**{value} ✗**"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    base = _rec(doc, "baseline-diffusers", 1.0)
    f10, f100 = _rec(doc, "fast", 0.1), _rec(doc, "fast", 1.0)
    b100, c100 = _rec(doc, "fast-bidirectional", 1.0), _rec(doc, "fast-compiled", 1.0)
    notes = []
    if base and f10:
        vae = doc.get("vae") or {}
        notes.append(
            f"- **10% mask (`fast`, what the sampler runs)**: {f10['ms_per_step']:.1f} ms/step against a "
            f"{f10['floor_ms']:.1f} ms floor ({f10['floor_ratio']:.2f}×); denoising {f10['denoise_s']:.2f} s = encoder "
            f"{f10['encoder_s']:.3f} s + setup {f10['setup_s']:.3f} s + {doc['setting']['steps']} steps, against "
            f"{base['denoise_s']:.2f} s for the baseline. Whole edit {f10['whole_edit_s']:.2f} s = text "
            f"{doc['text']['text_encode_s']:.3f} + VAE encode {vae.get('vae_encode_s', 0):.3f} + denoising "
            f"{f10['denoise_s']:.3f} + local decode {f10['vae_local_decode_s']:.3f} + composite {f10['composite_s']:.3f} "
            f"(CPU, a copy of the {doc['setting']['frames']}-frame source) against {base['whole_edit_s']:.2f} s.")
    if base and f100:
        text = (f"- **100% mask**: `fast` runs the {f100['tokens']} noisy tokens through the 16 decoder blocks against "
                f"the cached prefix keys/values ({f100['step_flops'] / 1e12:.0f} TFLOP/step, {f100['floor_ms']:.0f} ms "
                f"floor, against {base['floor_ms']:.0f} ms for a full step): {f100['denoise_speedup']:.2f}×")
        if b100:
            text += (f"; the paper's bidirectional token concat carries the prefix through every step "
                     f"({b100['step_flops'] / 1e12:.0f} TFLOP/step): {b100['denoise_speedup']:.2f}×")
        if c100:
            once = max(r.get("compile_s", 0.0) for r in doc["records"] if r["path"] == "fast-compiled")
            text += (f"; `fast-compiled` {c100['ms_per_step']:.1f} ms/step, {c100['denoise_speedup']:.2f}× (compile "
                     f"≈ {once:.0f} s once per process, not included)")
        notes.append(text + ".")
    prof = [p for p in doc.get("profile") or [] if p.get("mask_fraction") == 1.0 and p["one_way"]]
    if prof:
        gemm = sum(p["share"] for p in prof if "nvjet" in p["kernel"] or "gemm" in p["kernel"].lower())
        attn = sum(p["share"] for p in prof if "sdpa" in p["kernel"] or "flash" in p["kernel"])
        notes.append(f"- Profile at 100% (`fast`, eager): matrix products {gemm:.0%} and flash attention {attn:.0%} of "
                     "kernel time (top kernels); the rest is elementwise work (AdaLN modulation, RMS norms, the float32 "
                     "rotary embedding, residual adds, copies) — what torch.compile fuses.")
    lines += notes + [""] if notes else []
    return lines


def report(doc: dict[str, Any]) -> str:
    """docs/benchmarks.md from a measurement document."""
    env, st = doc["environment"], doc["setting"]
    vae, text = doc.get("vae") or {}, doc.get("text") or {}
    recs = doc["records"]
    lines = [
        "# Edit speed: full-attention LTX-2 vs the SCD + EditCtrl edit path",
        "",
        f"Measured by `benchmarks/edit_speed.py` in one run on **one {env['card']}** "
        f"({env.get('card_memory_gb', 0) * 1e9 / 2 ** 30:.0f} GiB, driver {env.get('driver', '?')}); torch {env['torch']} "
        f"(CUDA {env.get('cuda')}), diffusers {env['diffusers']}, transformers {env['transformers']}, "
        f"Python {env['python']}. Every number below comes from that card in that run.",
        "",
        f"Setting: preset `{st['preset']}` with **random {st['dtype'].replace('torch.', '')} weights** (speed does not "
        f"depend on the values), {st['frames']} frames at {st['width']}×{st['height']} → latent grid "
        f"{'×'.join(map(str, st['grid']))} = {st['tokens']} tokens, {st['text_tokens']} prompt tokens, {st['steps']} "
        f"Euler steps, batch {st['batch']} (no CFG; CFG doubles the batch of every path alike). Measured bf16 matmul "
        f"rate (8192³, same run): **{doc['matmul_tflops']:.0f} TFLOP/s**; FLOP floors = counted FLOPs "
        "(FlopCounterMode: matmuls + attention) ÷ that rate. Masks: a compact blob covering the given fraction of "
        "every latent frame (the decoder's token count). Stage times are warm medians (models resident, shapes seen "
        "once); model loading is not included.",
        "",
        "Paths:",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in PATH_NOTES.items() if any(r["path"] == k for r in recs)]
    lines += [
        "",
        "## Denoising (transformer work: encoder once + per-edit setup + all steps)",
        "",
        "| path | mask | tokens | ms/step | floor ms/step | × floor | encoder s | setup s (plan + caches / graph) "
        "| denoise s | speed-up vs diffusers baseline | vs fast baseline | peak GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {k: i for i, k in enumerate(PATH_NOTES)}
    ordered = sorted(recs, key=lambda r: (order.get(r["path"], 99), r["mask_fraction"]))
    for r in ordered:
        lines.append(
            f"| {r['path']} | {r['mask_fraction']:.0%} | {r['tokens']} | {r['ms_per_step']:.1f} | {r['floor_ms']:.1f} "
            f"| {r['floor_ratio']:.2f} | {_f(r.get('encoder_s'), '.3f')} | {_setup(r)} | {r['denoise_s']:.2f} "
            f"| {_f(r.get('denoise_speedup'), '.1f')}× | {_f(r.get('denoise_speedup_vs_fast_baseline'), '.1f')}× "
            f"| {r['peak_gb']:.1f} |")
    lines += [
        "",
        "## Whole edit (text encode + VAE encode + denoising + VAE decode + composite)",
        "",
        f"Text encoder: `{text.get('text_encoder')}`"
        + (f" (Gemma-3 12B + LTX-2 connectors, {text.get('params_b', 0):.1f} B params, random weights, "
           f"{st['text_tokens']} tokens; peak {text.get('peak_gb', 0):.1f} GB, freed before the transformer is "
           "built)" if text.get("text_encoder") == "gemma3-12b" else "")
        + f": {text.get('text_encode_s', 0):.3f} s. VAE (real LTX-2 config): full encode "
        f"{vae.get('vae_encode_s', 0):.3f} s (peak {vae.get('vae_encode_peak_gb', 0):.1f} GB), full decode "
        f"{vae.get('vae_decode_s', 0):.3f} s (peak {vae.get('vae_decode_peak_gb', 0):.1f} GB"
        + (", diffusers tiling" if vae.get("vae_decode_tiled") else "") + "). "
        f"Our path decodes only the edit box grown by a {st['halo_tokens']}-token halo and feathers it into the "
        f"source pixels ({st['feather_px']:.0f} px); the baselines decode everything and are charged no composite. "
        "Our path encodes the source once and blanks the edit region to the grey-clip latents for the "
        "encoder/adapters (`prepare_edit`; those latents are cached per VAE and clip shape, so only the first edit "
        "of a shape in a session pays one more encode: last column).",
        "",
        "| path | mask | decode box (latent rows×cols) | share of frame | VAE decode s | composite s | whole edit s "
        "| speed-up vs diffusers baseline | vs fast baseline | first edit of a shape s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ordered:
        if "box" in r:
            y0, y1, x0, x1 = r["box"]
            box, share, dec, comp = f"{y1 - y0}×{x1 - x0}", f"{r['area_fraction']:.0%}", r["vae_local_decode_s"], \
                r["composite_s"]
        else:
            box, share, dec, comp = "full", "100%", vae.get("vae_decode_s", 0), 0.0
        lines.append(
            f"| {r['path']} | {r['mask_fraction']:.0%} | {box} | {share} | {dec:.3f} | {comp:.3f} "
            f"| {r['whole_edit_s']:.2f} | {_f(r.get('whole_edit_speedup'), '.1f')}× "
            f"| {_f(r.get('whole_edit_speedup_vs_fast_baseline'), '.1f')}× "
            f"| {_f(r.get('whole_edit_two_encodes_s'), '.2f')} |")
    lines += ["", "## Targets (issue 6, against the diffusers baseline)", ""]
    lines += findings(doc)
    errs = [r for r in ordered if "local_vs_full_max_abs" in r and r["path"] == "fast"]
    if errs:
        lines += ["## Local VAE decode vs full decode", "",
                  "Inside the mask, |local − full| in 0..1 pixel units with the random-weight VAE (the exact halo for "
                  "this decoder is 22 tokens — more than the frame; see `editctrl_core/vae_tiles.py`):", ""]
        lines += [f"- {r['mask_fraction']:.0%}: max {r['local_vs_full_max_abs']:.3g}, mean "
                  f"{r['local_vs_full_mean_abs']:.3g}" for r in errs]
        lines.append("")
    prof = doc.get("profile") or []
    for fraction in sorted({p.get("mask_fraction", 0.1) for p in prof}):
        lines += [f"## Profile of the decoder step at {fraction:.0%} (eager, per step; top CUDA kernels)", ""]
        for one_way in (False, True):
            rows = [p for p in prof if p["one_way"] == one_way and p.get("mask_fraction", 0.1) == fraction]
            if not rows:
                continue
            lines += [f"`{'fast' if one_way else 'fast-bidirectional'}`:", "", "| kernel | ms/step | share | calls/step |",
                      "|---|---:|---:|---:|"]
            lines += [f"| `{p['kernel']}` | {p['ms_per_step']:.2f} | {p['share']:.1%} | {p['calls_per_step']:.0f} |"
                      for p in rows]
            lines.append("")
    compiled = [r for r in ordered if "compile_s" in r]
    if compiled:
        lines += ["## torch.compile", "",
                  "Compile time (first call minus a warm setup, in measurement order: the first mask compiles, "
                  "later masks reuse the dynamic-shape graphs; not included in the denoise times above): "
                  + ", ".join(f"`{r['path']}` {r['mask_fraction']:.0%}: {r['compile_s']:.1f} s" for r in compiled)
                  + ".", ""]
    lines += CAVEATS
    return "\n".join(lines) + "\n"


CAVEATS = [
    "## Notes and caveats",
    "",
    "- **The decoder prefix is one-way** (`SCDOptions.prefix`, default `one_way`): the noisy tokens attend to the "
    "encoder-context prefix, the prefix never attends to them, so its per-block keys/values are computed once per edit "
    "(an encoder K/V cache). Training uses the same mask (`SCDModel.decode`) and records it in the LoRA metadata "
    "(`scd_prefix`), which the LoRA loader follows. `fast-bidirectional` is the SCD paper's plain token concat, kept "
    "for comparison and for LoRAs trained that way. `tests/test_fast_decode.py` checks the cached path equals "
    "`SCDModel.decode` in both modes.",
    "- **`scd-eager` is the reference path** (training, and the sampler only with decoder block hooks or "
    "`fast=False`): it expresses the one-way prefix as an additive [2n,2n] mask over diffusers' blocks, which "
    "rules out the flash kernel and recomputes the prefix every step, so at large masks it is slower than the "
    "full-attention baseline. The fast decoder covers the LTX-2.0, 2.3 and 2.5 block layouts and multi-region edits "
    "(tested against it on tiny models); on LTX-2.3 the prompt is modulated by σ, so its prompt keys/values and the "
    "prefix pass are recomputed every step (not measured here: this run is the 2.0 19B).",
    "- **torch.compile** (`fast-compiled`, the sampler's `compile` option) compiles the block function once per "
    "process with dynamic token counts, so later edits with other mask sizes reuse it (tested on CPU: no recompile "
    "for a new token count); inductor also caches kernels on disk for the next process.",
    "- **Local VAE decode is approximate for the real VAE**: its decoder's receptive field is 692 px (22 latent "
    "tokens, more than a 768×512 frame), so no halo short of a full decode is exact. The 2-token halo is the "
    "overlap diffusers' own tiled LTX-2 decode uses. With random weights the difference inside the mask is large "
    "(table above), which says nothing about trained weights: measure it once real weights are available. On the "
    "tiny VAE the exact halo (7 tokens) is tested to reproduce the full decode.",
    "- Random weights, batch 1 (no CFG), one prompt of 1024 tokens (LTX-2's padded length). Model loading, "
    "offloading and the text encoder's residency are not included: the text encoder (29 GB peak) is freed before "
    "the transformer is built, so the peak columns are the transformer + VAE + adapters (≈ 41 GB of weights) plus "
    "activations; the largest activation peak is the full-resolution VAE encode.",
    "- Our path VAE-encodes the source once and blanks the edit region to the latents of an all-grey clip "
    "(`context.fill_latents`, the same blanking as in training), cached per VAE and shape; the first edit of a new "
    "clip shape encodes that grey clip once (last column of the whole-edit table).",
    "- The baselines are charged no composite (they return the decoded video); the diffusers baseline still runs "
    "LTX2Stack's silent audio stream, the fast baseline does not.",
    "",
]


def write_docs(doc: dict[str, Any], out: Path) -> None:
    """docs/benchmarks.json (the document) and docs/benchmarks.md (the report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "benchmarks.md").write_text(report(doc))


def environment(device: torch.device) -> dict[str, Any]:
    """Card and software versions."""
    import diffusers
    import transformers

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["card"] = props.name
        env["card_memory_gb"] = props.total_memory / 1e9
        env["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["card"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


def main() -> None:
    """Parse arguments, measure, write JSON (and the markdown report with --out)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="ltx-2.0-19b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--masks", type=lambda s: tuple(float(v) for v in s.split(",")),
                        default=(0.10, 1.00, 0.05, 0.25, 0.50), help="mask fractions, in the order measured")
    parser.add_argument("--paths", default="scd-eager,fast,fast-bidirectional")
    parser.add_argument("--text-encoder", default="gemma3-12b", choices=["gemma3-12b", "tiny", "random"],
                        help="random: prompt embeddings of the model's widths, no encoder (e.g. --preset ltx-2.3)")
    parser.add_argument("--halo", type=int, default=DEFAULT_HALO_TOKENS)
    parser.add_argument("--profile-masks", type=lambda s: tuple(float(v) for v in s.split(",")), default=(0.10, 1.00))
    parser.add_argument("--json", type=Path, default=None, help="write the raw JSON here (after every stage)")
    parser.add_argument("--compile", type=lambda s: [v for v in s.split(",") if v], default=[],
                        help="PATH:MASK items to also run through torch.compile, e.g. fast:0.1,fast:1.0")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip torch.compile past this many seconds")
    parser.add_argument("--report", type=Path, default=None,
                        help="only write --out/benchmarks.{json,md} from this measurement JSON")
    parser.add_argument("--out", type=Path, default=None, help="folder for benchmarks.json and benchmarks.md")
    args = parser.parse_args()
    if args.report is not None:
        write_docs(json.loads(args.report.read_text()), args.out or ROOT / "docs")
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bench = Bench(args)
    bench.run()
    bench.checkpoint()
    if args.out is not None:
        write_docs(bench.document(), args.out)


if __name__ == "__main__":
    main()
