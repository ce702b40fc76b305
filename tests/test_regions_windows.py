"""Multi-region edits (one pass, a prompt per region) and windowed long-video editing."""

import pytest
import torch

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.blend import BlendSettings, feather_mask
from editctrl_core.edit.context import EditContext, prepare_edit, to_tokens
from editctrl_core.edit.geometry import grid_for
from editctrl_core.edit.masks import dilate_token_mask, pixel_mask_to_token_mask, token_mask_to_pixel_mask
from editctrl_core.edit.sampler import Region, SamplerSettings, region_text, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.models import build_transformer, build_vae, load_preset
from editctrl_core.media.vae import decode_latents

PRESET = load_preset("tiny")
GRID = (4, 4, 6)


@pytest.fixture(scope="module")
def setup():
    model = build_transformer(PRESET)
    enc = build_tiny_text_encoder()
    return model, enc


def _ctx(tok: torch.Tensor) -> EditContext:
    f, h, w = tok.shape
    frames = (f - 1) * 8 + 1
    gen = torch.Generator().manual_seed(11)
    src = torch.randn(1, PRESET.transformer["in_channels"], f, h, w, generator=gen)
    return EditContext(torch.zeros(frames, h * 32, w * 32, 3), token_mask_to_pixel_mask(tok, frames), src,
                       src * 0.3, tok, grid_for(frames, h * 32, w * 32))


def _masks():
    a = torch.zeros(GRID, dtype=torch.bool)
    a[:, 1:3, 0:2] = True
    b = torch.zeros(GRID, dtype=torch.bool)
    b[:, 1:3, 2:4] = True
    return a, b


def _scd(model):
    return SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))


def test_region_text_assigns_each_token_its_own_prompt(setup):
    _, enc = setup
    a, b = _masks()
    pos, pa, pb = enc.encode(["base"]), enc.encode(["a red cat"]), enc.encode(["blue water"])
    union = a | b
    index = union.flatten().nonzero().squeeze(1)
    text, keep = region_text(pos, [(a, pa), (b, pb)], None, index)
    assert text.embeds.shape[1] == pos.embeds.shape[1] + pa.embeds.shape[1] + pb.embeds.shape[1]
    t0, t1 = pos.embeds.shape[1], pos.embeds.shape[1] + pa.embeds.shape[1]
    in_b = b.flatten()[index]
    assert bool(keep[0, in_b][:, t1:].any(dim=1).all()) and not bool(keep[0, in_b][:, :t1].any())
    in_a = a.flatten()[index] & ~in_b
    assert bool(keep[0, in_a][:, t0:t1].any(dim=1).all()) and not bool(keep[0, in_a][:, t1:].any())
    neg = enc.encode([""])
    text2, keep2 = region_text(pos, [(a, pa), (b, pb)], neg, index)
    assert keep2.shape[0] == 2 and text2.embeds.shape[0] == 2
    assert torch.equal(keep2[1][0], text2.mask[1].bool())


def test_regions_with_identical_prompts_match_a_single_prompt_edit(setup):
    model, enc = setup
    a, b = _masks()
    prompt = enc.encode(["a calm lake"])
    ctx = _ctx(a | b)
    settings = SamplerSettings(steps=3, seed=3, cfg=1.0, dilation=0)
    single = sample_edit(_scd(model), ctx, prompt, None, settings).latents
    regions = [Region(token_mask_to_pixel_mask(a, 25), prompt), Region(token_mask_to_pixel_mask(b, 25), prompt)]
    multi = sample_edit(_scd(model), ctx, prompt, None, settings, regions=regions).latents
    assert torch.allclose(single, multi, atol=1e-5)
    other = [Region(token_mask_to_pixel_mask(a, 25), prompt),
             Region(token_mask_to_pixel_mask(b, 25), enc.encode(["a burning car"]))]
    different = sample_edit(_scd(model), ctx, prompt, None, settings, regions=other).latents
    assert not torch.allclose(single[:, :, b], different[:, :, b])
    outside = ~dilate_token_mask(a | b, 0)
    assert torch.equal(different[:, :, outside], ctx.source_latents[:, :, outside])


