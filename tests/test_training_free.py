"""`training_free` and `full` edit modes on the pretrained LTX-2 (no SCD LoRA), against diffusers as the oracle.

- `full` equals diffusers' forward called as the LTX-2 condition pipeline calls it (per-token timesteps: σ inside
  the mask, 0 outside), at the edit tokens;
- `training_free`'s reference equals one masked diffusers pass over [background; edit] whose background rows never
  see the edit columns; its cached fast path equals the reference on the 2.0, 2.3 and 2.5 layouts;
- a step runs every block on the edit tokens only (FLOPs in proportion to the mask) and the background's keys/values
  are computed once per edit.

Tolerances: the reference and the oracle run the same diffusers ops on the same float32 values except the attention
(two flash calls against one masked call) — rounding of sums over at most 60 keys, ~1e-6 relative per block over the
tiny model's 6 blocks, so 2e-5 absolute on outputs of order 1; the fast path reorders RMSNorm/AdaLN arithmetic
(as the SCD fast path, tested with the same 2e-5/3e-5 bounds in test_fast_decode.py).
"""

from __future__ import annotations

import pytest
import torch
from layout_support import layout_transformer, pipeline_forward, with_audio_embeds
from torch.utils.flop_counter import FlopCounterMode

from editctrl_core.conditioning.text import concat_conditionings
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.scd import MASK_BIAS, LTX2Stack
from editctrl_core.edit.training_free import FastMaskLocal, FullModel, MaskLocalModel
from editctrl_core.loading.models import load_preset

PRESET = load_preset("tiny")
CH = PRESET.transformer["in_channels"]
GRID = (3, 4, 5)
N = GRID[0] * GRID[1] * GRID[2]
LAYOUTS = ["ltx-2.0", "ltx-2.3", "ltx-2.5"]


def _text(layout: str, gen: torch.Generator):
    enc = build_tiny_text_encoder()
    text = concat_conditionings([enc.encode(["a red ball"]), enc.encode(["blurry"])])
    return with_audio_embeds(text, gen) if layout != "ltx-2.0" else text


