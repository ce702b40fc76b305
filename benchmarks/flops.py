"""Per-step FLOPs of the edit path (SCD decoder + LocalContextModule + global-context branches) versus the mask size.

Counts matrix products, convolutions and attention with ``torch.utils.flop_counter.FlopCounterMode`` (elementwise
work is not counted). Two configurations:

- ``tiny``: the tiny preset with real (seeded) weights, run on the CPU;
- ``ltx-2.0-19b``: the real 19B architecture and the seed's default adapter sizes built on the ``meta`` device (no
  memory, no arithmetic: the counter reads shapes), 121 frames at 768×512 → latent grid 16×16×24 = 6144 tokens,
  1024 prompt tokens.

For each mask fraction (5/10/25/50/100 % of the latent tokens, a compact blob in every latent frame) it reports the
per-step FLOPs of ``SCDModel.decode`` with both adapters attached (and the share of the adapters), the ratio to the
100 % mask and to one full-model step, the once-per-edit costs (SCD encoder, adapter plan), and the per-step FLOPs of
the one-way-prefix cached decoder of :mod:`editctrl_core.edit.fast_decode`. Writes ``docs/flops.json`` and
``docs/flops.md``.

    .venv/bin/python benchmarks/flops.py            # both presets, writes docs/
    .venv/bin/python benchmarks/flops.py --tiny     # tiny only, prints (writes nothing)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from editctrl_core.conditioning.text import TextConditioning  # noqa: E402
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder  # noqa: E402
from editctrl_core.edit.adapters import (  # noqa: E402
    GlobalContextConfig,
    GlobalContextEmbedder,
    LocalContextConfig,
    LocalContextModule,
)
from editctrl_core.edit.context import global_size, to_tokens  # noqa: E402
from editctrl_core.edit.fast_decode import FastDecoder  # noqa: E402
from editctrl_core.edit.scd import SCDModel, SCDOptions  # noqa: E402
from editctrl_core.loading.models import Preset, build_transformer, build_vae, load_preset  # noqa: E402
from editctrl_core.media.vae_tiles import DEFAULT_HALO_TOKENS, edit_box, grow  # noqa: E402

MASK_FRACTIONS = (0.05, 0.10, 0.25, 0.50, 1.00)
STEPS = 30
DOCS = ROOT / "docs"
TINY_GRID = (5, 8, 12)
REAL_GRID = (16, 16, 24)
REAL_FRAMES, REAL_HEIGHT, REAL_WIDTH = 121, 512, 768
REAL_TEXT_TOKENS = 1024


def blob_mask(grid: tuple[int, int, int], fraction: float) -> torch.Tensor:
    """Token mask [f,h,w]: in every latent frame the round(fraction·h·w) cells nearest the centre (a compact blob)."""
    f, h, w = grid
    k = max(1, min(h * w, round(fraction * h * w)))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    d = (ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2
    order = torch.argsort(d.flatten() * (h * w) + torch.arange(h * w), stable=True)
    plane = torch.zeros(h * w, dtype=torch.bool)
    plane[order[:k]] = True
    return plane.view(1, h, w).expand(f, h, w).clone()


def count(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (attention through the math backend so the CPU counts it too)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return int(counter.get_total_flops())


def tiny_adapters(preset: Preset) -> tuple[LocalContextModule, GlobalContextEmbedder]:
    """Adapters scaled to the tiny preset (local: 2 blocks, every second decoder block; global: every block)."""
    t = preset.transformer
    inner = t["num_attention_heads"] * t["attention_head_dim"]
    dec = t["num_layers"] - preset.split_layer
    torch.manual_seed(0)
    local = LocalContextModule(LocalContextConfig(in_channels=t["in_channels"] + 1, width=16, num_blocks=2, heads=2,
                                                  head_dim=8, text_dim=inner, model_dim=inner,
                                                  target_blocks=tuple(range(0, dec, 2))))
    glob = GlobalContextEmbedder(GlobalContextConfig(in_channels=t["in_channels"] + 1, model_dim=inner, max_tokens=16,
                                                     heads=2, head_dim=16, target_blocks=tuple(range(dec))))
    return local, glob


def _config(module: torch.nn.Module) -> dict[str, Any]:
    """JSON-ready adapter config."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(module.config).items()}


