"""The SCD LoRA + adapters recipe on the small base (training/recipes/small_edit.py), end to end on a very small case.

A PCA-initialised `small` VAE and the seeded (untrained) small transformer stand in for the base checkpoint, and
each stage trains a few steps: this checks that the recipe writes clips the data pipeline reads, trains all three
stages through `training.train`, ships files the loaders accept (LoRA, both adapters attached to an EditModel) and
reports every mode, and writes the held-out sheet. Whether the trained weights beat the grey fill needs a trained
base (numbers in docs/oracle/small_edit_report.json: base trained on an H200, these stages on a 2-core CPU); here
they are a few steps from random, so no ordering is asserted.
"""

from __future__ import annotations

import math

import pytest
import torch

from editctrl_core.loading.models import build_transformer, load_preset, save_transformer_official
from training.recipes import base_oracle as bo
from training.recipes import small_edit as se


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory) -> tuple[dict, object]:
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("small_edit")
    preset = load_preset(bo.PRESET)
    clips = bo.synthetic_clips(list(range(4)))
    vae, _ = bo.fit_vae(preset, [c.frames for c in clips] + [c.background for c in clips], [],
                        bo.VAESettings(synthetic_clips=4, finetune_steps=0, max_patches=4000))
    checkpoint = work / "base.safetensors"
    save_transformer_official(build_transformer(preset), checkpoint, vae)
    settings = se.EditTraining(clips=3, real_windows=0, scd_steps=2, local_steps=1, global_steps=1, batch=1,
                               lora_rank=4)
    report = se.run(work / "out", work / "work", checkpoint, None, settings,
                    bo.OracleSettings(clips=1, steps=2, dilation=0), "cpu")
    return report, work


def test_recipe_reports_every_mode_and_the_vae(recipe_run) -> None:
    report, _ = recipe_run
    assert set(report["masked_psnr_db"]) == {"grey_fill", "training_free", "scd"}
    assert all(math.isfinite(v) for v in report["masked_psnr_db"].values()), report["masked_psnr_db"]
    assert {"synthetic_disc", "synthetic_square", "synthetic_background"} <= set(report["vae_psnr_db"])
    assert report["vae_psnr_db"]["synthetic_background"] > 24, report["vae_psnr_db"]
    assert "real_clip_sheet" not in report  # no real footage given
    assert report["synthetic_sheet"]["columns"] == ["source", "mask", "grey_fill", "training_free", "scd",
                                                    "background"]


def test_recipe_ships_files_the_loaders_accept(recipe_run) -> None:
    report, work = recipe_run
    out = work / "out"
    files = {kind: out / name for kind, name in se.FILES.items()}
    assert all(p.is_file() for p in files.values())
    assert set(report["files"]) == set(se.FILES.values())
    model, _ = se.edit_model(work / "base.safetensors", files, "cpu")
    assert model.scd.local is not None and model.scd.global_context is not None
    assert model.resolve_mode("auto")[0] == "scd"
    assert (out / se.REPORT).is_file()
    from PIL import Image

    with Image.open(out / se.SYNTHETIC_SHEET) as sheet:  # one row of 128x192 frames per kept clip, 6 columns
        assert sheet.size == (6 * (192 + 2) + 2, report["synthetic_sheet"]["clips"] * (128 + 2) + 2)


def test_the_recorded_run_removes_the_object_in_both_modes() -> None:
    """docs/oracle/small_edit_report.json (the run the README quotes: base trained on an H200, these stages on a CPU)
    clears issue 14's bar — masked-region PSNR at least 6 dB above the grey fill for `training_free` and `scd` on
    held-out synthetic clips — and its pictures are in docs/. A re-run that misses the bar cannot replace it."""
    import json
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs" / "oracle"
    report = json.loads((docs / "small_edit_report.json").read_text())
    psnr = report["masked_psnr_db"]
    assert psnr["training_free"] >= psnr["grey_fill"] + 6, psnr
    assert psnr["scd"] >= psnr["grey_fill"] + 6, psnr
    assert report["edit"]["clips"] >= 8 and report["edit"]["dilation"] == 0
    for key in ("grey_fill", "training_free", "scd"):  # PSNR is the mean pixel MSE's, clip by clip as recorded
        per_clip = report["per_clip_pixel_mse"][key]
        assert abs(se.psnr_db(sum(per_clip) / len(per_clip)) - psnr[key]) < 1e-6, key
    assert (docs / "small_edit_synthetic.png").is_file() and (docs / "small_edit_real.webp").is_file()