def test_touching_regions_blend_as_one_edit_with_cfg(setup):
    model, enc = setup
    a, b = _masks()
    ctx = _ctx(a | b)
    regions = [Region(token_mask_to_pixel_mask(a, 25), enc.encode(["grass"])),
               Region(token_mask_to_pixel_mask(b, 25), enc.encode(["sand"]))]
    out = sample_edit(_scd(model), ctx, enc.encode(["field"]), enc.encode([""]),
                      SamplerSettings(steps=2, cfg=3.0, dilation=1), regions=regions)
    edit = dilate_token_mask(a | b, 1)
    assert torch.equal(out.edit_tokens, edit)
    assert torch.equal(out.latents[:, :, ~edit], ctx.source_latents[:, :, ~edit])
    assert torch.isfinite(out.latents).all()


def test_windowed_edit_encodes_and_denoises_each_window_in_turn(setup):
    model, enc = setup
    tok = torch.zeros(GRID, dtype=torch.bool)
    tok[:, 1:3, 1:4] = True
    ctx = _ctx(tok)
    scd = _scd(model)
    steps = []
    out = sample_edit(scd, ctx, enc.encode(["snow"]), None, SamplerSettings(steps=2, cfg=1.0, window_frames=2),
                      callback=lambda value, total, _: steps.append((value, total)))
    assert out.encoder_calls == 2 and out.decoder_calls == 4
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    edit = out.edit_tokens
    assert torch.equal(out.latents[:, :, ~edit], ctx.source_latents[:, :, ~edit])
    assert not torch.allclose(out.latents[:, :, edit], ctx.source_latents[:, :, edit])


def test_a_region_outside_the_main_mask_is_edited_and_everything_outside_all_regions_is_the_source(setup):
    """The union of the masks is the edit mask: the background is blanked there, the adapters' mask channel shows it,
    the default blend keeps it and the composite pastes it; beyond them the latents and pixels are the source."""
    model, enc = setup
    vae = build_vae(PRESET)
    frames = torch.rand(25, 128, 384, 3, generator=torch.Generator().manual_seed(2))
    main = torch.zeros(25, 128, 384)
    main[:, 32:96, 0:64] = 1.0
    region = torch.zeros(25, 128, 384)
    region[:, 32:96, 320:384] = 1.0
    ctx = prepare_edit(vae, frames, main)
    scd = _scd(model)
    seen = {}
    plan = scd.plan

    def spy(*args, **kwargs):
        seen["edit_mask"] = kwargs["edit_mask"]
        seen["background"] = kwargs["background"]
        return plan(*args, **kwargs)

    scd.plan = spy
    out = sample_edit(scd, ctx, enc.encode(["a field"]), None, SamplerSettings(steps=3, seed=1, cfg=1.0,
                      blend=BlendSettings()), regions=[Region(region, enc.encode(["a red car"]))])
    inside = pixel_mask_to_token_mask(region)
    assert not bool((inside & ctx.token_mask).any())
    assert torch.equal(seen["edit_mask"], ctx.token_mask | inside)
    assert torch.equal(seen["background"][:, :, inside], ctx.fill[:, :, inside])
    assert not torch.allclose(out.latents[:, :, inside], ctx.source_latents[:, :, inside], atol=1e-3)
    outside = ~out.edit_tokens
    assert bool(outside.any()) and torch.equal(out.latents[:, :, outside], ctx.source_latents[:, :, outside])
    assert torch.equal(out.mask, torch.maximum(main, region))
    edited = out.crop(decode_latents(vae, out.latents))
    pasted = out.composite(edited, frames, 16.0)
    beyond = feather_mask(torch.maximum(main, region), 16.0) == 0
    assert torch.equal(pasted[beyond], frames[beyond])
    assert not torch.allclose(pasted[region > 0.5], frames[region > 0.5], atol=1e-3)