def _setup(name: str) -> dict[str, Any]:
    """Model with both adapters attached, prompt and background for one preset (tiny: CPU, others: meta)."""
    preset = load_preset(name)
    real = name != "tiny"
    grid = REAL_GRID if real else TINY_GRID
    channels = preset.transformer["in_channels"]
    if real:
        model = build_transformer(preset, empty=True)
        local, glob = LocalContextModule(device="meta"), GlobalContextEmbedder(device="meta")
        text = TextConditioning(torch.zeros(1, REAL_TEXT_TOKENS, preset.transformer["caption_channels"],
                                            device="meta"), None)
        background = torch.zeros(1, channels, *grid, device="meta")
    else:
        model = build_transformer(preset)
        local, glob = tiny_adapters(preset)
        text = build_tiny_text_encoder().encode(["a red boat drifting on a calm lake"])
        background = torch.randn(1, channels, *grid, generator=torch.Generator().manual_seed(0))
    scd = SCDModel(model, SCDOptions(split_layer=preset.split_layer))
    scd.attach(local, glob)
    with torch.no_grad():
        context = scd.encode(to_tokens(background), grid, text)
    return {"preset": preset, "real": real, "grid": grid, "channels": channels, "model": model, "scd": scd,
            "text": text, "background": background, "context": context, "local": local, "global": glob}


