"""The edit entry point's input checks per layout: LTX-2.0 prompts are caption_channels wide, 2.3/2.5 prompts the
transformer width (no caption projection) with their own audio prompt — each accepted on its layout and refused on
the other with a message naming the input; then the edit itself runs on the 2.3 layout."""

from __future__ import annotations

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel
from layout_support import PRESET, layout_transformer

from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.edit.context import prepare_edit
from editctrl_core.edit.sampler import SamplerSettings, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.editmodel import EditModel
from editctrl_core.loading.models import build_vae

CAPTION = 48  # LTX-2.0's caption projection input, chosen unlike the tiny width (32) so the layouts differ


def _model(layout: str) -> EditModel:
    if layout == "ltx-2.0":
        torch.manual_seed(0)
        transformer = LTX2VideoTransformer3DModel(**{**PRESET.transformer, "caption_channels": CAPTION}).eval()
    else:
        transformer = layout_transformer(layout)
    return EditModel(SCDModel(transformer, SCDOptions(split_layer=PRESET.split_layer)), PRESET, "memory")


def _prompt(width: int, audio_width: int | None = None, tokens: int = 6) -> TextConditioning:
    gen = torch.Generator().manual_seed(width)
    audio = None if audio_width is None else torch.randn(1, tokens, audio_width, generator=gen)
    return TextConditioning(torch.randn(1, tokens, width, generator=gen), torch.ones(1, tokens), "p", audio)


@pytest.fixture(scope="module")
def ctx():
    frames, mask = torch.rand(9, 64, 96, 3), torch.zeros(9, 64, 96)
    mask[:, :32, :32] = 1
    return prepare_edit(build_vae(PRESET), frames, mask)


def test_each_layout_takes_its_own_prompt_width_and_refuses_the_other(ctx):
    t = PRESET.transformer
    inner, caption, audio = t["num_attention_heads"] * t["attention_head_dim"], CAPTION, t["audio_cross_attention_dim"]
    v20, v23 = _model("ltx-2.0"), _model("ltx-2.3")
    v20.check_inputs(ctx, {"positive": _prompt(caption)})
    v23.check_inputs(ctx, {"positive": _prompt(inner, audio), "negative": None})
    with pytest.raises(ValueError, match=f"positive conditioning: the prompt embeddings are {inner} wide but the "
                                         f"model expects {caption}"):
        v20.check_inputs(ctx, {"positive": _prompt(inner)})
    with pytest.raises(ValueError, match=f"region 1 conditioning: the prompt embeddings are {caption} wide"):
        v23.check_inputs(ctx, {"positive": _prompt(inner, audio), "region 1": _prompt(caption, audio)})
    with pytest.raises(ValueError, match=f"negative conditioning: the audio prompt embeddings are {audio + 1} wide"):
        v23.check_inputs(ctx, {"negative": _prompt(inner, audio + 1)})


def test_latent_channels_are_checked(ctx):
    bad = prepare_edit(build_vae(PRESET), torch.rand(9, 64, 64, 3), torch.ones(9, 64, 64))
    bad.source_latents = bad.source_latents[:, :-1]
    with pytest.raises(ValueError, match="latent channels but the model takes"):
        _model("ltx-2.0").check_inputs(bad, {})


@pytest.mark.parametrize("mode", ["training_free", "full", "scd"])
def test_a_2_3_layout_edit_runs_with_a_2_3_prompt(ctx, mode):
    t = PRESET.transformer
    model = _model("ltx-2.3")
    prompt = _prompt(t["num_attention_heads"] * t["attention_head_dim"], t["audio_cross_attention_dim"])
    negative = _prompt(t["num_attention_heads"] * t["attention_head_dim"], t["audio_cross_attention_dim"], 4)
    model.check_inputs(ctx, {"positive": prompt, "negative": negative})
    result = sample_edit(model.scd, ctx, prompt, negative, SamplerSettings(steps=2, mode=mode))
    inside = result.edit_tokens[None, None].expand_as(ctx.source_latents)
    assert torch.isfinite(result.latents).all()
    assert torch.equal(result.latents[~inside], ctx.source_latents[~inside])
    assert not torch.allclose(result.latents[inside], ctx.source_latents[inside])


def _prompts_23() -> tuple[TextConditioning, TextConditioning]:
    t = PRESET.transformer
    inner, audio = t["num_attention_heads"] * t["attention_head_dim"], t["audio_cross_attention_dim"]
    return _prompt(inner, audio), _prompt(inner, audio, 4)


@pytest.mark.parametrize("layout", ["ltx-2.0", "ltx-2.3"])
@pytest.mark.parametrize("mode", ["auto", "training_free", "full"])
def test_edit_is_the_sampler_with_the_choices_made_and_said(ctx, mode, layout):
    """`EditModel.edit` (what the Edit Sampler node calls, in-process here) runs the same edit as `sample_edit` with
    the resolved mode and schedule, calls `ready` once with them before sampling, and says what ran; compile is
    dropped on CPU. On each layout with its own prompt widths."""
    model = _model(layout)
    prompt, negative = _prompts_23() if layout == "ltx-2.3" else (_prompt(CAPTION), _prompt(CAPTION, tokens=4))
    seen = []
    result = model.edit(ctx, prompt, negative, SamplerSettings(steps=2, seed=3, compile=True), mode=mode,
                        ready=seen.append)
    ran = "training_free" if mode == "auto" else mode
    assert [(s.mode, s.scheduler, s.compile) for s in seen] == [(ran, "ltx2", False)]
    direct = sample_edit(model.scd, ctx, prompt, negative, SamplerSettings(steps=2, seed=3, mode=ran))
    assert result.mode == ran and torch.equal(result.latents, direct.latents)
    assert result.notes[0].startswith(f"mode {ran}: ")
    assert result.notes[-2].startswith("σ schedule ltx2: auto chose it because the checkpoint does not say it is "
                                       "distilled"), result.notes
    assert result.notes[-1].startswith("edited ") and "2 denoising passes" in result.notes[-1]


def test_a_refused_edit_loads_nothing(ctx):
    """Every check runs before `ready` (the node moves weights to the GPU there): a bad setting, a prompt of the
    wrong width or a mode that cannot run leaves it uncalled."""
    model = _model("ltx-2.3")
    prompt, negative = _prompts_23()
    called = []
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.edit(ctx, prompt, negative, SamplerSettings(steps=0), ready=called.append)
    with pytest.raises(ValueError, match="positive conditioning: the prompt embeddings are"):
        model.edit(ctx, _prompt(CAPTION), negative, SamplerSettings(steps=2), ready=called.append)
    with pytest.raises(ValueError, match="the distilled schedule has 8 steps"):
        model.edit(ctx, prompt, negative, SamplerSettings(steps=3), scheduler="distilled", ready=called.append)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.edit(ctx, prompt, negative, SamplerSettings(steps=2), mode="fast", ready=called.append)
    assert called == []