def _window_ctx() -> EditContext:
    tok = torch.zeros(GRID, dtype=torch.bool)
    tok[:, 1:3, 1:4] = True
    ctx = _ctx(tok)
    ctx.background_latents = torch.where(tok[None, None], torch.zeros_like(ctx.source_latents), ctx.source_latents)
    return ctx


@pytest.mark.parametrize("fast", [False, True])
def test_a_single_window_is_the_one_pass_edit(setup, fast):
    model, enc = setup
    ctx = _window_ctx()
    prompt, negative = enc.encode(["snow"]), enc.encode([""])
    settings = SamplerSettings(steps=2, seed=4, cfg=3.0, blend=None, fast=fast)
    one_pass = sample_edit(_scd(model), ctx, prompt, negative, settings).latents
    single = sample_edit(_scd(model), ctx, prompt, negative, SamplerSettings(steps=2, seed=4, cfg=3.0, blend=None,
                                                                             fast=fast, window_frames=GRID[0]))
    assert single.encoder_calls == 1
    assert torch.allclose(single.latents, one_pass, atol=1e-5), (single.latents - one_pass).abs().max()


@pytest.mark.parametrize("shift", [False, True])
def test_a_later_window_is_conditioned_on_the_earlier_frames_as_edited(setup, shift):
    """Mechanism of the seam-free windows: the context of window 2 is the frame-causal encoder's over the frames of
    window 1 *as edited* followed by window 2's own background, not over the blanked source."""
    model, enc = setup
    ctx = _window_ctx()
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer, shift=shift))
    contexts = []
    plan = scd.plan

    def spy(index, context, *args, **kwargs):
        contexts.append(context.clone())
        return plan(index, context, *args, **kwargs)

    scd.plan = spy
    prompt = enc.encode(["snow"])
    out = sample_edit(scd, ctx, prompt, None, SamplerSettings(steps=2, cfg=1.0, blend=None, window_frames=2))
    per_frame = GRID[1] * GRID[2]
    later = slice(2 * per_frame, None)
    carried = to_tokens(ctx.background_latents).clone()
    carried[:, :2 * per_frame] = to_tokens(out.latents)[:, :2 * per_frame]
    assert not torch.equal(carried, to_tokens(ctx.background_latents))
    with torch.no_grad():
        expected = scd.encode(carried, GRID, prompt)
        from_source = scd.encode(to_tokens(ctx.background_latents), GRID, prompt)
    assert len(contexts) == 2
    assert torch.allclose(contexts[1][:, later], expected[:, later], atol=1e-5)
    assert not torch.allclose(contexts[1][:, later], from_source[:, later], atol=1e-3)
    assert torch.allclose(contexts[0][:, :2 * per_frame], from_source[:, :2 * per_frame], atol=1e-5)


def test_overlap_frames_keep_the_earlier_windows_edit_and_bad_overlap_is_refused(setup):
    """With window_overlap the later window re-denoises the frames before it only as context: they come back as
    the earlier window left them (the windowed edit without overlap agrees on the first window's frames), and a
    negative overlap is refused."""
    model, enc = setup
    ctx = _window_ctx()
    prompt = enc.encode(["snow"])
    common = dict(steps=2, seed=4, cfg=1.0, blend=None, window_frames=2)
    plain = sample_edit(_scd(model), ctx, prompt, None, SamplerSettings(window_overlap=0, **common)).latents
    overlapped = sample_edit(_scd(model), ctx, prompt, None, SamplerSettings(window_overlap=1, **common)).latents
    assert torch.equal(overlapped[:, :, :2], plain[:, :, :2])
    assert not torch.allclose(overlapped[:, :, 2:], plain[:, :, 2:], atol=1e-5)
    with pytest.raises(ValueError, match="window_overlap must be >= 0"):
        SamplerSettings(window_overlap=-1).validate()
