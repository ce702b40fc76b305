"""Sparse edit sampler: compute ∝ mask, untouched outside, empty/full masks, determinism, encoder once."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.context import EditContext, to_tokens
from editctrl_core.edit.geometry import grid_for
from editctrl_core.edit.masks import dilate_token_mask, pixel_mask_to_token_mask, token_mask_to_pixel_mask
from editctrl_core.edit.sampler import SamplerSettings, edit_token_index, flow_sigmas, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.models import build_transformer, load_preset

PRESET = load_preset("tiny")


@pytest.fixture(scope="module")
def parts():
    model = build_transformer(PRESET)
    enc = build_tiny_text_encoder()
    return model, enc.encode(["a calm lake"]), enc.encode([""])


def _context(grid=(3, 4, 5), mask_tokens=None, seed=0) -> EditContext:
    f, h, w = grid
    frames = (f - 1) * 8 + 1
    gen = torch.Generator().manual_seed(seed)
    c = PRESET.transformer["in_channels"]
    src = torch.randn(1, c, f, h, w, generator=gen)
    tok = torch.zeros(f, h, w, dtype=torch.bool) if mask_tokens is None else mask_tokens
    pix = token_mask_to_pixel_mask(tok, frames)
    return EditContext(torch.zeros(frames, h * 32, w * 32, 3), pix, src, src * 0.5, tok,
                       grid_for(frames, h * 32, w * 32))


def _scd(model):
    return SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))


def test_flow_sigmas_shift_and_strength():
    s = flow_sigmas(4)
    assert torch.allclose(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = flow_sigmas(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and bool((shifted[1:-1] > s[1:-1]).all())
    assert float(flow_sigmas(4, strength=0.5)[0]) == 0.5


def test_empty_mask_returns_source_without_decoder(parts):
    model, pos, neg = parts
    scd = _scd(model)
    ctx = _context()
    out = sample_edit(scd, ctx, pos, neg, SamplerSettings(steps=3))
    assert torch.equal(out.latents, ctx.source_latents)
    assert scd.decoder_calls == 0 and scd.encoder_calls == 0


def test_outside_untouched_inside_changed_and_encoder_once(parts):
    model, pos, neg = parts
    scd = _scd(model)
    tok = torch.zeros(3, 4, 5, dtype=torch.bool)
    tok[1:, 1:3, 1:3] = True
    ctx = _context(mask_tokens=tok)
    settings = SamplerSettings(steps=4, cfg=3.0, dilation=1)
    out = sample_edit(scd, ctx, pos, neg, settings)
    dilated = dilate_token_mask(tok, 1)
    outside = ~dilated
    assert torch.equal(out.latents[:, :, outside], ctx.source_latents[:, :, outside])
    assert not torch.allclose(out.latents[:, :, dilated], ctx.source_latents[:, :, dilated])
    assert out.encoder_calls == 1 and scd.encoder_calls == 1
    assert out.decoder_calls == 4
    assert torch.equal(out.edit_tokens, dilated)


def test_full_mask_edits_everything(parts):
    model, pos, _ = parts
    ctx = _context(mask_tokens=torch.ones(3, 4, 5, dtype=torch.bool))
    out = sample_edit(_scd(model), ctx, pos, None, SamplerSettings(steps=2, cfg=1.0))
    changed = (out.latents != ctx.source_latents).flatten(2).any(1)
    assert bool(changed.all())


def test_same_seed_same_output_other_seed_differs(parts):
    model, pos, neg = parts
    tok = torch.zeros(3, 4, 5, dtype=torch.bool)
    tok[:, 2, 2] = True
    ctx = _context(mask_tokens=tok)
    a = sample_edit(_scd(model), ctx, pos, neg, SamplerSettings(steps=3, seed=7)).latents
    b = sample_edit(_scd(model), ctx, pos, neg, SamplerSettings(steps=3, seed=7)).latents
    c = sample_edit(_scd(model), ctx, pos, neg, SamplerSettings(steps=3, seed=8)).latents
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _decoder_flops(model, pos, fraction_tokens: torch.Tensor) -> int:
    scd = _scd(model)
    grid = tuple(fraction_tokens.shape)
    ctx = _context(grid=grid, mask_tokens=fraction_tokens)
    settings = SamplerSettings(steps=1, cfg=1.0, dilation=0)
    with torch.no_grad():
        context = scd.encode(to_tokens(ctx.background_latents), grid, pos)
        _, index = edit_token_index(fraction_tokens, settings)
        plan = scd.plan(index, context, grid, pos)
        x = torch.randn(1, index.numel(), PRESET.transformer["in_channels"])
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            scd.decode(plan, x, torch.tensor([0.5]))
    return counter.get_total_flops()


def test_decoder_flops_proportional_to_mask(parts):
    model, pos, _ = parts
    grid = (5, 8, 8)
    full = torch.ones(grid, dtype=torch.bool)
    tenth = torch.zeros(grid, dtype=torch.bool)
    tenth.view(-1)[: full.numel() // 10] = True
    f_full = _decoder_flops(model, pos, full)
    f_tenth = _decoder_flops(model, pos, tenth)
    print(f"decoder FLOPs: 100% mask {f_full:,}  10% mask {f_tenth:,}  ratio {f_tenth / f_full:.3f}")
    assert f_tenth <= 0.2 * f_full


def test_token_mask_respects_causal_grouping():
    mask = torch.zeros(17, 64, 64)
    mask[0, 0, 0] = 1.0
    mask[9, 40, 40] = 1.0
    tok = pixel_mask_to_token_mask(mask)
    assert tok.shape == (3, 2, 2)
    assert bool(tok[0, 0, 0]) and int(tok[0].sum()) == 1
    assert int(tok[1].sum()) == 0
    assert bool(tok[2, 1, 1]) and int(tok[2].sum()) == 1
    back = token_mask_to_pixel_mask(tok, 17)
    assert back.shape == (17, 64, 64) and back[9, 40, 40] == 1 and back[8].sum() == 0


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="steps"):
        SamplerSettings(steps=0).validate()
    with pytest.raises(ValueError, match="strength"):
        SamplerSettings(strength=0).validate()


def test_renoised_blend_keeps_tokens_beyond_falloff_exact_and_softens_the_ring(parts):
    from editctrl_core.edit.blend import BlendSettings, renoise_alpha

    model, pos, neg = parts
    tok = torch.zeros(3, 6, 8, dtype=torch.bool)
    tok[1:, 1:3, 1:3] = True
    ctx = _context(grid=(3, 6, 8), mask_tokens=tok)
    blend = BlendSettings(mode="renoised", falloff_px=40.0)
    out = sample_edit(_scd(model), ctx, pos, neg, SamplerSettings(steps=4, dilation=3, blend=blend))
    alpha = renoise_alpha(ctx.mask, 40.0)
    beyond = alpha == 0
    assert bool(beyond.any()) and bool((out.edit_tokens & beyond).any())
    assert torch.equal(out.latents[:, :, beyond], ctx.source_latents[:, :, beyond])
    ring = (alpha > 0) & (alpha < 1)
    assert bool(ring.any())
    assert not torch.allclose(out.latents[:, :, ring], ctx.source_latents[:, :, ring])
    plain = sample_edit(_scd(model), ctx, pos, neg, SamplerSettings(steps=4, dilation=3)).latents
    assert not torch.allclose(plain[:, :, ring], out.latents[:, :, ring])


def _counting_reference(monkeypatch) -> list[int]:
    """Count calls of the reference `SCDModel.decode` (the fast decoder never calls it)."""
    calls: list[int] = []
    original = SCDModel.decode

    def counted(self, plan, x, sigma):
        calls.append(1)
        return original(self, plan, x, sigma)
    monkeypatch.setattr(SCDModel, "decode", counted)
    return calls


def test_unsupported_fast_configuration_runs_the_reference_and_says_why(parts, monkeypatch):
    from editctrl_core.edit.fast_decode import fast_decoder_unsupported

    model, pos, _ = parts
    plain = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer, concat=False))
    assert "token-concat" in fast_decoder_unsupported(plain)
    scd, reason = _scd(model), "hooks"
    scd.decoder_block_hooks.append(lambda block, hidden: hidden)
    assert reason in fast_decoder_unsupported(scd)
    tok = torch.zeros(3, 4, 5, dtype=torch.bool)
    tok[1:, 1:3, 1:3] = True
    calls = _counting_reference(monkeypatch)
    out = sample_edit(scd, _context(mask_tokens=tok), pos, None, SamplerSettings(steps=3, cfg=1.0))
    assert out.decoder == "reference" and len(calls) == 3 == out.decoder_calls
    assert len(out.notes) == 1 and reason in out.notes[0] and "SCDModel.decode" in out.notes[0]


def test_supported_configuration_runs_the_fast_decoder_without_notes(parts, monkeypatch):
    from editctrl_core.edit.fast_decode import fast_decoder_unsupported

    model, pos, _ = parts
    scd = _scd(model)
    assert fast_decoder_unsupported(scd) is None
    tok = torch.zeros(3, 4, 5, dtype=torch.bool)
    tok[1:, 1:3, 1:3] = True
    calls = _counting_reference(monkeypatch)
    out = sample_edit(scd, _context(mask_tokens=tok), pos, None, SamplerSettings(steps=3, cfg=1.0))
    assert out.decoder == "fast" and not calls and out.decoder_calls == 3 and out.notes == []
    off = sample_edit(scd, _context(mask_tokens=tok), pos, None, SamplerSettings(steps=3, cfg=1.0, fast=False))
    assert off.decoder == "reference" and len(calls) == 3 and off.notes == []
