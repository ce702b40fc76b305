"""CFG's negative branch is unconditional all the way through, and RoPE's frame rate is the clip's (issue 12, 2/10)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from training_support import tiny_config

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.context import EditContext
from editctrl_core.edit.fast_decode import ENCODER_CACHE, STEP_CACHE
from editctrl_core.edit.geometry import grid_for
from editctrl_core.edit.masks import token_mask_to_pixel_mask
from editctrl_core.edit.sampler import SamplerSettings, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.models import build_transformer, build_vae, load_preset
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import write_video
from training.data import CachedDataset, Encoders, ShapeRule, discover_clips, precompute

PRESET = load_preset("tiny")
GRID = (3, 4, 5)
#: Every mode that runs CFG, on the cached fast path and the reference blocks; scd also window by window.
CFG_PATHS = [("scd", True, 0), ("scd", False, 0), ("scd", False, 1), ("training_free", True, 0),
             ("training_free", False, 0), ("training_free", True, 1), ("full", False, 0)]


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = build_transformer(PRESET)
    enc = build_tiny_text_encoder()
    return model, enc


def _context(fps: float = 24.0) -> EditContext:
    f, h, w = GRID
    frames = (f - 1) * 8 + 1
    gen = torch.Generator().manual_seed(4)
    src = torch.randn(1, PRESET.transformer["in_channels"], f, h, w, generator=gen)
    tok = torch.zeros(GRID, dtype=torch.bool)
    tok[:, 1:3, 1:4] = True
    background = torch.where(tok[None, None], torch.zeros_like(src), src)
    return EditContext(torch.zeros(frames, h * 32, w * 32, 3), token_mask_to_pixel_mask(tok, frames), src,
                       background, tok, grid_for(frames, h * 32, w * 32), fps=fps)


def _scd(model) -> SCDModel:
    return SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))


def _settings(mode: str, fast: bool, window: int, cfg: float = 0.0) -> SamplerSettings:
    """cfg 0 without rescale: the guided velocity is exactly the unconditional one."""
    return SamplerSettings(steps=2, seed=1, cfg=cfg, guidance_rescale=0.0, mode=mode, fast=fast, blend=None,
                           scheduler="linear", window_frames=window, dilation=0)


@pytest.mark.parametrize("mode,fast,window", CFG_PATHS)
def test_negative_branch_of_a_cfg_step_is_a_run_with_the_negative_prompt_alone(parts, mode, fast, window):
    model, enc = parts
    positive, negative = enc.encode(["a red ball on the grass"]), enc.encode(["blurry"])
    ctx = _context()
    guided = sample_edit(_scd(model), ctx, positive, negative, _settings(mode, fast, window)).latents
    alone = sample_edit(_scd(model), ctx, negative, None, _settings(mode, fast, window, cfg=1.0)).latents
    with_positive = sample_edit(_scd(model), ctx, positive, None, _settings(mode, fast, window, cfg=1.0)).latents
    assert not torch.allclose(alone, with_positive, atol=1e-3), "the prompts must matter for this test to mean much"
    assert torch.allclose(guided, alone, atol=2e-5), (guided - alone).abs().max()


@pytest.mark.parametrize("mode", ["scd", "training_free"])
def test_cached_edits_follow_a_new_negative_prompt(parts, monkeypatch, mode):
    """The per-process encoder and step caches are checked by value: another negative prompt is another edit."""
    model, enc = parts
    monkeypatch.setattr(STEP_CACHE, "on_cpu", True)
    STEP_CACHE.clear()
    ENCODER_CACHE.clear()
    positive, first, second = enc.encode(["a red ball"]), enc.encode(["blurry"]), enc.encode(["dark, noisy"])
    ctx, scd = _context(), _scd(model)
    settings = _settings(mode, True, 0)
    sample_edit(scd, ctx, positive, first, settings)
    cached = sample_edit(scd, ctx, positive, second, settings).latents
    STEP_CACHE.clear()
    ENCODER_CACHE.clear()
    monkeypatch.setattr(STEP_CACHE, "on_cpu", False)
    fresh = sample_edit(_scd(model), ctx, second, None, _settings(mode, True, 0, cfg=1.0)).latents
    assert torch.allclose(cached, fresh, atol=2e-5), (cached - fresh).abs().max()


def test_rope_coordinates_follow_the_frame_rate_as_diffusers_computes_them(parts):
    """Our coordinates are diffusers' LTX-2 `prepare_video_coords(..., fps)`; 30 fps puts the frames 24/30 as far
    apart in time as 24 fps (space unchanged), so the rotary tables differ."""
    model, _ = parts
    stack = _scd(model).stack
    at_30 = stack.video_coords(GRID, 1, 30.0)
    at_24 = stack.video_coords(GRID, 1, 24.0)
    assert torch.equal(at_30, model.rope.prepare_video_coords(1, *GRID, "cpu", fps=30.0))
    assert torch.equal(at_30[:, 1:], at_24[:, 1:])
    assert torch.allclose(at_30[:, 0] * 30.0, at_24[:, 0] * 24.0)
    assert not torch.allclose(at_30[:, 0], at_24[:, 0])
    assert not torch.allclose(stack.rope(at_30)[0], stack.rope(at_24)[0])


@pytest.mark.parametrize("mode,fast,window", CFG_PATHS)
def test_an_edit_of_a_30_fps_clip_uses_its_frame_rate_everywhere(parts, monkeypatch, mode, fast, window):
    model, enc = parts
    seen: list[float] = []
    original = model.rope.prepare_video_coords

    def spy(*args, fps: float = 24.0, **kwargs):
        seen.append(fps)
        return original(*args, fps=fps, **kwargs)

    monkeypatch.setattr(model.rope, "prepare_video_coords", spy)
    positive, negative = enc.encode(["a red ball"]), enc.encode([""])
    at_30 = sample_edit(_scd(model), _context(30.0), positive, negative, _settings(mode, fast, window, 3.0)).latents
    assert seen and set(seen) == {30.0}
    at_24 = sample_edit(_scd(model), _context(24.0), positive, negative, _settings(mode, fast, window, 3.0)).latents
    assert not torch.allclose(at_30, at_24)


def test_training_samples_carry_the_clip_frame_rate_to_the_model(tmp_path: Path, monkeypatch):
    """precompute records the clip's fps (divided by the frame stride); the training step's RoPE uses it."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "thirty.mp4", make_clip(17, 64, 96, seed=0).frames, fps=30)
    (clips / "thirty.txt").write_text("a disc")
    enc = Encoders(build_vae(PRESET), build_tiny_text_encoder(), "tiny-test")
    files, _ = precompute(discover_clips(clips), ShapeRule(frames=9, height=64, width=96, frame_stride=2), enc,
                          tmp_path / "cache", progress=False)
    assert CachedDataset(files)[0].fps == pytest.approx(15.0)

    from training.train import Trainer

    trainer = Trainer(tiny_config(tmp_path / "run", data_dir=tmp_path / "data"), resume="none", quiet=True)
    module = trainer.module
    module.prepare_stage(0)
    sample = replace(trainer.dataset[0], fps=30.0)
    seen: list[float] = []
    rope = module.scd.stack.model.rope
    original = rope.prepare_video_coords

    def spy(*args, fps: float = 24.0, **kwargs):
        seen.append(fps)
        return original(*args, fps=fps, **kwargs)

    monkeypatch.setattr(rope, "prepare_video_coords", spy)
    with torch.no_grad():
        module.sample_loss(sample, 0)
    assert seen and set(seen) == {30.0}
