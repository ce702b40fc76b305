"""Speed as a user meets it: ``sample_edit`` — the function the EditCtrl Sampler node calls — for every edit mode,
cold and warm, against ComfyUI 0.8.0's native LTX-2 model measured in the same run.

Setting (GPU run): the LTX-2.0 19B transformer (preset ``ltx-2.0-19b``, built on ``meta`` and ``to_empty`` on the
card, random bf16 weights: speed does not depend on the values), 121 frames at 768×512 (latent grid 16×16×24 = 6144
tokens), 1024 prompt tokens (random embeddings of the caption width, every token valid, as LTX-2's text connectors
return them: they pad the prompt to 1024 with learned registers), 30 steps, batch 1 (CFG doubles it). The sampler gets
exactly what the node gives it: ``SamplerSettings`` with the node's defaults (LTX-2 σ schedule, dilation 1, the
default ``renoised`` blend with its 64 px falloff — so the sampler grows the mask by 2 tokens; the masks below are
sized so that the tokens it edits are 5/10/25/50/100 % of the clip), ``fast`` on, no ``compile``; mode ``scd`` with no
LoRA and no adapters attached.

- **cold**: the first edit in a *fresh process* (each cold measurement runs in a child forked from a parent that has
  imported the Python modules but never touched the GPU: a new CUDA context, no kernel, graph, cuDNN plan or cache of
  this or any other shape; the model is built, then the edit runs — what the first edit after loading the model pays).
- **warm**: the same edit again in that process (same clip, mask and prompts, a new seed: what ComfyUI runs when only
  the sampler is re-queued, since it hands the sampler the same cached context and conditioning objects).
- **refill** (scd, training_free at 10 %): another clip and prompt with a mask of the same token count in that process
  (the captured CUDA graph's buffers are refilled; the encoder and the prefix pass run again).

Per edit: ``setup_s`` (everything before the first step: the blender's masks, the encoder, the plan, the per-edit
caches, the graph capture), ``ms_per_step`` (steady state, between step callbacks: the sampler's CFG, blend and
finiteness check included), ``denoise_s`` (the whole ``sample_edit`` call), peak memory, and the whole edit = text
encode + VAE encode + denoise + full VAE decode + pixel composite (text encoder, VAE and composite timed once, warm, in
their own process with the real configs and random weights, and added: the same text encoder and VAE for us and the
native baseline; the native baseline is charged no composite).

Peer baseline: ComfyUI 0.8.0's ``comfy.ldm.lightricks.av_model.LTXAVModel`` built the way ComfyUI builds it for the
19B config (``comfy.ops.pick_operations`` for bf16 weights and bf16 compute → ``disable_weight_init``; split rope with
float64 frequencies as the official checkpoints' metadata sets), random bf16 weights, the same 6144 video and 1024
text tokens, video-only and with a 5 s audio latent; the median of timed forwards; its denoise = 30 forwards (with CFG:
30 forwards at batch 2, as ComfyUI batches cond and uncond).

    python benchmarks/edit_speed.py --out docs                      # the GPU measurement (one run, ~9 minutes)
    python benchmarks/edit_speed.py --preset tiny --device cpu --steps 2 --frames 9 --height 64 --width 96 --out /tmp/b
    python benchmarks/edit_speed.py --report docs/benchmarks.json --out docs   # only rewrite benchmarks.md
"""

from __future__ import annotations

import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # the parent asks nothing of CUDA before it forks

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import editctrl_core.conditioning.text  # noqa: E402,F401
import editctrl_core.edit.sampler  # noqa: E402,F401 - imported once here, inherited by every forked child
from editctrl_core.edit.masks import dilate_token_mask, token_mask_to_pixel_mask  # noqa: E402
from editctrl_core.loading.models import load_preset  # noqa: E402

MASKS = (0.05, 0.10, 0.25, 0.50, 1.00)
CFG_MASKS = (0.10, 1.00)
MODES = ("scd", "training_free", "full")
TEXT_TOKENS = 1024
AUDIO_SECONDS = 5.0
FEATHER_PX = 16.0
SAMPLER_DILATION = 2  # max(node dilation 1, the default blend's required dilation: ceil((64 - 1) / 32))
COMFY_VERSION = "0.8.0"
COMFY_FILES = (
    "comfy/cli_args.py", "comfy/float.py", "comfy/ldm/common_dit.py", "comfy/ldm/lightricks/av_model.py",
    "comfy/ldm/lightricks/model.py", "comfy/ldm/lightricks/symmetric_patchifier.py", "comfy/ldm/modules/attention.py",
    "comfy/ldm/modules/diffusionmodules/__init__.py", "comfy/ldm/modules/diffusionmodules/util.py",
    "comfy/ldm/modules/sub_quadratic_attention.py", "comfy/ldm/util.py", "comfy/model_management.py", "comfy/ops.py",
    "comfy/options.py", "comfy/patcher_extension.py", "comfy/quant_ops.py", "comfy/rmsnorm.py", "comfyui_version.py",
    "LICENSE",
)
GEMMA_12B = {  # Gemma-3 12B text config as LTX-2.0 uses it (editctrl_core/presets/text/ltx-2.0.json)
    "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 256, "query_pre_attn_scalar": 256, "vocab_size": 262208,
    "max_position_embeddings": 131072, "sliding_window": 1024, "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
}
PATHS = {"scd": "fast", "training_free": "training-free", "full": "baseline-diffusers"}
TARGETS = {  # (mode, mask, cold, cfg, key, limit, at least?)
    "scd 10% cold ≥ 10× denoise": ("scd", 0.10, True, False, "denoise_speedup_vs_comfy_native", 10.0, True),
    "scd 10% warm ≥ 20× denoise": ("scd", 0.10, False, False, "denoise_speedup_vs_comfy_native", 20.0, True),
    "scd 100% cold ≥ 2.5× denoise": ("scd", 1.00, True, False, "denoise_speedup_vs_comfy_native", 2.5, True),
    "training_free 10% cold ≥ 5× denoise": ("training_free", 0.10, True, False, "denoise_speedup_vs_comfy_native",
                                             5.0, True),
    "training_free 100% cold ≥ 0.95× denoise": ("training_free", 1.00, True, False,
                                                 "denoise_speedup_vs_comfy_native", 0.95, True),
    "training_free 100% warm ≥ 0.95× denoise": ("training_free", 1.00, False, False,
                                                 "denoise_speedup_vs_comfy_native", 0.95, True),
    "whole edit scd 10% cold ≥ 5×": ("scd", 0.10, True, False, "whole_edit_speedup_vs_comfy_native", 5.0, True),
    "whole edit training_free 10% cold ≥ 5×": ("training_free", 0.10, True, False,
                                                "whole_edit_speedup_vs_comfy_native", 5.0, True),
    "setup ≤ 0.15 s, scd 10% cold (overhead: setup − encoder)": ("scd", 0.10, True, False, "setup_overhead_s", 0.15,
                                                                 False),
    "setup ≤ 0.15 s, training_free 10% cold (overhead: setup − background pass)": (
        "training_free", 0.10, True, False, "setup_overhead_s", 0.15, False),
}
PEAK_LIMIT_GB, LONG_PEAK_LIMIT_GB = 60.0, 80.0


# ----------------------------------------------------------------------------------------------------- small helpers
def sync(device: torch.device) -> None:
    """Wait for queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after the device is idle."""
    sync(device)
    return time.perf_counter()


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset, GB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def allocated_gb(device: torch.device) -> float | None:
    """Allocated device memory now, GB."""
    return torch.cuda.memory_allocated(device) / 1e9 if device.type == "cuda" else None


def median_time(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int) -> tuple[float, list[float]]:
    """Median seconds of `repeat` synced calls after `warmup` calls, and all samples."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = now(device)
        fn()
        samples.append(now(device) - t0)
    return statistics.median(samples), samples


def init_random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter in place: weights ~ N(0, 1/fan_in), norm weights 1, biases 0 (on the device)."""
    params = [p for p in module.parameters()]
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                # the output projection small, so random velocities keep 30 steps finite (speed ignores values)
                scale = 0.05 if name.startswith(("proj_out", "audio_proj_out")) else 1.0
                p.normal_(0.0, scale * p[0].numel() ** -0.5, generator=gen)
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