def _edit_index(fraction: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(N, generator=gen)[: max(1, round(fraction * N))].sort().values


def _setup(layout: str, fraction: float = 0.25):
    gen = torch.Generator().manual_seed(3)
    model = layout_transformer(layout)
    stack = LTX2Stack(model)
    tokens = torch.randn(1, N, CH, generator=gen)
    index = _edit_index(fraction)
    keep = torch.ones(N, dtype=torch.bool)
    keep[index] = False
    x = torch.randn(2, index.numel(), CH, generator=gen)
    return model, stack, tokens, index, keep.nonzero().squeeze(1), x, _text(layout, gen)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_mode_equals_the_pipeline_with_per_token_timesteps(layout):
    model, stack, tokens, index, _, x, text = _setup(layout)
    sigma = torch.tensor([0.7, 0.7])
    full = FullModel(stack)
    with torch.no_grad():
        ours = full.decode(full.plan(index, tokens, GRID, text), x, sigma)
        clip = tokens.expand(2, -1, -1).clone()
        clip[:, index] = x
        token_sigma = torch.zeros(2, N)
        token_sigma[:, index] = 0.7
        ref = pipeline_forward(model, clip, sigma, text, stack.video_coords(GRID, 2), token_sigma)[:, index]
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def _one_way_oracle(stack: LTX2Stack, tokens, index, background, x, sigma, text) -> torch.Tensor:
    """One diffusers pass over [background; edit] with per-token timesteps (background σ=0) and a self-attention
    mask hiding the edit columns from the background rows."""
    batch, p, n = x.shape[0], background.numel(), index.numel()
    hidden = torch.cat([tokens[:, background].expand(batch, -1, -1), x], dim=1)
    sigma_tokens = torch.cat([torch.zeros(batch, p), sigma[:, None].expand(-1, n)], dim=1)
    time = stack.time(sigma_tokens, sigma)
    coords = stack.video_coords(GRID, batch)
    rope = stack.rope(torch.cat([coords[:, :, background], coords[:, :, index]], dim=2))
    bias = torch.zeros(p + n, p + n)
    bias[:p, p:] = MASK_BIAS
    out = stack.run_blocks(stack.model.proj_in(hidden), 0, stack.num_layers, stack.text(text), time, rope,
                           bias.expand(batch, -1, -1))
    return stack.head(out[:, p:], time.embedded[:, p:])


@pytest.mark.parametrize("layout", ["ltx-2.0", "ltx-2.5"])
def test_training_free_reference_equals_one_masked_diffusers_pass(layout):
    """(LTX-2.3 modulates the prompt by the sample's σ, so one pass cannot give the background its σ=0 prompt
    modulation; its reference is checked against the fast path below.)"""
    _, stack, tokens, index, background, x, text = _setup(layout)
    sigma = torch.tensor([0.6, 0.6])
    model = MaskLocalModel(stack)
    with torch.no_grad():
        plan = model.plan(index, tokens, GRID, text, background_index=background)
        ours = model.decode(plan, x, sigma)
        ref = _one_way_oracle(stack, tokens, index, background, x, sigma, text)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_training_free_equals_the_reference_at_every_sigma(layout):
    _, stack, tokens, index, background, x, text = _setup(layout)
    model = MaskLocalModel(stack)
    with torch.no_grad():
        plan = model.plan(index, tokens, GRID, text, background_index=background)
        fast = FastMaskLocal(model, plan)
        outs = []
        for value in (0.9, 0.4, 0.05):
            sigma = torch.full((2,), value)
            out = fast(x, sigma)
            torch.testing.assert_close(out, model.decode(plan, x, sigma), atol=3e-5, rtol=1e-5)
            outs.append(out)
        assert not torch.allclose(outs[0], outs[1], atol=1e-4)
        other = tokens.clone()
        other[:, background] += 1.0
        moved = model.decode(model.plan(index, other, GRID, text, background_index=background), x,
                             torch.full((2,), 0.4))
        assert not torch.allclose(moved, outs[1], atol=1e-4), "the background must reach the edit tokens"


def test_training_free_without_background_is_the_plain_model_on_the_edit_tokens():
    model, stack, tokens, _, _, _, text = _setup("ltx-2.0")
    everything = torch.arange(N)
    x = torch.randn(2, N, CH, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 0.5])
    free = MaskLocalModel(stack)
    with torch.no_grad():
        plan = free.plan(everything, tokens, GRID, text, background_index=torch.empty(0, dtype=torch.long))
        ref = pipeline_forward(model, x, sigma, text, stack.video_coords(GRID, 2))
        torch.testing.assert_close(free.decode(plan, x, sigma), ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(FastMaskLocal(free, plan)(x, sigma), ref, atol=3e-5, rtol=1e-5)


def _step_flops(fraction: float) -> tuple[int, int]:
    """(setup, per-step) FLOPs of the fast training-free path at a mask of `fraction` of the tokens."""
    _, stack, tokens, index, background, x, text = _setup("ltx-2.0", fraction)
    model = MaskLocalModel(stack)
    with torch.no_grad():
        plan = model.plan(index, tokens, GRID, text, background_index=background)
        with FlopCounterMode(display=False) as setup:
            fast = FastMaskLocal(model, plan)
        with FlopCounterMode(display=False) as step:
            fast(x, torch.full((2,), 0.5))
    return setup.get_total_flops(), step.get_total_flops()


def test_a_step_costs_in_proportion_to_the_mask_and_the_background_is_computed_once():
    small_setup, small = _step_flops(0.1)
    large_setup, large = _step_flops(0.5)
    ratio = large / small
    n_small, n_large = _edit_index(0.1).numel(), _edit_index(0.5).numel()
    # linear layers scale with n; attention with n·(N-n+n)=n·N: both ∝ n
    assert abs(ratio - n_large / n_small) / (n_large / n_small) < 0.15, ratio
    assert small_setup > large_setup > 0  # the background pass: more background at the smaller mask


# --- through the sampler (`sample_edit`, what the Edit Sampler node calls) and the mode resolution ---------------

def _sampler_setup():
    from editctrl_core.edit.context import prepare_edit
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.loading.models import build_transformer, build_vae

    torch.manual_seed(0)
    scd = SCDModel(build_transformer(PRESET), SCDOptions(split_layer=PRESET.split_layer))
    vae = build_vae(PRESET)
    frames, mask = torch.rand(17, 96, 128, 3), torch.zeros(17, 96, 128)
    mask[:, 32:64, 32:96] = 1
    enc = build_tiny_text_encoder()
    return scd, prepare_edit(vae, frames, mask), enc.encode(["a calm lake"]), enc.encode([""])


@pytest.mark.parametrize("mode", ["training_free", "full"])
@pytest.mark.parametrize("window_frames", [0, 1])
def test_pretrained_modes_edit_inside_and_keep_the_source_outside(mode, window_frames):
    from editctrl_core.edit.sampler import SamplerSettings, sample_edit

    scd, ctx, positive, negative = _sampler_setup()
    settings = SamplerSettings(steps=3, seed=2, cfg=3.0, mode=mode, window_frames=window_frames, blend=None,
                               background_refresh=0)  # one-way, as the reference path runs it
    result = sample_edit(scd, ctx, positive, negative, settings)
    inside = result.edit_tokens[None, None].expand_as(ctx.source_latents)
    assert torch.equal(result.latents[~inside], ctx.source_latents[~inside])
    assert not torch.allclose(result.latents[inside], ctx.source_latents[inside], atol=1e-3)
    windows = 3 if window_frames and mode == "training_free" else 1
    assert result.mode == mode and result.decoder_calls == 3 * windows and result.encoder_calls == 0
    reference = sample_edit(scd, ctx, positive, negative,
                            SamplerSettings(steps=3, seed=2, cfg=3.0, mode=mode, window_frames=window_frames,
                                            blend=None, fast=False))
    torch.testing.assert_close(result.latents, reference.latents, atol=1e-4, rtol=1e-4)
    if mode == "training_free":
        assert any("ran one-way" in n for n in reference.notes), reference.notes


def test_cfg_negative_branch_of_training_free_is_the_negative_prompt_alone():
    """With CFG the background runs for each prompt: the guided velocity equals uncond + cfg·(cond − uncond) of two
    single-prompt runs."""
    from editctrl_core.edit.sampler import SamplerSettings, sample_edit

    scd, ctx, positive, negative = _sampler_setup()
    cfg = 2.5
    guided = sample_edit(scd, ctx, positive, negative, SamplerSettings(steps=1, cfg=cfg, mode="training_free",
                                                                        guidance_rescale=0.0))
    pos = sample_edit(scd, ctx, positive, None, SamplerSettings(steps=1, mode="training_free"))
    neg = sample_edit(scd, ctx, negative, None, SamplerSettings(steps=1, mode="training_free"))
    # one Euler step from σ=1 to 0 is linear in the velocity: x1 = x0 - v, so the guided result is the CFG mix
    mixed = neg.latents + cfg * (pos.latents - neg.latents)
    torch.testing.assert_close(guided.latents, mixed, atol=1e-4, rtol=1e-4)


def test_auto_picks_training_free_without_scd_weights_and_refuses_impossible_combinations(tmp_path):
    from editctrl_core.edit.adapters import LocalContextConfig, LocalContextModule
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.editmodel import EditModel
    from editctrl_core.loading.lora import read_lora, save_lora

    scd, *_ = _sampler_setup()
    model = EditModel(scd, PRESET, "memory")
    assert model.resolve_mode("auto")[0] == "training_free"
    assert "no SCD LoRA" in model.resolve_mode("auto")[1]
    assert "only edits well with weights trained for it" in model.resolve_mode("scd")[1]
    assert model.resolve_mode("full") == ("full", "full as chosen")
    with pytest.raises(ValueError, match="mode must be one of auto, scd, training_free, full"):
        model.resolve_mode("fast")
    layer = "transformer_blocks.5.attn1.to_q"
    target = scd.transformer.get_submodule(layer)
    pair = (torch.randn(2, target.in_features) * 0.01, torch.zeros(target.out_features, 2), 2.0)
    plain = read_lora(save_lora({layer: pair}, tmp_path / "ic.safetensors"))
    ic = model.with_lora(plain, 1.0)
    assert ic.resolve_mode("auto")[0] == "training_free" and ic.resolve_mode("training_free")[0] == "training_free"
    trained = read_lora(save_lora({layer: pair}, tmp_path / "scd.safetensors", {"scd_prefix": "one_way",
                                                                                 "split_layer": 4}))
    with_scd = model.with_lora(trained, 1.0)
    mode, why = with_scd.resolve_mode("auto")
    assert mode == "scd" and "SCD LoRA scd.safetensors" in why
    with pytest.raises(ValueError, match="trained for the SCD split decoder. Choose mode scd"):
        with_scd.resolve_mode("training_free")
    inner = scd.transformer.proj_in.out_features
    local = LocalContextModule(LocalContextConfig(in_channels=CH + 1, width=16, num_blocks=1, heads=2, head_dim=8,
                                                  text_dim=inner, model_dim=inner, target_blocks=(0,)))
    attached = SCDModel(scd.transformer, SCDOptions(split_layer=PRESET.split_layer))
    attached.attach(local=local)
    adapted = EditModel(attached, PRESET, "memory")
    assert adapted.resolve_mode("auto")[0] == "scd"
    with pytest.raises(ValueError, match="cannot use the local context adapter: EditCtrl adapters work with the "
                                         "SCD split only"):
        adapted.resolve_mode("full")


# --- background_refresh: some steps run two-way as `full` and re-record the background --------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_refresh_step_is_the_full_step_and_rewrites_the_background(layout):
    """A refresh returns `full`'s velocity at the edit tokens (same arithmetic up to the fast path's reordering:
    the 3e-5 bound above) and leaves the prefix holding the background as `full` sees it, so the next one-way step
    differs from the never-refreshed one; prompt biases per token (regions) are honoured on both sides."""
    _, stack, tokens, index, background, x, text = _setup(layout)
    keep = torch.ones(2, N, text.embeds.shape[1], dtype=torch.bool)
    keep[:, background[::2], -2:] = False
    free, full = MaskLocalModel(stack), FullModel(stack)
    with torch.no_grad():
        plan = free.plan(index, tokens, GRID, text, background_index=background, text_keep=keep[:, index],
                         background_keep=keep[:, background])
        fresh, refreshed = FastMaskLocal(free, plan), FastMaskLocal(free, plan)
        sigma = torch.full((2,), 0.6)
        ref = full.decode(full.plan(index, tokens, GRID, text, text_keep=keep), x, sigma)
        torch.testing.assert_close(refreshed.refresh(x, sigma), ref, atol=3e-5, rtol=1e-5)
        assert refreshed.dirty and not fresh.dirty, "a step cache must know the prefix was rewritten"
        later = torch.full((2,), 0.3)
        one_way, after = fresh(x, later), refreshed(x, later)
        assert (one_way - after).abs().max() > 1e-4, "the refreshed background must reach the edit tokens"
        torch.testing.assert_close(refreshed.refresh(x, later),
                                   full.decode(full.plan(index, tokens, GRID, text, text_keep=keep), x, later),
                                   atol=3e-5, rtol=1e-5)


def test_refresh_steps_are_evenly_spaced_after_the_first_and_every_step_at_most():
    from editctrl_core.edit.sampler import refresh_steps

    assert refresh_steps(30, 0) == set()
    assert refresh_steps(30, 1) == {15}
    assert refresh_steps(30, 2) == {10, 20}
    assert refresh_steps(30, 5) == {5, 10, 15, 20, 25}
    assert refresh_steps(4, 4) == refresh_steps(4, 9) == {0, 1, 2, 3}
    for steps in (1, 2, 7, 30):
        for n in range(steps):
            got = refresh_steps(steps, n)
            assert len(got) == n and 0 not in got and max(got, default=0) < steps


def test_refreshing_every_step_is_the_full_edit_and_the_source_stays_outside():
    from editctrl_core.edit.sampler import SamplerSettings, sample_edit

    scd, ctx, positive, negative = _sampler_setup()
    with torch.no_grad():  # away from the near-identity initialisation, so the background's view of the edit shows
        for name, p in scd.stack.model.named_parameters():
            if "scale_shift_table" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    common = dict(steps=3, seed=2, cfg=3.0, blend=None, dilation=0)  # dilated by 1, this mask covers the whole grid
    full = sample_edit(scd, ctx, positive, negative, SamplerSettings(mode="full", **common))
    every = sample_edit(scd, ctx, positive, negative,
                        SamplerSettings(mode="training_free", background_refresh=3, **common))
    torch.testing.assert_close(every.latents, full.latents, atol=1e-4, rtol=1e-4)
    once = sample_edit(scd, ctx, positive, negative,
                       SamplerSettings(mode="training_free", background_refresh=1, **common))
    never = sample_edit(scd, ctx, positive, negative,
                        SamplerSettings(mode="training_free", background_refresh=0, **common))
    inside = once.edit_tokens[None, None].expand_as(ctx.source_latents)
    assert torch.equal(once.latents[~inside], ctx.source_latents[~inside])
    assert once.decoder_calls == never.decoder_calls == 3
    assert (once.latents - never.latents).abs().max() > 1e-4
    assert (once.latents - full.latents).abs().max() > 1e-5, "one refresh of three steps is not the full edit"
    scd_run = sample_edit(scd, ctx, positive, negative, SamplerSettings(mode="full", background_refresh=3, **common))
    assert any("background_refresh applies to the training_free mode only" in n for n in scd_run.notes)
    default = sample_edit(scd, ctx, positive, negative, SamplerSettings(mode="full", **common))
    assert not any("background_refresh" in n for n in default.notes), "the default is not the user's choice"


@pytest.mark.parametrize("kwargs, message", [
    (dict(background_refresh=-1), "background_refresh must be >= 0"),
    (dict(background_refresh=3, fast=False), "background_refresh runs on the fast mask-local path"),
])
def test_bad_background_refresh_is_refused(kwargs, message):
    from editctrl_core.edit.sampler import SamplerSettings

    with pytest.raises(ValueError, match=message):
        SamplerSettings(mode="training_free", **kwargs).validate()
