"""SCD split over the real diffusers LTX-2 transformer (tiny preset)."""

import pytest
import torch
from layout_support import layout_transformer, pipeline_forward, with_audio_embeds

from editctrl_core.conditioning.text import concat_conditionings
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.scd import SCDModel, SCDOptions, default_split_layer, shift_one_frame
from editctrl_core.loading.models import build_transformer, load_preset

GRID = (3, 2, 3)


def _setup(**options):
    preset = load_preset("tiny")
    model = build_transformer(preset)
    text = build_tiny_text_encoder().encode(["a red ball"])
    scd = SCDModel(model, SCDOptions(split_layer=preset.split_layer, **options))
    return preset, model, text, scd


def test_default_split_layer_is_proportional():
    assert default_split_layer(48) == 32
    assert default_split_layer(6) == 4
    assert default_split_layer(2) == 1


def test_split_equals_diffusers_full_forward_exactly():
    preset, model, text, scd = _setup(causal=False, shift=False, concat=False)
    n = GRID[0] * GRID[1] * GRID[2]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, preset.transformer["in_channels"], generator=gen)
    sigma = torch.tensor([0.7, 0.3])
    cond = text.embeds.repeat(2, 1, 1)
    mask = text.mask.repeat(2, 1)
    with torch.no_grad():
        ours = scd.forward_split(x, sigma, GRID, type(text)(cond, mask))
        audio = torch.zeros(2, 1, preset.transformer["audio_in_channels"])
        ref = model(hidden_states=x, audio_hidden_states=audio, encoder_hidden_states=cond,
                    audio_encoder_hidden_states=cond, timestep=sigma * 1000, sigma=sigma * 1000,
                    encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=GRID[0],
                    height=GRID[1], width=GRID[2], audio_num_frames=1, isolate_modalities=True,
                    return_dict=False)[0]
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref), (ours - ref).abs().max()


@pytest.mark.parametrize("layout", ["ltx-2.0", "ltx-2.3", "ltx-2.5"])
def test_plain_split_equals_diffusers_forward_as_the_pipeline_calls_it(layout):
    """Split switches off: forward_split equals diffusers' forward given timestep = sigma = σ·1000, as LTX2Pipeline
    calls it, so every AdaLN (LTX-2.3's prompt AdaLN included) sees the scaled timestep."""
    preset = load_preset("tiny")
    model = layout_transformer(layout)
    enc = build_tiny_text_encoder()
    gen = torch.Generator().manual_seed(5)
    text = concat_conditionings([enc.encode(["a red ball"]), enc.encode([""])])
    if layout != "ltx-2.0":
        with_audio_embeds(text, gen)
    scd = SCDModel(model, SCDOptions(split_layer=preset.split_layer, causal=False, shift=False, concat=False))
    n = GRID[0] * GRID[1] * GRID[2]
    x = torch.randn(2, n, preset.transformer["in_channels"], generator=gen)
    sigma = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        ours = scd.forward_split(x, sigma, GRID, text)
        ref = pipeline_forward(model, x, sigma, text, model.rope.prepare_video_coords(2, *GRID, "cpu", fps=24.0))
    assert ref.abs().max() > 0.1
    assert torch.equal(ours, ref), (ours - ref).abs().max()


def test_causal_encoder_frame_independent_of_future_frames():
    preset, model, text, scd = _setup(shift=False)
    f, h, w = GRID
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, f * h * w, preset.transformer["in_channels"], generator=gen)
    y = x.clone()
    y[:, (f - 1) * h * w:] += 5.0
    with torch.no_grad():
        a = scd.encode(x, GRID, text)
        b = scd.encode(y, GRID, text)
    past = slice(0, (f - 1) * h * w)
    assert torch.equal(a[:, past], b[:, past])
    assert not torch.allclose(a[:, (f - 1) * h * w:], b[:, (f - 1) * h * w:])
    # Without the causal mask the perturbation leaks into earlier frames.
    scd.options.causal = False
    with torch.no_grad():
        c = scd.encode(x, GRID, text)
        d = scd.encode(y, GRID, text)
    assert not torch.allclose(c[:, past], d[:, past])


def test_shift_moves_features_one_latent_frame():
    ctx = torch.arange(3 * 2 * 4, dtype=torch.float32).view(1, 3 * 2, 4)
    shifted = shift_one_frame(ctx, (3, 1, 2))
    assert torch.equal(shifted[:, :2], torch.zeros(1, 2, 4))
    assert torch.equal(shifted[:, 2:], ctx[:, :4])


def test_decoder_drops_prefix_and_sees_context():
    preset, model, text, scd = _setup()
    f, h, w = GRID
    n = f * h * w
    gen = torch.Generator().manual_seed(2)
    bg = torch.randn(1, n, preset.transformer["in_channels"], generator=gen)
    with torch.no_grad():
        ctx = scd.encode(bg, GRID, text)
        idx = torch.tensor([7, 8, 13])
        plan = scd.plan(idx, ctx, GRID, text)
        x = torch.randn(1, 3, preset.transformer["in_channels"], generator=gen)
        v1 = scd.decode(plan, x, torch.tensor([0.5]))
        plan2 = scd.plan(idx, ctx * 2, GRID, text)
        v2 = scd.decode(plan2, x, torch.tensor([0.5]))
    assert v1.shape == x.shape
    assert not torch.allclose(v1, v2)


def test_windowed_encoder_equals_single_pass():
    preset, model, text, scd = _setup()
    grid = (5, 2, 3)
    f, h, w = grid
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, f * h * w, preset.transformer["in_channels"], generator=gen)
    with torch.no_grad():
        single = scd.encode(x, grid, text)
        for window in (1, 2, 3):
            windowed = scd.encode_windowed(x, grid, text, window)
            assert windowed.shape == single.shape
            assert torch.allclose(windowed, single, atol=2e-5, rtol=1e-5), (window, (windowed - single).abs().max())
    # the original attention processors are restored afterwards
    assert all(type(b.attn1.processor).__name__ != "CachedSelfAttention" for b in model.transformer_blocks)