def environment(device: torch.device) -> dict[str, Any]:
    """Card and software versions (child side: may touch CUDA)."""
    import diffusers
    import transformers

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["card"] = props.name
        env["card_memory_gb"] = props.total_memory / 1e9
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["card"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (what users run), float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ----------------------------------------------------------------------------------------------------- the edit masks
def grid_of(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent grid of a clip."""
    return ((frames - 1) // 8 + 1, height // 32, width // 32)


def blob(grid: tuple[int, int, int], cells: int) -> torch.Tensor:
    """Token mask [f,h,w]: in every latent frame the `cells` cells nearest the centre (a compact blob)."""
    f, h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    d = (ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2
    order = torch.argsort(d.flatten() * (h * w) + torch.arange(h * w), stable=True)
    plane = torch.zeros(h * w, dtype=torch.bool)
    plane[order[:cells]] = True
    return plane.view(1, h, w).expand(f, h, w).clone()


def sized_mask(grid: tuple[int, int, int], fraction: float, dilation: int = SAMPLER_DILATION) -> dict[str, Any]:
    """The blob whose sampler-dilated token set is closest to `fraction` of the clip (cells per frame, fractions)."""
    f, h, w = grid
    if fraction >= 1.0:
        return {"cells": h * w, "edit_fraction": 1.0, "drawn_fraction": 1.0}
    best = None
    for cells in range(1, h * w + 1):
        grown = int(dilate_token_mask(blob((1, h, w), cells), dilation, 0).sum())
        err = abs(grown / (h * w) - fraction)
        if best is None or err < best[0]:
            best = (err, cells, grown)
        if grown / (h * w) > fraction + 0.05:
            break
    _, cells, grown = best
    return {"cells": cells, "edit_fraction": grown / (h * w), "drawn_fraction": cells / (h * w)}


# ----------------------------------------------------------------------------------------------------- the product
PRODUCT_MODULES = ("edit.sampler", "edit.scd", "edit.context", "edit.blend", "edit.geometry", "loading.models",
                   "conditioning.text", "conditioning.text_encoders", "edit.guidance", "edit.masks", "media.vae", "edit.fast_decode",
                   "edit.training_free", "edit.prefix_attention")


def _import_product(name: str):
    """editctrl_core.<layer>.<module>, or editctrl_core.<module> in a 'before' copy older than the sub-packages."""
    try:
        return importlib.import_module(f"editctrl_core.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"editctrl_core.{name.rpartition('.')[2]}")


def load_product(before: str | None) -> SimpleNamespace:
    """The editctrl_core modules the node calls; `before`: a folder holding an older copy of the package (the
    before/after comparison), imported instead of this checkout's (child processes only)."""
    if before:
        before = str(Path(before).resolve())
        for name in [n for n in sys.modules if n == "editctrl_core" or n.startswith("editctrl_core.")]:
            del sys.modules[name]
        sys.path.insert(0, before)
    mods = {name.rpartition(".")[2]: _import_product(name) for name in PRODUCT_MODULES}
    if before and not mods["sampler"].__file__.startswith(before):
        raise RuntimeError(f"the 'before' package was not imported from {before}")
    return SimpleNamespace(**mods)


def build_transformer_random(product: SimpleNamespace, preset_name: str, device: torch.device) -> torch.nn.Module:
    """The preset's transformer built on meta, moved with to_empty, random weights."""
    preset = product.models.load_preset(preset_name)
    return materialise(product.models.build_transformer(preset, empty=True), device, model_dtype(device))


def random_conditioning(product: SimpleNamespace, preset_name: str, seed: int, tokens: int = TEXT_TOKENS):
    """Prompt embeddings of the caption width on the CPU in float32, as the text encoder nodes return them; every
    token valid (LTX-2's connectors pad the prompt with registers to 1024 and mask nothing)."""
    cfg = product.models.load_preset(preset_name).transformer
    projected = cfg.get("use_prompt_embeddings", True)
    width = cfg["caption_channels"] if projected else cfg["cross_attention_dim"]
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, tokens, width, generator=g)
    audio = None if projected else torch.randn(1, tokens, cfg["audio_cross_attention_dim"], generator=g)
    return product.text.TextConditioning(embeds, torch.ones(1, tokens, dtype=torch.long), audio_embeds=audio)


def edit_context(product: SimpleNamespace, preset_name: str, frames: int, height: int, width: int, cells: int,
                 seed: int):
    """An EditContext as EditCtrl Encode builds it (random latents in place of VAE output; the grey-clip fill random
    too): source and blanked background latents, the pixel mask at full resolution, the token mask."""
    channels = product.models.load_preset(preset_name).transformer["in_channels"]
    grid = product.geometry.grid_for(frames, height, width)
    token_mask = blob(grid.shape, cells)
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(1, channels, *grid.shape, generator=g)
    fill = torch.randn(1, channels, *grid.shape, generator=torch.Generator().manual_seed(99))
    background = product.context.blank_background(source, token_mask, fill)
    pixel = token_mask_to_pixel_mask(token_mask, frames)
    return product.context.EditContext(torch.empty(0), pixel, source, background, token_mask, grid, None)


class Probe:
    """Runs ``sample_edit`` and times its parts by wrapping (not changing) the sampler's helpers: the blender's
    masks, the encoder, the step-function construction (plan + caches + graph) and the first step call."""

    def __init__(self, product: SimpleNamespace, device: torch.device):
        self.p, self.device = product, device

    def run(self, scd, ctx, positive, negative, settings) -> dict[str, Any]:
        """One edit; returns its timings."""
        sampler, dev = self.p.sampler, self.device
        parts = {"blend_s": 0.0, "encoder_s": 0.0, "prepare_s": 0.0}
        first = [None]
        stamps: list[float] = []
        cache = getattr(self.p.fast_decode, "STEP_CACHE", None)
        prepared: list[str] = []
        originals = {name: getattr(sampler, name) for name in ("_encode", "_step_function", "_pretrained_step",
                                                             "BoundaryBlender")}

        def timed(key: str, fn: Callable) -> Callable:
            def wrapper(*a, **k):
                t = now(dev)
                out = fn(*a, **k)
                parts[key] += now(dev) - t
                return out
            return wrapper

        def stepper(fn: Callable) -> Callable:
            def wrapper(*a, **k):
                t = now(dev)
                step = fn(*a, **k)
                parts["prepare_s"] += now(dev) - t
                prepared.append(getattr(cache, "last", "n/a") if cache is not None else "n/a")

                def call(x, sigma, *refreshing):
                    if first[0] is None:
                        first[0] = now(dev)
                    return step(x, sigma, *refreshing)
                return call
            return wrapper

        blender = originals["BoundaryBlender"]

        class TimedBlender(blender):
            def __init__(self, *a, **k):
                t = time.perf_counter()
                super().__init__(*a, **k)
                parts["blend_s"] += time.perf_counter() - t

        def callback(i: int, total: int, x: torch.Tensor) -> None:
            stamps.append(now(dev))

        passes = [(self.p.fast_decode.FastDecoder, "_prefix_pass"),
                  (self.p.training_free.FastMaskLocal, "_background_pass")]
        pass_originals = [(cls, attr, getattr(cls, attr)) for cls, attr in passes if hasattr(cls, attr)]
        sampler._encode = timed("encoder_s", originals["_encode"])
        sampler._step_function = stepper(originals["_step_function"])
        sampler._pretrained_step = stepper(originals["_pretrained_step"])
        sampler.BoundaryBlender = TimedBlender
        parts["pass_s"] = 0.0
        for cls, attr, fn in pass_originals:
            setattr(cls, attr, timed("pass_s", fn))
        if cache is not None:
            cache.last = ""
        reset_peak(dev)
        try:
            t0 = now(dev)
            result = sampler.sample_edit(scd, ctx, positive, negative, settings, callback=callback)
            t_end = now(dev)
        finally:
            for name, fn in originals.items():
                setattr(sampler, name, fn)
            for cls, attr, fn in pass_originals:
                setattr(cls, attr, fn)
        steps = len(stamps)
        setup = (first[0] or t_end) - t0
        steady = (stamps[-1] - stamps[0]) / (steps - 1) if steps > 1 else (stamps[0] - (first[0] or t0))
        return {"setup_s": setup, "setup_parts": parts, "ms_per_step": steady * 1e3,
                "first_step_s": stamps[0] - (first[0] or t0) if stamps else None, "denoise_s": t_end - t0,
                "peak_gb_denoise": peak_gb(dev), "edit_tokens": int(result.edit_tokens.sum()),
                "decoder_calls": result.decoder_calls, "encoder_calls": result.encoder_calls,
                "prepared": prepared, "finite": bool(torch.isfinite(result.latents).all())}


# ----------------------------------------------------------------------------------------------------- child jobs
def warm_libraries(device: torch.device) -> float:
    """What the text encoder and the VAE leave initialised before the sampler runs in a real session: one small
    matmul, attention call and convolution at shapes no edit uses (cuBLAS/cuDNN handles and workspaces), so a cold
    edit is charged its own first-use costs (its kernels, plans, graph capture, allocations) but not the libraries'
    start-up. Returns the seconds it took."""
    if device.type != "cuda":
        return 0.0
    t0 = now(device)
    dtype = model_dtype(device)
    a = torch.randn(200, 136, device=device, dtype=dtype)
    (a @ a.T).sum()
    q = torch.randn(1, 3, 72, 64, device=device, dtype=dtype)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.nn.functional.conv3d(torch.randn(1, 3, 3, 20, 20, device=device, dtype=dtype),
                               torch.randn(5, 3, 3, 3, 3, device=device, dtype=dtype))
    return now(device) - t0


def product_warmup(product: SimpleNamespace, device: torch.device, scd: Any, text: Any) -> float:
    """The start-up the product does once per process when the model is made ready (``EditModel.edit`` calls it
    after moving the weights; `sample_edit`, timed here, does not): the attention libraries and the model's CUDA
    kernels (a one-token encoder pass), done with the model build and timed on their own. Parts a 'before' copy
    lacks count 0."""
    attention = getattr(getattr(product, "prefix_attention", None), "warm_attention_kernels", None)
    encoder = getattr(product.fast_decode, "warm_encoder_kernels", None)
    seconds = 0.0 if attention is None else attention(device, model_dtype(device))
    return seconds + (0.0 if encoder is None else encoder(scd, text))


def job_edits(spec: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: build the model, then run the listed edits in order (the first is cold)."""
    device = torch.device(spec["device"])
    product = load_product(spec.get("before"))
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device)
    cuda_init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = build_transformer_random(product, spec["preset"], device)
    sync(device)
    build_s = time.perf_counter() - t0
    libraries_s = warm_libraries(device)
    preset = product.models.load_preset(spec["preset"])
    scd = product.scd.SCDModel(model, product.scd.SCDOptions(split_layer=preset.split_layer))
    kernel_warmup_s = product_warmup(product, device, scd, random_conditioning(product, spec["preset"], 999))
    weights_gb = allocated_gb(device)
    out: dict[str, Any] = {"env": environment(device), "cuda_init_s": cuda_init_s, "build_s": build_s,
                           "libraries_s": libraries_s, "kernel_warmup_s": kernel_warmup_s, "weights_gb": weights_gb,
                           "records": []}
    probe = Probe(product, device)
    contexts: dict[int, Any] = {}
    texts: dict[int, Any] = {}
    for edit in spec["edits"]:
        seed = edit["content"]
        if seed not in contexts:
            contexts[seed] = edit_context(product, spec["preset"], spec["frames"], spec["height"], spec["width"],
                                          edit["cells"], seed)
            texts[seed] = (random_conditioning(product, spec["preset"], 1000 + seed),
                           random_conditioning(product, spec["preset"], 2000 + seed))
        positive, negative = texts[seed]
        cfg = edit["cfg"]
        settings = product.sampler.SamplerSettings(
            steps=spec["steps"], seed=edit["seed"], cfg=product.guidance.DEFAULT_CFG if cfg else 1.0, dilation=1,
            blend=product.blend.BlendSettings(), mode=edit["mode"], fast=True, compile=False)
        with torch.no_grad():
            rec = probe.run(scd, contexts[seed], positive, negative if cfg else None, settings)
        rec.update({k: edit[k] for k in ("mode", "mask_fraction", "cfg", "kind")})
        rec["cold"] = edit["kind"] == "cold"
        rec["background_refresh"] = getattr(settings, "refreshes", 0)
        out["records"].append(rec)
        print(f"  {edit['mode']} {edit['mask_fraction']:.0%}{' cfg' if cfg else ''} {edit['kind']}: setup "
              f"{rec['setup_s']:.3f} s ({', '.join(f'{k} {v:.3f}' for k, v in rec['setup_parts'].items())}), "
              f"{rec['ms_per_step']:.1f} ms/step, denoise {rec['denoise_s']:.2f} s, peak {rec['peak_gb_denoise']} GB, "
              f"tokens {rec['edit_tokens']}, prepared {rec['prepared']}", flush=True)
    return out


def comfy_tree(args_dir: str | None) -> Path | None:
    """ComfyUI 0.8.0's source: --comfy-dir, .gl/comfy08, .cache/comfyui-0.8.0, else the needed files unpacked from
    ../shared/vendor/comfyui-0.8.0.tar.gz into .cache/comfyui-0.8.0-subset (None when none is there)."""
    for candidate in [args_dir, ROOT / ".gl" / "comfy08", ROOT / ".cache" / "comfyui-0.8.0"]:
        if candidate and (Path(candidate) / "comfy" / "ldm" / "lightricks" / "av_model.py").is_file():
            return Path(candidate)
    tarball = ROOT.parent / "shared" / "vendor" / "comfyui-0.8.0.tar.gz"
    if not tarball.is_file():
        return None
    target = ROOT / ".cache" / "comfyui-0.8.0-subset"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.removeprefix("./") in COMFY_FILES]
        for m in members:
            m.name = m.name.removeprefix("./")
        tar.extractall(target, members=members, filter="data")
    return target


def native_config(preset_name: str) -> dict[str, Any]:
    """LTXAVModel keyword arguments for a preset: the 19B defaults of ComfyUI's loader plus what the official
    checkpoints' metadata sets (split rope, float64 frequencies); the tiny preset's widths for a CPU check."""
    t = load_preset(preset_name).transformer
    # ComfyUI's audio latents are always 8 channels × 16 frequency bins = 128 features per token
    cfg = {"in_channels": t["in_channels"], "audio_in_channels": 128,
           "cross_attention_dim": t["cross_attention_dim"], "audio_cross_attention_dim": t["audio_cross_attention_dim"],
           "attention_head_dim": t["attention_head_dim"], "audio_attention_head_dim": t["audio_attention_head_dim"],
           "num_attention_heads": t["num_attention_heads"], "audio_num_attention_heads": t["audio_num_attention_heads"],
           "caption_channels": t["caption_channels"], "num_layers": t["num_layers"],
           "positional_embedding_theta": t.get("rope_theta", 10000.0), "vae_scale_factors": tuple(t["vae_scale_factors"]),
           "timestep_scale_multiplier": t["timestep_scale_multiplier"],
           "av_ca_timestep_scale_multiplier": t.get("cross_attn_timestep_scale_multiplier", 1000),
           "rope_type": t.get("rope_type", "split"),
           "frequencies_precision": "float64" if t.get("rope_double_precision") else "float32",
           "use_middle_indices_grid": True}
    return cfg


def job_native(spec: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: ComfyUI 0.8.0's LTXAVModel with random weights; median forward times."""
    device = torch.device(spec["device"])
    tree = spec["comfy_dir"]
    sys.path.insert(0, tree)
    from comfy.cli_args import args as comfy_args  # noqa: E402

    stubs = []
    if device.type == "cpu":
        comfy_args.cpu = True  # ComfyUI's own --cpu switch (model_management asks CUDA for the device otherwise)
        stubs.append("comfy.cli_args.args.cpu = True (ComfyUI's --cpu flag)")
    import comfy.ldm.lightricks.av_model as av  # noqa: E402
    import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
    import comfy.model_management as mm  # noqa: E402
    import comfy.ops  # noqa: E402

    version = COMFY_VERSION
    version_file = Path(tree) / "comfyui_version.py"
    if version_file.is_file():  # read, not executed: the file is one `__version__ = "x.y.z"` line
        found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", version_file.read_text())
        version = found.group(1) if found else version
    dtype = model_dtype(device)
    ops = comfy.ops.pick_operations(dtype, None, load_device=device)
    cfg = native_config(spec["preset"])
    t0 = time.perf_counter()
    model = av.LTXAVModel(**cfg, dtype=dtype, device="meta", operations=ops)
    model = init_random_(model.to_empty(device=device)).eval()
    sync(device)
    build_s = time.perf_counter() - t0
    params_b = sum(p.numel() for p in model.parameters()) / 1e9
    f, h, w = grid_of(spec["frames"], spec["height"], spec["width"])
    channels, caption = cfg["in_channels"], cfg["caption_channels"]
    audio_tokens = round(AUDIO_SECONDS * 16000 / 160 / 4) + 1  # LTX-2 audio latents: 25 per second (+1)
    g = torch.Generator(device=device).manual_seed(0)

    def inputs(batch: int, audio: bool, masked: bool) -> dict[str, Any]:
        vx = torch.randn(batch, channels, f, h, w, device=device, dtype=dtype, generator=g)
        context = torch.randn(batch, TEXT_TOKENS, 2 * caption, device=device, dtype=dtype, generator=g)
        sigma = torch.full((batch,), 0.5, device=device, dtype=dtype)
        v_t = sigma
        if masked:  # a masked edit (noise mask): per-token timesteps, as LTXAV.process_timestep makes them
            mask = torch.zeros(batch, 1, f, h, w, device=device, dtype=dtype)
            mask[..., h // 4: h // 4 + max(1, h // 3), w // 4: w // 4 + max(1, w // 3)] = 1
            v_t = model.patchifier.patchify(mask * sigma.view(batch, 1, 1, 1, 1))[0]
        x = [vx]
        if audio:
            x.append(torch.randn(batch, 8, audio_tokens, 16, device=device, dtype=dtype, generator=g))
        return {"x": x, "timestep": (v_t, sigma), "context": context, "attention_mask": None, "frame_rate": 25,
                "transformer_options": {}}

    out: dict[str, Any] = {"env": environment(device), "version": version, "build_s": build_s, "params_b": params_b,
                           "operations": f"comfy.ops.{ops.__name__}", "stubs": stubs,
                           "attention": getattr(comfy_attention.optimized_attention, "__name__", "?"),
                           "vram_state": str(getattr(mm, "vram_state", "?")), "audio_tokens": audio_tokens,
                           "video_tokens": f * h * w, "text_tokens": TEXT_TOKENS, "config": cfg}
    repeat, warmup = spec.get("repeat", 5), spec.get("warmup", 2)
    for name, batch, audio, masked in (("video_only", 1, False, False), ("audio_5s", 1, True, False),
                                       ("video_only_masked", 1, False, True), ("video_only_cfg_batch2", 2, False, False)):
        kw = inputs(batch, audio, masked)
        reset_peak(device)
        with torch.inference_mode():
            seconds, samples = median_time(lambda kw=kw: model(**kw), device, repeat, warmup)
        out[f"ms_per_step_{name}"] = seconds * 1e3
        out[f"samples_ms_{name}"] = [s * 1e3 for s in samples]
        out[f"peak_gb_{name}"] = peak_gb(device)
        print(f"  ComfyUI native {name}: {seconds * 1e3:.1f} ms/forward (median of {repeat}), peak "
              f"{out[f'peak_gb_{name}']} GB", flush=True)
        del kw
    return out


def job_stages(spec: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: matmul rate, the text encoder and the VAE (real configs, random weights), the composite."""
    device = torch.device(spec["device"])
    product = load_product(None)
    dtype = model_dtype(device)
    out: dict[str, Any] = {"env": environment(device)}
    n = 8192 if device.type == "cuda" else 512
    mats = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
    seconds, _ = median_time(lambda: mats[0] @ mats[1], device, 10, 3)
    out["matmul_tflops"] = 2 * n ** 3 / seconds / 1e12
    mats.clear()
    # text encoder
    reset_peak(device)
    if spec["text_encoder"] == "gemma3-12b":
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
        sync(device)
        out["text_build_s"] = time.perf_counter() - t0
        ids = torch.randint(3, GEMMA_12B["vocab_size"], (1, TEXT_TOKENS), device=device)
        mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device=device)
        mask[:, -96:] = 1  # a 96-token prompt, left-padded to 1024 (the model still runs all 1024 positions)

        def encode() -> None:
            with torch.no_grad():
                hidden = gemma(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                connectors(torch.stack(hidden, dim=-1).flatten(2, 3), mask, padding_side="left")

        out["text_encode_s"], _ = median_time(encode, device, 3, 1)
        out["text_encoder"] = "Gemma-3 12B + LTX-2 text connectors (random bf16 weights), 1024 tokens"
        del gemma, connectors
    else:
        enc = product.text_encoders.build_tiny_text_encoder(device=device)
        out["text_encode_s"], _ = median_time(lambda: enc.encode(["a red boat on a calm lake"]), device, 3, 1)
        out["text_encoder"] = "tiny text preset (Gemma-3 + LTX-2 connectors)"
    out["text_peak_gb"] = peak_gb(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # VAE
    preset = product.models.load_preset(spec["preset"])
    vae = materialise(product.models.build_vae(preset, empty=True), device, dtype, seed=1)
    with torch.no_grad():
        vae.latents_mean.zero_()
        vae.latents_std.fill_(1.0)
    vae_gb = allocated_gb(device)
    frames, height, width = spec["frames"], spec["height"], spec["width"]
    source = torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(0))
    reset_peak(device)
    out["vae_encode_s"], _ = median_time(lambda: product.vae.encode_frames(vae, source), device, 2, 1)
    out["vae_encode_peak_gb"] = peak_gb(device)
    latents = product.vae.encode_frames(vae, source)
    reset_peak(device)
    out["vae_decode_s"], _ = median_time(lambda: product.vae.decode_latents(vae, latents), device, 2, 1)
    out["vae_decode_peak_gb"] = peak_gb(device)
    out["vae_weights_gb"] = vae_gb
    edited = product.vae.decode_latents(vae, latents)
    grid = grid_of(frames, height, width)
    out["composite_s"] = {}
    out["composite_device"] = str(device)
    for fraction in spec["masks"]:
        cells = sized_mask(grid, fraction)["cells"]
        pixel = token_mask_to_pixel_mask(blob(grid, cells), frames)
        # as EditCtrl Composite runs it: CPU IMAGEs in, composited on ComfyUI's device, a CPU IMAGE out
        seconds, _ = median_time(lambda p=pixel: product.blend.composite(edited, source, p, FEATHER_PX,
                                                                         device=device), device, 2, 1)
        out["composite_s"][str(fraction)] = seconds
    print(f"  stages: matmul {out['matmul_tflops']:.0f} TFLOP/s, text {out['text_encode_s']:.3f} s, VAE encode "
          f"{out['vae_encode_s']:.3f} s, decode {out['vae_decode_s']:.3f} s, composite {out['composite_s']}",
          flush=True)
    return out


def job_flops(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-step FLOPs of each mode's step at each token count and batch, counted on the meta device (shapes only)."""
    from benchmarks.flops import count

    product = load_product(None)
    preset = product.models.load_preset(spec["preset"])
    model = product.models.build_transformer(preset, empty=True)
    scd = product.scd.SCDModel(model, product.scd.SCDOptions(split_layer=preset.split_layer))
    grid = grid_of(spec["frames"], spec["height"], spec["width"])
    width = preset.transformer["caption_channels"]
    channels = preset.transformer["in_channels"]
    meta = torch.device("meta")
    out: dict[str, Any] = {}
    for item in spec["items"]:
        mode, cells, batch = item["mode"], item["cells"], item["batch"]
        mask = dilate_token_mask(blob(grid, cells), SAMPLER_DILATION, 0)
        index = mask.flatten().nonzero().squeeze(1)
        n = index.numel()
        text = product.text.TextConditioning(torch.zeros(batch, TEXT_TOKENS, width, device=meta), None)
        x = torch.zeros(batch, n, channels, device=meta)
        sigma = torch.full((batch,), 0.5, device=meta)
        with torch.no_grad():
            if mode == "scd":
                context = torch.zeros(1, math.prod(grid), preset.transformer["num_attention_heads"]
                                      * preset.transformer["attention_head_dim"], device=meta)
                step = product.fast_decode.FastDecoder(scd, scd.plan(index, context, grid, text))
            elif mode == "training_free":
                tf = product.training_free.MaskLocalModel(scd.stack)
                tokens = torch.zeros(1, math.prod(grid), channels, device=meta)
                plan = tf.plan(index, tokens, grid, text, background_index=(~mask.flatten()).nonzero().squeeze(1))
                step = product.training_free.FastMaskLocal(tf, plan)
            else:
                full = product.training_free.FullModel(scd.stack)
                tokens = torch.zeros(1, math.prod(grid), channels, device=meta)
                plan = full.plan(index, tokens, grid, text)
                step = lambda x_, s_, full=full, plan=plan: full.decode(plan, x_, s_)  # noqa: E731
            out[f"{mode}:{cells}:{batch}"] = count(lambda step=step, x=x, sigma=sigma: step(x, sigma))
    return out


def job_diagnostics(spec: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: what first calls cost on this card — attention at shapes an edit meets, per backend (first,
    second call), a matmul at a new shape, a small graph capture (explains the cold setup)."""
    device = torch.device(spec["device"])
    if device.type != "cuda":
        return {}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict[str, Any] = {"env": environment(device), "libraries_s": warm_libraries(device), "sdpa": []}
    dtype = model_dtype(device)
    shapes = [(608, 1216), (608, 1024), (384, 1152), (400, 800), (6144, 12288)]
    offsets = {SDPBackend.CUDNN_ATTENTION: 8, SDPBackend.FLASH_ATTENTION: 16, SDPBackend.EFFICIENT_ATTENTION: 24}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for i, (nq, nk) in enumerate(shapes):
            offset = offsets[backend]  # a shape no other backend saw
            nq_, nk_ = nq + offset, nk + offset
            q = torch.randn(1, 32, nq_, 128, device=device, dtype=dtype)
            k = torch.randn(1, 32, nk_, 128, device=device, dtype=dtype)
            times = []
            try:
                with sdpa_kernel(backend):
                    for _ in range(3):
                        t0 = now(device)
                        torch.nn.functional.scaled_dot_product_attention(q, k, k)
                        times.append(now(device) - t0)
            except RuntimeError as exc:
                times = [str(exc)[:80]]
            out["sdpa"].append({"backend": str(backend).split(".")[-1], "q": nq_, "k": nk_, "order": i,
                                "seconds": times})
    a = torch.randn(608, 4096, device=device, dtype=dtype)
    w = torch.randn(4096, 4096, device=device, dtype=dtype)
    times = []
    for _ in range(3):
        t0 = now(device)
        torch.nn.functional.linear(a, w)
        times.append(now(device) - t0)
    out["matmul_new_shape_s"] = times

    def small(x: torch.Tensor) -> torch.Tensor:
        for _ in range(50):
            x = torch.nn.functional.linear(x, w).relu_()
        return x

    t0 = now(device)
    small(a)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        small(a)
    out["capture_50_linears_s"] = now(device) - t0
    print(f"  diagnostics: {json.dumps(out['sdpa'])[:2000]}", flush=True)
    return out


JOBS = {"edits": job_edits, "native": job_native, "stages": job_stages, "flops": job_flops,
        "diagnostics": job_diagnostics}


# ----------------------------------------------------------------------------------------------------- orchestration
def fork_child(name: str, job: str, spec: dict[str, Any], workdir: Path) -> tuple[int, Path]:
    """Start a job in a forked child (a fresh CUDA context: the parent never touches the GPU)."""
    path = workdir / f"{name}.json"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        cores = os.environ.get("EDIT_SPEED_FLOPS_CORE")
        if cores is not None and hasattr(os, "sched_setaffinity"):
            # the CPU-only FLOP count keeps one core to itself; the GPU jobs (and their OpenMP teams) the others
            flops_core = int(cores)
            os.sched_setaffinity(0, {flops_core} if job == "flops" else set(range(os.cpu_count())) - {flops_core})
        torch.set_num_threads(1 if job == "flops" else int(os.environ.get("EDIT_SPEED_CHILD_THREADS", "1")))
        try:
            result = JOBS[job](spec)
        except BaseException as exc:  # noqa: BLE001 - report the failure to the parent
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            code = 1
        try:
            path.write_text(json.dumps(result, default=str))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid, path


def spawn_child(name: str, job: str, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run a job in a new interpreter (the fallback when forked children cannot start CUDA)."""
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    try:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", job, "--spec", str(spec_path),
                        "--result", str(result_path)], timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout:.0f} s"}
    if result_path.is_file():
        return json.loads(result_path.read_text())
    return {"error": "child wrote no result"}


def run_child_main(job: str, spec_path: Path, result_path: Path) -> None:
    """Entry of a spawned child."""
    try:
        result = JOBS[job](json.loads(spec_path.read_text()))
    except BaseException as exc:  # noqa: BLE001 - report the failure to the parent
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result_path.write_text(json.dumps(result, default=str))


def wait_child(pid: int, path: Path, timeout: float) -> dict[str, Any]:
    """Wait for a forked child (killed past `timeout`); its result or an error."""
    deadline = time.perf_counter() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"error": f"killed after {timeout:.0f} s"}
        time.sleep(0.05)
    if path.is_file():
        return json.loads(path.read_text())
    return {"error": f"child exited with status {status} and no result"}


class Run:
    """The parent: plans the jobs, runs each in a fresh child within the time budget, assembles the document."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.perf_counter()
        self.grid = grid_of(args.frames, args.height, args.width)
        self.masks = {f: sized_mask(self.grid, f) for f in sorted(set(args.masks) | set(args.cfg_masks))}
        self.long_grid = grid_of(args.long_frames, args.height, args.width)
        self.long_mask = sized_mask(self.long_grid, 0.10)
        self.workdir = Path(tempfile.mkdtemp(prefix="edit_speed_"))
        self.log: list[str] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []
        self.isolation = args.isolation

    def say(self, line: str) -> None:
        """Print and keep a log line."""
        print(line, flush=True)
        self.log.append(line)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def base_spec(self, **extra: Any) -> dict[str, Any]:
        a = self.args
        spec = {"device": a.device, "preset": a.preset, "frames": a.frames, "height": a.height, "width": a.width,
                "steps": a.steps}
        spec.update(extra)
        return spec

    def step_estimate(self, mode: str, fraction: float, cfg: bool) -> float:
        """Rough seconds of one edit on the GPU (for the budget only)."""
        per = {"scd": 0.006 + 0.125 * fraction, "training_free": 0.012 + 0.32 * fraction, "full": 0.40}[mode]
        return self.args.steps * per * (2 if cfg else 1) + 0.8

    def edit_jobs(self) -> list[tuple[str, str, dict[str, Any], float]]:
        """(name, job, spec, estimate) for every edit measurement, most important first."""
        jobs = []
        order = sorted(self.args.masks, key=lambda f: (f != 0.10, f != 1.00, f))
        for mode in [m for m in ("scd", "training_free") if m in self.args.modes]:
            for fraction in order:
                kinds = ["cold", "warm"] + (["refill"] if fraction == 0.10 else [])
                jobs.append(self.edit_job(mode, fraction, False, kinds))
            for fraction in self.args.cfg_masks:
                jobs.append(self.edit_job(mode, fraction, True, ["cold", "warm"]))
        return jobs

    def full_jobs(self) -> tuple[list, list]:
        """The `full` mode: its step does not depend on the mask (the whole clip every step), so it runs warm at
        10 % only; (first, later) jobs by importance."""
        if "full" not in self.args.modes:
            return [], []
        first = [self.edit_job("full", 0.10, False, ["cold", "warm"])] if 0.10 in self.args.masks else []
        first += [self.edit_job("full", 1.00, False, ["cold"])] if 1.00 in self.args.masks else []
        later = [self.edit_job("full", f, True, ["cold"] + (["warm"] if f == 0.10 and self.args.device == "cpu"
                                                             else [])) for f in self.args.cfg_masks]
        later += [self.edit_job("full", f, False, ["cold"]) for f in self.args.masks if f not in (0.10, 1.00)]
        return first, later

    def edit_job(self, mode: str, fraction: float, cfg: bool, kinds: list[str], *, before: str | None = None,
                 frames: int | None = None, label: str = "") -> tuple[str, str, dict[str, Any], float]:
        mask = self.masks[fraction] if frames is None else self.long_mask
        edits = []
        for i, kind in enumerate(kinds):
            edits.append({"mode": mode, "mask_fraction": fraction, "cfg": cfg, "kind": kind, "cells": mask["cells"],
                          "content": 1 if kind != "refill" else 2, "seed": i})
        spec = self.base_spec(edits=edits, before=before)
        if frames is not None:
            spec["frames"] = frames
        scale = 1.0 if frames is None else frames / self.args.frames
        est = 4.0 + sum(self.step_estimate(mode, fraction, cfg) * scale * (1.6 if k == "cold" else 1.0)
                        for k in kinds)
        name = f"{label}{mode}-{fraction:g}{'-cfg' if cfg else ''}"
        return name, "edits", spec, est

    def run_job(self, name: str, job: str, spec: dict[str, Any], est: float) -> None:
        """Run one job in a fresh child unless the budget is spent."""
        remaining = self.args.budget_s - self.elapsed()
        if remaining < est * 0.8:
            self.skipped.append(f"{name} (≈{est:.0f} s left out: {remaining:.0f} s of the budget remained)")
            self.say(f"skip {name}: ≈{est:.0f} s needed, {remaining:.0f} s left")
            return
        self.say(f"[{self.elapsed():6.1f} s] {name}")
        timeout = max(30.0, min(remaining + 20, est * 4 + 60))
        if self.isolation == "fork":
            pid, path = fork_child(name, job, spec, self.workdir)
            result = wait_child(pid, path, timeout)
            if "error" in result and "CUDA" in result["error"] and ("initiali" in result["error"]
                                                                   or "fork" in result["error"]):
                self.say(f"forked child could not start CUDA ({result['error']}): new interpreters from here on")
                self.isolation = "spawn"
        if self.isolation == "spawn":
            result = spawn_child(name, job, spec, self.workdir, timeout)
        if "error" in result:
            self.say(f"JOB FAILED {name}: {result['error']}\n{result.get('traceback', '')}")
        self.results[name] = result
        self.checkpoint()

    def run(self) -> dict[str, Any]:
        """Every job, then the document."""
        a = self.args
        tree = comfy_tree(a.comfy_dir)
        if self.isolation == "fork" and torch.cuda.is_initialized():
            self.say("CUDA is initialised in the parent: children start as new interpreters")
            self.isolation = "spawn"
        flops_items = []
        for mode in a.modes:
            for m in self.masks.values():
                for batch in (1, 2):
                    flops_items.append({"mode": mode, "cells": m["cells"], "batch": batch})
        flops_pid, flops_path = fork_child("flops", "flops", self.base_spec(items=flops_items), self.workdir)
        if tree is None:
            self.say("ComfyUI 0.8.0 tree not found (no --comfy-dir, .gl/comfy08, .cache/comfyui-0.8.0 or "
                     "../shared/vendor tarball): the native baseline is skipped")
        else:
            self.run_job("native", "native", self.base_spec(comfy_dir=str(tree), repeat=a.native_repeat,
                                                            warmup=2 if a.device == "cuda" else 1), 45.0)
        if a.device == "cuda":
            self.run_job("diagnostics", "diagnostics", self.base_spec(), 12.0)
        self.run_job("stages", "stages", self.base_spec(text_encoder=a.text_encoder, masks=list(a.masks)), 40.0)
        jobs = self.edit_jobs()
        for job in jobs:
            self.run_job(*job)
        for mode in [m for m in ("scd", "training_free") if m in a.modes]:
            if a.long_frames:
                self.run_job(*self.edit_job(mode, 0.10, False, ["cold"], frames=a.long_frames, label="long-"))
        full_first, full_later = self.full_jobs()
        for job in full_first:
            self.run_job(*job)
        if a.before:
            for mode in [m for m in ("scd", "training_free") if m in a.modes]:
                self.run_job(*self.edit_job(mode, 0.10, False, ["cold", "warm"], before=a.before, label="before-"))
        for job in full_later:
            self.run_job(*job)
        self.results["flops"] = wait_child(flops_pid, flops_path, max(5.0, min(120.0, a.budget_s + 40 - self.elapsed())))
        return self.document()

    def checkpoint(self) -> None:
        """Write the raw results so far (a timeout loses nothing)."""
        if self.args.raw is not None:
            self.args.raw.write_text(json.dumps({"results": self.results, "log": self.log}, default=str) + "\n")

    # ------------------------------------------------------------------------------------------------ assembling
    def document(self) -> dict[str, Any]:
        """The JSON document: settings, the native baseline, every edit record with its speed-ups, the long clip."""
        a, res = self.args, self.results
        native = res.get("native") or {}
        stages = res.get("stages") or {}
        flops = res.get("flops") or {}
        env = next((r["env"] for r in res.values() if isinstance(r, dict) and "env" in r), {})
        card = env.get("card", "?")
        steps = a.steps
        native_ok = "error" not in native and "ms_per_step_video_only" in native
        comfy = None
        if native_ok:
            comfy = {"version": native["version"], "ms_per_step_video_only": native["ms_per_step_video_only"],
                     "ms_per_step_audio_5s": native["ms_per_step_audio_5s"],
                     "ms_per_step_video_only_masked": native["ms_per_step_video_only_masked"],
                     "ms_per_step_video_only_cfg_batch2": native["ms_per_step_video_only_cfg_batch2"],
                     "denoise_s_video_only": steps * native["ms_per_step_video_only"] / 1e3,
                     "denoise_s_cfg": steps * native["ms_per_step_video_only_cfg_batch2"] / 1e3,
                     **{k: native[k] for k in ("operations", "attention", "stubs", "params_b", "build_s", "audio_tokens",
                                               "video_tokens", "text_tokens", "vram_state", "config")},
                     **{k: v for k, v in native.items() if k.startswith(("samples_ms_", "peak_gb_"))}}
        elif native:
            comfy = {"version": COMFY_VERSION, "error": native.get("error")}
        text_s = stages.get("text_encode_s", 0.0)
        vae_enc, vae_dec = stages.get("vae_encode_s", 0.0), stages.get("vae_decode_s", 0.0)
        rate = stages.get("matmul_tflops")
        records, long_clip, before_after = [], [], []
        for name, result in res.items():
            if name in ("native", "stages", "flops", "diagnostics") or "records" not in result:
                continue
            weights = result.get("weights_gb")
            for r in result["records"]:
                r = dict(r)
                fraction = r["mask_fraction"]
                r["card"] = card
                r["steps"] = steps
                r["batch"] = 2 if r["cfg"] else 1
                r["build_s"] = result.get("build_s")
                r["cuda_init_s"] = result.get("cuda_init_s")
                r["kernel_warmup_s"] = result.get("kernel_warmup_s")
                grid = self.long_grid if name.startswith("long-") else self.grid
                r["edit_fraction"] = r["edit_tokens"] / math.prod(grid)
                parts = r["setup_parts"]
                r["setup_compute_s"] = self.compute_in_setup(result, r)
                r["setup_overhead_s"] = r["setup_s"] - r["setup_compute_s"]
                if name.startswith("long-"):
                    long_clip.append({"frames": a.long_frames, "grid": list(self.long_grid), "mode": r["mode"],
                                      "mask_fraction": fraction, "edit_tokens": r["edit_tokens"],
                                      "denoise_s": r["denoise_s"], "setup_s": r["setup_s"],
                                      "setup_parts": parts, "ms_per_step": r["ms_per_step"],
                                      "peak_gb": r["peak_gb_denoise"], "card": card, "cold": True,
                                      "within_80_gb": None if r["peak_gb_denoise"] is None
                                      else r["peak_gb_denoise"] <= LONG_PEAK_LIMIT_GB})
                    continue
                composite_s = (stages.get("composite_s") or {}).get(str(fraction), 0.0)
                r["whole_edit_s"] = text_s + vae_enc + r["denoise_s"] + vae_dec + composite_s
                r["whole_edit_parts"] = {"text_encode_s": text_s, "vae_encode_s": vae_enc, "denoise_s": r["denoise_s"],
                                         "vae_decode_s": vae_dec, "composite_s": composite_s}
                peaks = [r["peak_gb_denoise"]]
                if weights is not None and stages.get("vae_encode_peak_gb") is not None:
                    # the transformer stays resident while the VAE runs: its weights + the VAE's own peak
                    peaks += [weights + stages["vae_encode_peak_gb"], weights + stages["vae_decode_peak_gb"]]
                r["peak_gb"] = max(p for p in peaks if p is not None) if any(p is not None for p in peaks) else None
                cells = self.masks[fraction]["cells"]
                count = flops.get(f"{r['mode']}:{cells}:{r['batch']}")
                if count and rate:
                    r["step_flops"] = count
                    r["floor_ms"] = count / (rate * 1e12) * 1e3
                    r["floor_ratio"] = r["ms_per_step"] / r["floor_ms"]
                if native_ok:
                    native_denoise = steps * (native["ms_per_step_video_only_cfg_batch2"] if r["cfg"]
                                              else native["ms_per_step_video_only"]) / 1e3
                    native_whole = text_s + vae_enc + native_denoise + vae_dec
                    r["native_denoise_s"] = native_denoise
                    r["denoise_speedup_vs_comfy_native"] = native_denoise / r["denoise_s"]
                    r["whole_edit_speedup_vs_comfy_native"] = native_whole / r["whole_edit_s"]
                    r["denoise_speedup"] = r["denoise_speedup_vs_comfy_native"]
                    r["whole_edit_speedup"] = r["whole_edit_speedup_vs_comfy_native"]
                suffix = ("-cfg" if r["cfg"] else "") + ("" if r["kind"] == "cold" else f"-{r['kind']}")
                r["path"] = PATHS[r["mode"]] + suffix
                if name.startswith("before-"):
                    r["product"] = "before"
                    before_after.append(r)
                else:
                    records.append(r)
        records.sort(key=lambda r: (MODES.index(r["mode"]), r["cfg"], r["mask_fraction"],
                                    ["cold", "warm", "refill"].index(r["kind"])))
        doc = {
            "generated_by": "benchmarks/edit_speed.py", "environment": env,
            "setting": {"preset": a.preset, "frames": a.frames, "height": a.height, "width": a.width,
                        "grid": list(self.grid), "tokens": math.prod(self.grid), "text_tokens": TEXT_TOKENS,
                        "steps": steps, "batch": 1, "dtype": "bfloat16" if a.device == "cuda" else "float32",
                        "masks": {str(k): v for k, v in self.masks.items()}, "sampler_dilation": SAMPLER_DILATION,
                        "long_frames": a.long_frames, "long_grid": list(self.long_grid),
                        "cold": "first edit in a fresh process (forked before any CUDA use; model built, then the edit)",
                        "warm": "the same edit again in that process (same context and prompts, a new seed)",
                        "refill": "a new clip and prompt with a mask of the same token count in that process"},
            "matmul_tflops": rate, "stages": stages or None, "comfy_native": comfy, "records": records,
            "long_clip": long_clip, "before_after": before_after, "diagnostics": res.get("diagnostics"),
            "skipped": self.skipped,
            "elapsed_s": self.elapsed(), "log": self.log,
        }
        doc["targets"] = targets(doc)
        return doc

    @staticmethod
    def compute_in_setup(result: dict[str, Any], r: dict[str, Any]) -> float:
        """The model compute inside a setup that is not overhead: the encoder and the one-time prefix/background
        pass, as the job's refill edit (same shapes, warm kernels, no capture) measures them; the edit's own timings
        where the job has no refill."""
        ref = next((o for o in result.get("records", []) if o["kind"] == "refill"), None)
        parts = (ref or r)["setup_parts"]
        return parts.get("encoder_s", 0.0) + parts.get("pass_s", 0.0)


# ----------------------------------------------------------------------------------------------------- the report
def find(doc: dict[str, Any], mode: str, fraction: float, cold: bool, cfg: bool, kind: str | None = None
         ) -> dict[str, Any] | None:
    """One record."""
    for r in doc["records"]:
        if (r["mode"] == mode and r["mask_fraction"] == fraction and r["cold"] == cold and r["cfg"] == cfg
                and (kind is None or r["kind"] == kind)):
            return r
    return None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with the measured value and whether it is met (None: not measured)."""
    out = []
    for name, (mode, fraction, cold, cfg, key, limit, at_least) in TARGETS.items():
        r = find(doc, mode, fraction, cold, cfg, None if cold else "warm")
        value = None if r is None else r.get(key)
        met = None if value is None else (value >= limit if at_least else value <= limit)
        out.append({"target": name, "value": value, "met": met})
    peaks = [r["peak_gb"] for r in doc["records"] if r.get("peak_gb") is not None]
    out.append({"target": f"peak ≤ {PEAK_LIMIT_GB:.0f} GB at {doc['setting']['frames']} frames (every record)",
                "value": max(peaks) if peaks else None, "met": (max(peaks) <= PEAK_LIMIT_GB) if peaks else None})
    for item in doc.get("long_clip") or []:
        out.append({"target": f"long clip {item['mode']} ≤ {LONG_PEAK_LIMIT_GB:.0f} GB peak", "value": item["peak_gb"],
                    "met": item["within_80_gb"]})
    return out


def findings(doc: dict[str, Any]) -> list[str]:
    """What the records say about where a cold edit's time goes (derived from the document only)."""
    lines = ["", "## Where the cold time goes", ""]
    for mode in ("scd", "training_free"):
        cold, warm = find(doc, mode, 0.10, True, False), find(doc, mode, 0.10, False, False, "warm")
        refill = find(doc, mode, 0.10, False, False, "refill")
        if not (cold and warm and refill):
            continue
        c, r = cold["setup_parts"], refill["setup_parts"]
        first_use = cold["setup_s"] - refill["setup_s"]
        lines.append(
            f"- `{mode}` 10 %: cold setup {cold['setup_s']:.3f} s = blend {c['blend_s']:.3f} (CPU) + encoder "
            f"{c['encoder_s']:.3f} + prepare {c['prepare_s']:.3f} (of which the one-time pass {c['pass_s']:.3f}; the "
            f"rest plan, caches, capture) + {cold['setup_s'] - c['blend_s'] - c['encoder_s'] - c['prepare_s']:.3f} "
            f"other. The refill edit — same shapes, kernels already used, no capture — sets up in "
            f"{refill['setup_s']:.3f} s (encoder {r['encoder_s']:.3f}, pass {r['pass_s']:.3f}), so {first_use:.3f} s "
            f"of the cold setup are first-use costs; warm (the same edit again) sets up in {warm['setup_s']:.3f} s. "
            f"Steps: {cold['ms_per_step']:.1f} ms ({_f(cold.get('floor_ratio'))}× the FLOP floor).")
    diag = doc.get("diagnostics") or {}
    rows = diag.get("sdpa") or []

    def first(backend: str, order: int) -> float | None:
        row = next((d for d in rows if d["backend"] == backend and d["order"] == order), None)
        return row["seconds"][0] if row and isinstance(row["seconds"][0], float) else None

    def steady(backend: str, order: int) -> float | None:
        row = next((d for d in rows if d["backend"] == backend and d["order"] == order), None)
        return row["seconds"][-1] if row and isinstance(row["seconds"][-1], float) else None

    if rows and first("CUDNN_ATTENTION", 0) is not None:
        later = [first("CUDNN_ATTENTION", i) for i in (1, 2, 3, 4)]
        later = [t for t in later if t is not None]
        big_c, big_f = steady("CUDNN_ATTENTION", 4), steady("FLASH_ATTENTION", 4)
        lines.append(
            f"- Attention first calls (table at the end): cuDNN's first call in a process took "
            f"{first('CUDNN_ATTENTION', 0) * 1e3:.0f} ms and every new shape after it "
            f"{statistics.median(later) * 1e3:.0f} ms (its per-shape plan); flash attention's first call "
            f"{_f(first('FLASH_ATTENTION', 0) and first('FLASH_ATTENTION', 0) * 1e3, '.0f')} ms and no per-shape cost, "
            + (f"but {big_f / big_c:.2f}× cuDNN's time at 6144 × 12288 tokens. " if big_c and big_f else "")
            + "The once-per-edit passes and the small steps therefore run flash attention (`fast_decode.attention`); "
            "a step large enough to keep cuDNN pays its first call inside the cold edit.")
    stages = doc.get("stages") or {}
    comp = (stages.get("composite_s") or {}).get("0.1")
    cold = find(doc, "scd", 0.10, True, False)
    if comp is not None and cold and cold.get("whole_edit_speedup_vs_comfy_native"):
        fixed = cold["whole_edit_s"] - cold["denoise_s"]
        lines.append(
            f"- Whole edit at 10 %: besides denoising, {fixed:.2f} s of shared stages (text {stages['text_encode_s']:.2f}, "
            f"VAE encode {stages['vae_encode_s']:.2f}, full decode {stages['vae_decode_s']:.2f}) and the pixel "
            f"composite on the {stages.get('composite_device', 'cpu')} ({comp:.2f} s, ours only, CPU IMAGEs in and "
            f"out).")
    full = find(doc, "scd", 1.00, True, False)
    if full and full.get("floor_ms"):
        lines.append(
            f"- 100 % mask: the scd step runs {full['ms_per_step']:.1f} ms against a {full['floor_ms']:.1f} ms FLOP "
            f"floor ({full['floor_ratio']:.2f}×): 6144 noisy tokens through 16 blocks attending to 12288 keys; the "
            "remainder is elementwise work (norms, AdaLN, rotary, residuals) between the matmuls.")
    return lines


def _f(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
    """Format a number, or a dash."""
    return "–" if value is None else format(value, fmt) + unit


def report(doc: dict[str, Any]) -> str:
    """docs/benchmarks.md from the JSON document (nothing else goes in)."""
    env, st, comfy = doc["environment"], doc["setting"], doc.get("comfy_native") or {}
    stages = doc.get("stages") or {}
    lines = [
        "# Edit speed as a user meets it: `sample_edit` vs ComfyUI's native LTX-2",
        "",
        f"Measured by `benchmarks/edit_speed.py` in one run on **one {env.get('card', '?')}**"
        + (f" ({env['card_memory_gb'] * 1e9 / 2 ** 30:.0f} GiB, driver {env.get('driver', '?')})"
           if env.get("card_memory_gb") else "")
        + f"; torch {env.get('torch')} (CUDA {env.get('cuda')}), diffusers {env.get('diffusers')}, Python "
        f"{env.get('python')}. Every number below comes from that run (JSON: `benchmarks.json`; this page is generated "
        "from it).",
        "",
        f"Setting: preset `{st['preset']}` with **random {st['dtype']} weights** (built on `meta`, `to_empty` on the "
        f"card), {st['frames']} frames at {st['width']}×{st['height']} → latent grid {'×'.join(map(str, st['grid']))} "
        f"= {st['tokens']} tokens, {st['text_tokens']} prompt tokens (random embeddings of the caption width, every "
        f"token valid, as LTX-2's connectors return them), {st['steps']} steps, batch 1 (CFG doubles it). The timed "
        "call is `sample_edit`, the function the EditCtrl Sampler node calls, with the node's defaults (LTX-2 σ "
        "schedule, dilation 1, the default `renoised` blend — the sampler grows the mask by "
        f"{st['sampler_dilation']} tokens, and the masks are sized so that the *edited* tokens are the stated share), "
        "`fast` on, no `compile`; mode `scd` without LoRA or adapters.",
        "",
        f"- **cold**: {st['cold']} — each cold number is its own fresh process.",
        f"- **warm**: {st['warm']}: what ComfyUI runs when only the sampler is re-queued.",
        f"- **refill**: {st['refill']} (the captured graph's buffers are refilled; encoder and prefix pass run again).",
        "- `setup` = everything before the first step (blend masks on the CPU, encoder, plan, caches, graph capture); "
        "`ms/step` = steady state between step callbacks (CFG, blend and the finiteness check included); `denoise` = "
        "the whole `sample_edit` call; `whole` = text encode + VAE encode + denoise + full VAE decode + composite.",
    ]
    warmups = [r["kernel_warmup_s"] for r in doc.get("records", []) if r.get("cold") and r.get("kernel_warmup_s")]
    if warmups:
        lines.append(f"- not in any edit: the start-up that `EditModel.edit` does once per process when the model is "
                     f"made ready (`warm_attention_kernels`: cuDNN's and flash attention's first call; "
                     f"`warm_encoder_kernels`: a one-token encoder pass, the first launch of each kernel loading its "
                     f"CUDA module), run after the model build: median {statistics.median(warmups):.3f} s.")
    lines.append("")
    if comfy.get("ms_per_step_video_only"):
        lines += [
            f"**ComfyUI {comfy['version']} native** (`comfy.ldm.lightricks.av_model.LTXAVModel`, {comfy['params_b']:.1f} B "
            f"params, `{comfy['operations']}`, attention `{comfy['attention']}`, random bf16 weights, "
            f"{comfy['video_tokens']} video + {comfy['text_tokens']} text tokens; median forward): "
            f"**{comfy['ms_per_step_video_only']:.1f} ms/step video-only**, {comfy['ms_per_step_audio_5s']:.1f} ms with "
            f"a 5 s audio latent ({comfy['audio_tokens']} tokens), {comfy['ms_per_step_video_only_masked']:.1f} ms "
            f"video-only with a noise mask (per-token timesteps, as its inpainting runs), "
            f"{comfy['ms_per_step_video_only_cfg_batch2']:.1f} ms at batch 2 (CFG). Its denoise = {st['steps']} × the "
            f"video-only forward = {comfy['denoise_s_video_only']:.2f} s ({comfy['denoise_s_cfg']:.2f} s with CFG); "
            "speed-ups below are against these (the native path gets no sampler, model-management or first-call "
            "costs, and no composite)."
            + (f" Imported with: {'; '.join(comfy['stubs'])}." if comfy.get("stubs") else
               " Imported unmodified (no stubs)."),
            "",
        ]
    elif comfy:
        lines += [f"ComfyUI native baseline: not measured ({comfy.get('error', 'tree absent')}).", ""]
    lines += [
        "## Denoise and whole edit",
        "",
        "| mode | mask | edited tokens | cold | CFG | ms/step | × floor | setup s (blend / encoder / prepare) "
        "| denoise s | vs native | whole edit s | vs native | peak GB |",
        "|---|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["records"]:
        p = r["setup_parts"]
        kind = "cold" if r["cold"] else r["kind"]
        lines.append(
            f"| {r['mode']} | {r['mask_fraction']:.0%} | {r['edit_tokens']} ({r['edit_fraction']:.1%}) | {kind} | "
            f"{'yes' if r['cfg'] else 'no'} | {r['ms_per_step']:.1f} | {_f(r.get('floor_ratio'))} | "
            f"{r['setup_s']:.3f} ({p.get('blend_s', 0):.3f} / {p.get('encoder_s', 0):.3f} / {p.get('prepare_s', 0):.3f}) "
            f"| {r['denoise_s']:.2f} | {_f(r.get('denoise_speedup_vs_comfy_native'), '.2f', '×')} | "
            f"{r['whole_edit_s']:.2f} | {_f(r.get('whole_edit_speedup_vs_comfy_native'), '.2f', '×')} | "
            f"{_f(r.get('peak_gb'), '.1f')} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    for t in doc.get("targets") or []:
        lines.append(f"| {t['target']} | {_f(t['value'], '.3f')} | "
                     f"{'–' if t['met'] is None else ('yes' if t['met'] else '**no**')} |")
    lines += findings(doc)
    if doc.get("long_clip"):
        lines += ["", "## Long clip", "",
                  "| mode | frames | grid | mask | edited tokens | setup s (blend / encoder / prepare) | ms/step "
                  "| denoise s | peak GB |",
                  "|---|---:|---|---:|---:|---|---:|---:|---:|"]
        for c in doc["long_clip"]:
            p = c["setup_parts"]
            lines.append(f"| {c['mode']} | {c['frames']} | {'×'.join(map(str, c['grid']))} | {c['mask_fraction']:.0%} | "
                         f"{c['edit_tokens']} | {c['setup_s']:.2f} ({p.get('blend_s', 0):.2f} / "
                         f"{p.get('encoder_s', 0):.2f} / {p.get('prepare_s', 0):.2f}) | {c['ms_per_step']:.1f} | "
                         f"{c['denoise_s']:.2f} | {_f(c['peak_gb'], '.1f')} |")
    if doc.get("before_after"):
        lines += ["", "## Before / after (the previous commit's editctrl_core, same run, same card)", "",
                  "| mode | mask | edit | setup s | ms/step | denoise s | after: setup s | after: ms/step "
                  "| after: denoise s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for b in doc["before_after"]:
            after = find(doc, b["mode"], b["mask_fraction"], b["cold"], b["cfg"], None if b["cold"] else b["kind"])
            lines.append(f"| {b['mode']} | {b['mask_fraction']:.0%} | {b['kind']} | {b['setup_s']:.3f} | "
                         f"{b['ms_per_step']:.1f} | {b['denoise_s']:.2f} | {_f(after and after['setup_s'], '.3f')} | "
                         f"{_f(after and after['ms_per_step'], '.1f')} | {_f(after and after['denoise_s'])} |")
    if stages:
        lines += ["", "## Shared stages (timed once, warm, added to both sides)", "",
                  f"- Text encoder: {stages.get('text_encoder')}: {stages.get('text_encode_s', 0):.3f} s.",
                  f"- VAE (real LTX-2 config, random weights): encode {stages.get('vae_encode_s', 0):.3f} s, full decode "
                  f"{stages.get('vae_decode_s', 0):.3f} s; peaks {_f(stages.get('vae_encode_peak_gb'), '.1f')} / "
                  f"{_f(stages.get('vae_decode_peak_gb'), '.1f')} GB with the VAE alone on the card (a record's peak "
                  "adds the transformer's weights to these).",
                  f"- Composite (ours only, on {stages.get('composite_device', 'cpu')}, CPU IMAGEs in and out): "
                  + ", ".join(f"{float(k):.0%} {v:.3f} s" for k, v in (stages.get("composite_s") or {}).items())
                  + ".",
                  f"- Measured bf16 matmul rate: {_f(doc.get('matmul_tflops'), '.0f')} TFLOP/s (FLOP floors = counted "
                  "FLOPs of one step on the meta device ÷ this rate)."]
    diag = doc.get("diagnostics") or {}
    if diag.get("sdpa"):
        lines += ["", "## First calls on this card (fresh process; what a cold setup is made of)", "",
                  "| attention backend | q × k tokens (32 heads × 128) | 1st call ms | 2nd ms | 3rd ms |",
                  "|---|---|---:|---:|---:|"]
        for d in diag["sdpa"]:
            cells = [f"{t * 1e3:.2f}" if isinstance(t, float) else str(t) for t in d["seconds"]]
            cells += [""] * (3 - len(cells))
            lines.append(f"| {d['backend']} | {d['q']} × {d['k']} | " + " | ".join(cells) + " |")
        mm = diag.get("matmul_new_shape_s") or []
        lines += ["", f"A 608×4096 · 4096×4096 matmul at a new shape: {', '.join(f'{t * 1e3:.2f}' for t in mm)} ms "
                  f"(1st, 2nd, 3rd); a capture of 50 such layers: {_f(diag.get('capture_50_linears_s'), '.3f')} s; "
                  f"library start-up (one small matmul, attention, convolution): {_f(diag.get('libraries_s'), '.3f')} s "
                  "(run before every cold edit, not charged to it)."]
    failed = [line.split("\n")[0].removeprefix("JOB FAILED ") for line in doc.get("log") or []
              if line.startswith("JOB FAILED")]
    if doc.get("skipped") or failed:
        lines += ["", "## Not measured in this run", ""] + [f"- {s}" for s in doc.get("skipped") or []]
        lines += [f"- failed: {f}" for f in failed]
    lines += ["", "## Notes", ""] + NOTES
    return "\n".join(lines) + "\n"


NOTES = [
    "- Cold runs each in its own child process forked from a parent that imported the modules but never used the "
    "GPU (ComfyUI also imports everything at start): the child gets a new CUDA context, builds the model, and its "
    "first edit pays every first-use cost (CUDA kernels loaded, cuBLAS/cuDNN plans, the graph capture, the "
    "allocator). In a real session the text encoder and VAE have run before the sampler, so some of those library "
    "first-use costs are paid there: these cold numbers are on the conservative side. Before its edit the child "
    "runs one small matmul, attention call and convolution at unrelated shapes (library start-up, timed in the "
    "first-calls section) — cuDNN's fused-attention engine is not among what that starts.",
    "- Warm reuses, per process, the encoder output, the prepared step's caches and its CUDA graph when the inputs "
    "are equal by value and the weights, LoRA hooks and attention switches are unchanged (`editctrl_core.edit.fast_decode."
    "StepCache`/`EncoderCache`; `EDITCTRL_STEP_CACHE=0` turns it off). With a LoRA applied by the LoRA nodes (forward "
    "hooks made anew for each sampler run) or with EditCtrl adapters attached, every edit prepares afresh: its "
    "re-queued edit costs about the refill row plus a graph capture, not the warm row.",
    "- `setup` includes the boundary blender's pixel-space masks (computed on the CPU from the full-resolution mask "
    "in `editctrl_core/edit/blend.py`), listed apart as `blend`.",
    "- Peak = the larger of the denoise peak and the transformer's weights plus the VAE's own encode/decode peak "
    "(the transformer stays resident while the VAE runs); the text encoder is freed before the transformer loads.",
    "- `× floor` = ms/step ÷ (the step's matmul + attention FLOPs counted on the meta device ÷ the measured bf16 "
    "matmul rate).",
    "- The `path` field keeps the names of the earlier benchmark: `fast` = mode scd, `training-free`, and "
    "`baseline-diffusers` = mode full (diffusers' blocks over the whole clip every step, the mask as per-token "
    "timesteps).",
]


def write_docs(doc: dict[str, Any], out: Path) -> None:
    """benchmarks.json (the document) and benchmarks.md (the report) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "benchmarks.md").write_text(report(doc))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="ltx-2.0-19b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--long-frames", type=int, default=481, help="long-clip frames (0: skip)")
    parser.add_argument("--masks", type=lambda s: tuple(float(v) for v in s.split(",")), default=MASKS)
    parser.add_argument("--cfg-masks", type=lambda s: tuple(float(v) for v in s.split(",") if v), default=CFG_MASKS,
                        help="mask fractions also measured with CFG")
    parser.add_argument("--modes", type=lambda s: tuple(s.split(",")), default=MODES)
    parser.add_argument("--text-encoder", default=None, choices=["gemma3-12b", "tiny"],
                        help="default: gemma3-12b on a GPU, tiny on the CPU")
    parser.add_argument("--comfy-dir", default=None, help="ComfyUI 0.8.0 source tree (default: search, see comfy_tree)")
    parser.add_argument("--native-repeat", type=int, default=5)
    parser.add_argument("--before", default=None, help="folder holding an older editctrl_core to compare against")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip jobs that would end past this")
    parser.add_argument("--raw", type=Path, default=None, help="write the raw child results here after every job")
    parser.add_argument("--report", type=Path, default=None, help="only rewrite --out/benchmarks.md from this JSON")
    parser.add_argument("--out", type=Path, default=None, help="folder for benchmarks.json and benchmarks.md")
    parser.add_argument("--isolation", choices=["fork", "spawn"], default="fork",
                        help="fresh processes by fork (modules imported once) or by new interpreters")
    parser.add_argument("--from-raw", type=Path, default=None, help="rebuild --out from a --raw file of a run")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.text_encoder is None:
        args.text_encoder = "gemma3-12b" if args.device == "cuda" else "tiny"
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The whole measurement (children forked from this process); writes --out and returns the document."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parent only plans: no OpenMP team before the forks (children get them all)
    cpus = os.cpu_count() or 1
    if cpus > 2 and hasattr(os, "sched_setaffinity"):
        os.environ["EDIT_SPEED_FLOPS_CORE"] = str(cpus - 1)
        threads = min(threads, cpus - 1)
    os.environ["EDIT_SPEED_CHILD_THREADS"] = str(threads)
    try:
        run = Run(args)
        doc = run.run()
    finally:
        torch.set_num_threads(threads)
    if args.out is not None:
        write_docs(doc, args.out)
    for t in doc["targets"]:
        run.say(f"target {t['target']}: {_f(t['value'], '.3f')} → {t['met']}")
    return doc


def main() -> None:
    """Parse arguments, run the measurement (or a child job, or only the report), write JSON and markdown."""
    args = parse_args()
    if args.child is not None:
        run_child_main(args.child, args.spec, args.result)
    elif args.from_raw is not None:  # rebuild the document from a run's raw child results (e.g. after a timeout)
        run = Run(args)
        raw = json.loads(args.from_raw.read_text())
        run.results, run.log = raw["results"], raw.get("log", [])
        write_docs(run.document(), args.out or ROOT / "docs")
    elif args.report is not None:
        write_docs(json.loads(args.report.read_text()), args.out or args.report.parent)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