def _global_input(setup: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
    """A global-context input of the shape the edit context builds (9 frames at ~256 px, plus the mask channel)."""
    f, h, w = setup["grid"]
    lh, lw = (n // 32 for n in global_size(32 * h, 32 * w))
    shape = (1, setup["channels"] + 1, 1 + (min(9, 8 * (f - 1) + 1) - 1) // 8, lh, lw)
    if setup["real"]:
        return torch.zeros(shape, device="meta")
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def step_flops(setup: dict[str, Any], fraction: float, extras: bool = True) -> dict[str, Any]:
    """Per-step FLOPs at one mask fraction (with `extras`: plan, decoder-only and one-way cached counts too)."""
    scd, grid, channels = setup["scd"], setup["grid"], setup["channels"]
    mask = blob_mask(grid, fraction)
    index = mask.flatten().nonzero().squeeze(1)
    n = index.numel()
    x = torch.zeros(1, n, channels, device="meta") if setup["real"] else torch.randn(1, n, channels)
    sigma = torch.tensor([0.5])
    holder: dict[str, Any] = {}
    glob_in = _global_input(setup, mask)
    plan_flops = count(lambda: holder.setdefault("plan", scd.plan(index, setup["context"], grid, setup["text"],
                                                                     background=setup["background"], edit_mask=mask,
                                                                     global_input=glob_in)))
    plan = holder["plan"]
    row: dict[str, Any] = {"mask_fraction": fraction, "tokens": n, "actual_fraction": n / mask.numel(),
                           "step_flops": count(lambda: scd.decode(plan, x, sigma))}
    if not extras:
        return row
    attached = (scd.local, scd.global_context)
    scd.local, scd.global_context = None, None
    try:
        row["decoder_flops"] = count(lambda: scd.decode(plan, x, sigma))
    finally:
        scd.local, scd.global_context = attached
    row["adapter_flops"] = row["step_flops"] - row["decoder_flops"]
    row["plan_flops"] = plan_flops
    row["one_way_setup_flops"] = count(lambda: holder.setdefault("fast", FastDecoder(scd, plan, one_way_prefix=True)))
    row["one_way_step_flops"] = count(lambda: holder["fast"](x, sigma))
    return row


def measure(name: str, fractions: tuple[float, ...] = MASK_FRACTIONS) -> dict[str, Any]:
    """All FLOP counts for one preset ('tiny' on the CPU, anything else on the meta device)."""
    setup = _setup(name)
    preset, scd, grid, text, background = (setup[k] for k in ("preset", "scd", "grid", "text", "background"))
    plain = SCDModel(setup["model"], SCDOptions(split_layer=preset.split_layer, causal=False, shift=False,
                                                concat=False))
    tokens = grid[0] * grid[1] * grid[2]
    full_x = to_tokens(background)
    baseline = count(lambda: plain.forward_split(full_x, torch.tensor([0.5]), grid, text))
    encoder = count(lambda: scd.encode(to_tokens(background), grid, text))
    rows = [step_flops(setup, fraction) for fraction in fractions]
    full = rows[-1]["step_flops"]
    full_one_way = rows[-1]["one_way_step_flops"]
    for r in rows:
        r["ratio_to_full_mask"] = r["step_flops"] / full
        r["ratio_to_baseline_step"] = r["step_flops"] / baseline
        r["one_way_ratio_to_full_mask"] = r["one_way_step_flops"] / full_one_way
        r["edit_flops"] = encoder + r["plan_flops"] + STEPS * r["step_flops"]
        r["edit_ratio_to_baseline"] = r["edit_flops"] / (STEPS * baseline)
        r["one_way_edit_flops"] = encoder + r["plan_flops"] + r["one_way_setup_flops"] + STEPS * r["one_way_step_flops"]
        r["one_way_edit_ratio_to_baseline"] = r["one_way_edit_flops"] / (STEPS * baseline)
    out = {
        "preset": name, "device": "meta" if setup["real"] else "cpu", "grid": list(grid), "tokens": tokens,
        "text_tokens": int(text.embeds.shape[1]), "split_layer": preset.split_layer,
        "num_layers": preset.transformer["num_layers"], "steps": STEPS,
        "local_context": _config(setup["local"]), "global_context": _config(setup["global"]),
        "baseline_step_flops": baseline, "encoder_flops": encoder, "masks": rows,
    }
    if setup["real"]:
        out["vae"] = vae_flops(preset, grid)
    return out


def vae_flops(preset: Preset, grid: tuple[int, int, int]) -> dict[str, Any]:
    """VAE FLOPs at 121×768×512 (meta): full encode, full decode, and local decode of each mask's box + halo."""
    vae = build_vae(preset, empty=True)
    pixels = torch.zeros(1, 3, REAL_FRAMES, REAL_HEIGHT, REAL_WIDTH, device="meta")
    latents = torch.zeros(1, preset.vae["latent_channels"], *grid, device="meta")
    out: dict[str, Any] = {
        "encode_flops": count(lambda: vae.encode(pixels)),
        "decode_flops": count(lambda: vae.decode(latents)),
        "halo_tokens": DEFAULT_HALO_TOKENS, "local_decode": [],
    }
    for fraction in MASK_FRACTIONS:
        crop = grow(edit_box(blob_mask(grid, fraction)), DEFAULT_HALO_TOKENS, grid[1], grid[2])
        part = latents[..., crop.y0:crop.y1, crop.x0:crop.x1]
        flops = count(lambda part=part: vae.decode(part))
        out["local_decode"].append({"mask_fraction": fraction, "box": [crop.y0, crop.y1, crop.x0, crop.x1],
                                    "area_fraction": crop.area / (grid[1] * grid[2]), "decode_flops": flops})
    return out


def _t(flops: float) -> str:
    """TFLOP with sensible precision (GFLOP/MFLOP for small numbers)."""
    if flops >= 1e12:
        return f"{flops / 1e12:.2f} T"
    if flops >= 1e9:
        return f"{flops / 1e9:.2f} G"
    return f"{flops / 1e6:.2f} M"


def table(result: dict[str, Any]) -> str:
    """Markdown table of one preset's per-step FLOPs."""
    lines = [
        "| mask | tokens | per-step FLOPs (decoder + adapters) | of which adapters | ratio to 100% | ratio to full step "
        "| one-way cached step | ratio to 100% | edit (30 steps) / baseline | one-way edit / baseline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["masks"]:
        lines.append(
            f"| {r['mask_fraction']:.0%} | {r['tokens']} | {_t(r['step_flops'])} | {_t(r['adapter_flops'])} "
            f"| {r['ratio_to_full_mask']:.3f} | {r['ratio_to_baseline_step']:.3f} | {_t(r['one_way_step_flops'])} "
            f"| {r['one_way_ratio_to_full_mask']:.3f} | {r['edit_ratio_to_baseline']:.3f} "
            f"| {r['one_way_edit_ratio_to_baseline']:.3f} |")
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    """Markdown section for one preset: setting, once-per-edit costs, the table."""
    g = result["grid"]
    lines = [
        f"### {result['preset']} ({'meta device, shapes only' if result['device'] == 'meta' else 'real run on CPU'})",
        "",
        f"Latent grid {g[0]}×{g[1]}×{g[2]} = {result['tokens']} tokens, {result['text_tokens']} prompt tokens, "
        f"split at {result['split_layer']}/{result['num_layers']} blocks. Local context module: "
        f"{result['local_context']['num_blocks']} blocks × {result['local_context']['width']} "
        f"({result['local_context']['heads']}×{result['local_context']['head_dim']} heads), residuals at decoder "
        f"blocks {result['local_context']['target_blocks']}; global context: ≤ {result['global_context']['max_tokens']} "
        f"tokens, branches at decoder blocks {result['global_context']['target_blocks']}.",
        "",
        f"- full-model step (all {result['num_layers']} blocks over all {result['tokens']} tokens): "
        f"**{_t(result['baseline_step_flops'])}FLOP**",
        f"- SCD encoder, once per edit ({result['split_layer']} blocks over all tokens, frame-causal): "
        f"**{_t(result['encoder_flops'])}FLOP**",
        f"- adapter plan, once per edit (global context + branch K/V), at 10%: "
        f"{_t(result['masks'][1]['plan_flops'])}FLOP",
        "",
        table(result),
    ]
    if "vae" in result:
        v = result["vae"]
        lines += ["", f"VAE at {REAL_FRAMES} frames × {REAL_WIDTH}×{REAL_HEIGHT}: encode {_t(v['encode_flops'])}FLOP, "
                  f"full decode {_t(v['decode_flops'])}FLOP; local decode (edit box + {v['halo_tokens']}-token halo): "
                  + ", ".join(f"{d['mask_fraction']:.0%} → {_t(d['decode_flops'])}FLOP "
                              f"({d['area_fraction']:.0%} of the frame)" for d in v["local_decode"]) + "."]
    return "\n".join(lines)


MD_HEAD = """# Per-step FLOPs of the edit path

Generated by `benchmarks/flops.py` (`torch.utils.flop_counter.FlopCounterMode`: matrix products, convolutions and
attention; elementwise work is not counted). **Per-step FLOPs** = one `SCDModel.decode` call with the
LocalContextModule and the GlobalContextEmbedder attached: the 16 (tiny: 2) decoder blocks over the selected tokens
*and* their encoder-context prefix (token concat: 2·n tokens; the one-way prefix attends only to itself), the local
module over the n selected tokens (its AdaLN recomputed at the step's σ) and the global-context cross-attention
branches: the reference path, which recomputes the prefix every call. The mask is a compact blob covering the given
fraction of every latent frame (the decoder's token count is the dilated mask; here the blob *is* that mask).

*One-way cached step*: `editctrl_core.edit.fast_decode.FastDecoder` (what the sampler runs) — the prefix's keys/values are
computed once per edit, so each step runs the decoder blocks on the n noisy tokens only. *Edit / baseline*: (encoder +
plan [+ prefix pass] + 30 steps) ÷ 30 full-model steps.
"""


def markdown(results: list[dict[str, Any]]) -> str:
    """The whole docs/flops.md text."""
    return MD_HEAD + "\n" + "\n\n".join(summary(r) for r in results) + "\n"


def main() -> None:
    """Count, print, and (unless --tiny) write docs/flops.json and docs/flops.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny preset only; print, write nothing")
    args = parser.parse_args()
    names = ["tiny"] if args.tiny else ["tiny", "ltx-2.0-19b"]
    results = []
    for name in names:
        t0 = time.time()
        result = measure(name)
        results.append(result)
        print(summary(result))
        print(f"({name}: counted in {time.time() - t0:.1f} s)\n")
    if args.tiny:
        return
    DOCS.mkdir(exist_ok=True)
    meta = {"generated_by": "benchmarks/flops.py", "torch": torch.__version__,
            "counter": "torch.utils.flop_counter.FlopCounterMode", "mask_fractions": list(MASK_FRACTIONS)}
    (DOCS / "flops.json").write_text(json.dumps({**meta, "presets": {r["preset"]: r for r in results}}, indent=1)
                                     + "\n")
    (DOCS / "flops.md").write_text(markdown(results))
    print(f"wrote {DOCS / 'flops.json'} and {DOCS / 'flops.md'}")


if __name__ == "__main__":
    main()
