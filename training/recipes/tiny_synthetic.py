"""Train the `tiny` preset to remove objects from synthetic clips, on a CPU, and write the small shipped weights.

    python -m training.recipes.tiny_synthetic --out weights/

1. Synthetic clips (a disc or square moving over a drifting texture; `editctrl_core.media.synthetic`), each with its
   object-removed target clip, its object mask on the latent grid and the caption "the empty textured background,
   no object".
2. Tiny VAE fit (reconstruction on random 9-frame 64x96 crops, then per-channel latent statistics): the seeded tiny
   VAE is random, so its decoded pixels are noise and an edit could not be seen in the demo. The transformer stays
   the seeded preset (only LoRA/adapters train), so the shipped checkpoint holds the seeded transformer + fitted VAE.
3. `training.train` with the same code path as any run: SCD LoRA (encoder + decoder attention), then the
   LocalContextModule, then the GlobalContextEmbedder (local frozen); mixed masks (70% object masks / 30% random).
4. Evaluation on held-out clips (:func:`evaluate_removal`): "remove the object" with the prompt describing the
   background; error = mean squared error, over the object's latent tokens, between the edited latents and the VAE
   latents of the true background, trained vs untrained (seeded transformer, no LoRA/adapters; same VAE).

Outputs in --out: editctrl_tiny.safetensors (official single-file layout: transformer + VAE; load with preset
tiny/auto), editctrl_tiny_lora.safetensors (ComfyUI-native LoRA), editctrl_tiny_local.safetensors,
editctrl_tiny_global.safetensors (adapter files), tiny_synthetic_report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from editctrl_core.edit.context import prepare_edit, to_tokens
from editctrl_core.edit.masks import pixel_mask_to_token_mask, token_mask_to_pixel_mask
from editctrl_core.loading.models import (
    build_transformer,
    build_vae,
    load_models,
    load_preset,
    save_transformer_official,
)
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.vae import decode_latents, encode_frames

log = logging.getLogger("editctrl.training")
CAPTION = "the empty textured background, no object"
FRAMES, HEIGHT, WIDTH = 17, 128, 192
EVAL_SEED = 100_000
FILES = {"checkpoint": "editctrl_tiny.safetensors", "lora": "editctrl_tiny_lora.safetensors",
         "local": "editctrl_tiny_local.safetensors", "global": "editctrl_tiny_global.safetensors"}


def fit_vae(seeds: list[int], steps: int, seed: int = 0, lr: float = 2e-3) -> torch.nn.Module:
    """Fit the tiny VAE to synthetic clips (MSE reconstruction of random crops), then set its latent statistics."""
    preset = load_preset("tiny")
    vae = build_vae(preset)
    clips = [make_clip(FRAMES, HEIGHT, WIDTH, seed=s, shape="disc" if i % 2 == 0 else "square")
             for i, s in enumerate(seeds)]
    videos = [torch.cat([c.frames, c.background]) for c in clips]
    g = torch.Generator().manual_seed(seed)
    vae.train(steps > 0)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    t0 = time.time()
    for step in range(steps):
        i = int(torch.randint(len(clips), (), generator=g))
        which = int(torch.randint(2, (), generator=g))
        frames = videos[i][which * FRAMES:(which + 1) * FRAMES]
        f0 = 8 * int(torch.randint(2, (), generator=g))
        y0 = 32 * int(torch.randint(HEIGHT // 32 - 1, (), generator=g))
        x0 = 32 * int(torch.randint(WIDTH // 32 - 2, (), generator=g))
        crop = frames[f0:f0 + 9, y0:y0 + 64, x0:x0 + 96]
        x = crop.permute(3, 0, 1, 2)[None] * 2 - 1
        z = vae.encode(x).latent_dist.mode()
        z = z + 0.05 * z.detach().std() * torch.randn(z.shape, generator=g)
        loss = (vae.decode(z).sample - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d loss %.4f (%.0fs)", step + 1, steps, loss.item(), time.time() - t0)
    vae.eval()
    with torch.no_grad():
        raw = torch.cat([vae.encode(v[:FRAMES].permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()
                         for v in videos[:16]])
        vae.latents_mean.copy_(raw.mean(dim=(0, 2, 3, 4)))
        vae.latents_std.copy_(raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))
    return vae


def recipe_config(work: Path, clips: int, steps: tuple[int, int, int], seed: int) -> dict:
    """The training config of the recipe (same schema as training/configs/*.yaml)."""
    scd_steps, local_steps, global_steps = steps
    every = max(50, sum(steps) // 4)
    return {
        "model": {"preset": "tiny", "vae_weights": str(work / "vae.safetensors")},
        "data": {"clips": str(work / "clips"), "cache_dir": str(work / "cache"), "frames": FRAMES, "height": HEIGHT,
                 "width": WIDTH,
                 "synthetic": {"count": clips, "frames": FRAMES, "height": HEIGHT, "width": WIDTH, "seed": seed,
                               "caption": CAPTION, "with_targets": True}},
        "masks": {"mode": "mixed", "semantic_mask_ratio": 0.7, "min_area": 0.05, "max_area": 0.4,
                  "semantic_mask_dir": str(work / "object_masks")},
        "train": {"seed": seed, "batch_size": 1, "grad_accum": 1, "lr_scheduler": "cosine", "warmup_steps": 20,
                  "context_frame_ratio": 0.1, "encoder_noise": 0.05, "cpu_threads": 1, "max_grad_norm": 1.0},
        "output": {"dir": str(work / "run"), "checkpoint_every": every, "keep_checkpoints": 1,
                   "debug_image_every": every, "tensorboard": True},
        "stages": [
            {"name": "scd", "steps": scd_steps, "lr": 2e-3, "decoder_lr_mult": 2.0,
             "lora": {"rank": 8, "alpha": 8, "encoder": True}},
            {"name": "editctrl_local", "steps": local_steps, "lr": 1e-3,
             "local": {"width": 64, "num_blocks": 2, "heads": 4, "head_dim": 16, "target_every": 1}},
            {"name": "editctrl_global", "steps": global_steps, "lr": 2e-3,
             "global_context": {"max_tokens": 128, "heads": 2, "head_dim": 16}},
        ],
    }


def _edit_models(checkpoint: Path, weights: dict[str, Path] | None):
    """(SCDModel, VAE, text encoder, LoRA patch context) for the shipped checkpoint, trained or untrained."""
    import contextlib

    from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
    from editctrl_core.edit.adapters import load_adapter
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.loading.lora import apply_loras, read_lora

    loaded = load_models(checkpoint, "auto")
    preset = loaded.preset
    scd = SCDModel(loaded.transformer, SCDOptions(split_layer=preset.split_layer))
    patch = contextlib.nullcontext()
    if weights is not None:
        scd.attach(load_adapter(weights["local"], preset.model_id, preset.split_layer),
                   load_adapter(weights["global"], preset.model_id, preset.split_layer))
        patch = apply_loras(loaded.transformer, [(read_lora(weights["lora"]), 1.0)])
    return scd, loaded.vae, build_tiny_text_encoder(), patch


def evaluate_removal(weights_dir: str | Path, clips: int = 8, steps: int = 8, seed: int = EVAL_SEED) -> dict:
    """Masked-region error of "remove the object" on held-out clips, trained weights vs the untrained tiny model.

    Latent space (primary): MSE over the object's tokens between the edited latents and the VAE latents of the true
    background. Pixel space (reported): MSE inside the object's pixel mask between the decoded edit and the true
    background frames. Both models use the same (shipped) VAE, so the comparison isolates the transformer weights.
    """
    from editctrl_core.edit.sampler import SamplerSettings, sample_edit

    torch.set_num_threads(1)
    weights_dir = Path(weights_dir)
    paths = {k: weights_dir / v for k, v in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing weights {missing}; run python -m training.recipes.tiny_synthetic --out "
                                f"{weights_dir}")
    results = {}
    for name, weights in (("untrained", None), ("trained", paths)):
        scd, vae, text, patch = _edit_models(paths["checkpoint"], weights)
        prompt = text.encode([CAPTION])
        lat, pix = [], []
        with patch:
            for i in range(clips):
                clip = make_clip(FRAMES, HEIGHT, WIDTH, seed=seed + i, shape="disc" if i % 2 == 0 else "square")
                tokens = pixel_mask_to_token_mask(clip.mask)
                mask = token_mask_to_pixel_mask(tokens, FRAMES)
                ctx = prepare_edit(vae, clip.frames, mask)
                out = sample_edit(scd, ctx, prompt, None, SamplerSettings(steps=steps, seed=seed + i, cfg=1.0))
                truth = encode_frames(vae, clip.background)
                sel = ctx.token_mask.flatten()
                lat.append(float((to_tokens(out.latents)[0, sel] - to_tokens(truth)[0, sel]).pow(2).mean()))
                frames = decode_latents(vae, out.latents)
                inside = clip.mask > 0.5
                pix.append(float((frames[inside] - clip.background[inside]).pow(2).mean()))
        results[name] = {"latent_mse": sum(lat) / len(lat), "pixel_mse": sum(pix) / len(pix),
                         "latent_mse_per_clip": lat, "pixel_mse_per_clip": pix}
    for space in ("latent_mse", "pixel_mse"):
        results[f"{space}_reduction"] = 1.0 - results["trained"][space] / results["untrained"][space]
    results["clips"], results["steps"], results["seed"] = clips, steps, seed
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the whole recipe and write the weights + report into --out."""
    from training.config import config_from_dict
    from training.train import Trainer

    parser = argparse.ArgumentParser(prog="python -m training.recipes.tiny_synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="weights", help="folder for the shipped weight files")
    parser.add_argument("--work", default="runs/tiny_synthetic_recipe", help="scratch folder (clips, cache, run)")
    parser.add_argument("--clips", type=int, default=48, help="training clips")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--scd-steps", type=int, default=1200)
    parser.add_argument("--local-steps", type=int, default=600)
    parser.add_argument("--global-steps", type=int, default=1500)
    parser.add_argument("--eval-clips", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    start = time.time()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log.info("1/4 fitting the tiny VAE (%d steps)", args.vae_steps)
    vae = fit_vae(list(range(args.seed, args.seed + args.clips)), args.vae_steps, args.seed)
    from editctrl_core.loading.weights_file import save_safetensors

    save_safetensors(work / "vae.safetensors", vae.state_dict())
    save_transformer_official(build_transformer(load_preset("tiny")), out / FILES["checkpoint"], vae)
    vae_seconds = time.time() - start
    log.info("2/4 training (SCD LoRA, local, global)")
    cfg = config_from_dict(recipe_config(work, args.clips, (args.scd_steps, args.local_steps, args.global_steps),
                                         args.seed))
    result = Trainer(cfg, resume="none").run()
    for kind in ("lora", "local", "global"):
        shutil.copyfile(result.files[kind], out / FILES[kind])
    train_seconds = time.time() - start - vae_seconds
    log.info("3/4 evaluating on %d held-out clips", args.eval_clips)
    report = evaluate_removal(out, args.eval_clips)
    report.update({"vae_fit_seconds": round(vae_seconds, 1), "train_seconds": round(train_seconds, 1),
                   "total_seconds": round(time.time() - start, 1), "args": vars(args),
                   "final_losses": result.losses[-20:], "vae_reconstruction_mse": _vae_reconstruction(vae)})
    (out / "tiny_synthetic_report.json").write_text(json.dumps(report, indent=1))
    log.info("4/4 done in %.0f s: latent masked-region MSE %.4f -> %.4f (%.0f%% lower), pixel %.4f -> %.4f "
             "(%.0f%% lower); weights in %s", report["total_seconds"], report["untrained"]["latent_mse"],
             report["trained"]["latent_mse"], 100 * report["latent_mse_reduction"], report["untrained"]["pixel_mse"],
             report["trained"]["pixel_mse"], 100 * report["pixel_mse_reduction"], out)
    return 0


def _vae_reconstruction(vae: torch.nn.Module) -> float:
    """Pixel MSE of encode→decode on one held-out clip (how good the fitted VAE is)."""
    clip = make_clip(FRAMES, HEIGHT, WIDTH, seed=EVAL_SEED + 999)
    return float((decode_latents(vae, encode_frames(vae, clip.frames)) - clip.frames).pow(2).mean())


if __name__ == "__main__":
    sys.exit(main())
