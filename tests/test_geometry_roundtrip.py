"""Any clip geometry round-trips through a whole edit (pad → encode → sample → decode → crop → composite), and
non-finite inputs or velocities stop the edit with an error naming them instead of returning a black region."""

from __future__ import annotations

import pytest
import torch

from editctrl_core.checks import NonFiniteError
from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.blend import BlendSettings, composite, feather_mask
from editctrl_core.edit.context import prepare_edit
from editctrl_core.edit.sampler import Region, SamplerSettings, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.models import build_transformer, build_vae, load_preset
from editctrl_core.media.vae import decode_latents

PRESET = load_preset("tiny")
FEATHER = 4.0


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    scd = SCDModel(build_transformer(PRESET), SCDOptions(split_layer=PRESET.split_layer))
    enc = build_tiny_text_encoder()
    return scd, build_vae(PRESET), enc.encode(["a calm lake"]), enc.encode([""])


def _border_masks(f: int, h: int, w: int) -> dict[str, torch.Tensor]:
    """Masks that touch each border of the frame (a strip a quarter deep), plus one covering every pixel."""
    masks = {}
    for side in ("top", "bottom", "left", "right", "all"):
        m = torch.zeros(f, h, w)
        dh, dw = max(1, h // 4), max(1, w // 4)
        if side == "top":
            m[:, :dh] = 1
        elif side == "bottom":
            m[:, h - dh:] = 1
        elif side == "left":
            m[:, :, :dw] = 1
        elif side == "right":
            m[:, :, w - dw:] = 1
        else:
            m[:] = 1
        masks[side] = m
    return masks


def _edit(parts, frames: torch.Tensor, mask: torch.Tensor, **settings) -> tuple[torch.Tensor, object]:
    scd, vae, positive, negative = parts
    ctx = prepare_edit(vae, frames, mask)
    result = sample_edit(scd, ctx, positive, negative, SamplerSettings(steps=2, seed=1, **settings))
    return result.crop(decode_latents(vae, result.latents)), ctx


@pytest.mark.parametrize("shape", [(1, 35, 37), (2, 40, 33), (20, 33, 64), (11, 64, 70)])
def test_any_shape_comes_back_with_its_own_frames_and_size_and_the_source_outside(parts, shape):
    f, h, w = shape
    frames = torch.rand(f, h, w, 3)
    for side, mask in _border_masks(f, h, w).items():
        decoded, ctx = _edit(parts, frames, mask)
        assert decoded.shape == frames.shape, side
        assert ctx.crop(ctx.frames).shape == frames.shape and torch.equal(ctx.crop(ctx.frames), frames)
        out = composite(decoded, frames, mask, FEATHER)
        beyond = feather_mask(mask, FEATHER) == 0
        assert torch.equal(out[beyond], frames[beyond]), side
        if side == "all":
            assert not bool(beyond.any())
        assert not torch.equal(out[mask > 0.5], frames[mask > 0.5]), f"{side}: the masked pixels must be edited"
        assert ctx.padding.describe() == "" or f"{f} frames at {h}x{w}" in ctx.padding.describe()


def test_a_valid_shape_is_not_padded_and_the_notes_say_only_the_grid(parts):
    frames, mask = torch.rand(9, 64, 64, 3), torch.zeros(9, 64, 64)
    mask[:, :20, :20] = 1
    _, ctx = _edit(parts, frames, mask)
    assert ctx.padding.is_identity and torch.equal(ctx.frames, frames)
    assert ctx.notes == ["9 frames at 64x64 -> latent grid 2x2x2 (8 tokens); the mask covers 2 tokens (25.0%)"]


def test_an_empty_mask_says_so_and_returns_the_source_latents(parts):
    scd, vae, positive, negative = parts
    ctx = prepare_edit(vae, torch.rand(3, 40, 50, 3), torch.zeros(3, 40, 50))
    assert any("mask is empty" in note for note in ctx.notes)
    assert any("padded 3 frames at 40x50" in note for note in ctx.notes)
    result = sample_edit(scd, ctx, positive, negative, SamplerSettings(steps=2))
    assert result.decoder_calls == 0 and torch.equal(result.latents, ctx.source_latents)


def test_a_region_of_the_clip_size_is_padded_like_the_clip(parts):
    scd, vae, positive, _ = parts
    f, h, w = 3, 40, 50
    mask = torch.zeros(f, h, w)
    mask[:, :10, :10] = 1
    region = torch.zeros(f, h, w)
    region[:, 30:, 40:] = 1
    ctx = prepare_edit(vae, torch.rand(f, h, w, 3), mask)
    result = sample_edit(scd, ctx, positive, None, SamplerSettings(steps=1, blend=BlendSettings(mode="pixel")),
                         regions=[Region(region, positive)])
    assert bool(result.edit_tokens[:, -1, -1].all())
    with pytest.raises(ValueError, match=r"region 1 mask \(9, 64, 64\) does not match the edit context \(3, 40, 50\)"):
        sample_edit(scd, ctx, positive, None, SamplerSettings(steps=1), regions=[Region(ctx.mask, positive)])


@pytest.mark.parametrize("name", ["cfg", "shift", "strength"])
def test_non_finite_settings_are_refused_by_name(parts, name):
    with pytest.raises(NonFiniteError, match=f"{name} is nan"):
        SamplerSettings(**{name: float("nan")}).validate()
    with pytest.raises(NonFiniteError, match="falloff_px is inf"):
        BlendSettings(falloff_px=float("inf"))


def test_non_finite_conditioning_and_latents_are_refused_before_the_model_runs(parts):
    scd, vae, positive, negative = parts
    frames, mask = torch.rand(9, 64, 64, 3), torch.zeros(9, 64, 64)
    mask[:, :32, :32] = 1
    ctx = prepare_edit(vae, frames, mask)
    calls = scd.decoder_calls
    bad = TextConditioning(positive.embeds.clone(), positive.mask, positive.prompt, positive.audio_embeds)
    bad.embeds[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="negative conditioning holds 1 non-finite"):
        sample_edit(scd, ctx, positive, bad, SamplerSettings(steps=1))
    ctx.source_latents[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="edit context source latents"):
        sample_edit(scd, ctx, positive, negative, SamplerSettings(steps=1))
    assert scd.decoder_calls == calls


def test_a_velocity_that_overflows_stops_the_edit_with_the_step(parts):
    scd, vae, positive, _ = parts
    frames, mask = torch.rand(9, 64, 64, 3), torch.zeros(9, 64, 64)
    mask[:, :32, :32] = 1
    ctx = prepare_edit(vae, frames, mask)
    block = scd.transformer.transformer_blocks[-1]
    hook = block.register_forward_hook(lambda _m, _i, out: tuple(o * float("inf") if torch.is_tensor(o) and
                                                                  o.is_floating_point() else o for o in out)
                                       if isinstance(out, tuple) else out * float("inf"))
    try:
        with pytest.raises(NonFiniteError, match="became NaN/Inf at step 1 of 3"):
            sample_edit(scd, ctx, positive, None, SamplerSettings(steps=3, fast=False))
    finally:
        hook.remove()
