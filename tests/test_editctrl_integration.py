"""EditCtrl adapters attached to the SCD decoder: fresh ones change nothing, trained ones act on the edit only."""

import pytest
import torch
from checkpoint_support import assert_checkpointing_keeps_gradients

from editctrl_core.adapters import GlobalContextConfig, GlobalContextEmbedder, LocalContextConfig, LocalContextModule
from editctrl_core.context import EditContext
from editctrl_core.geometry import grid_for
from editctrl_core.masks import dilate_token_mask, token_mask_to_pixel_mask
from editctrl_core.models import build_transformer, load_preset
from editctrl_core.sampler import SamplerSettings, sample_edit
from editctrl_core.scd import SCDModel, SCDOptions
from editctrl_core.text import TinyTextEncoder

PRESET = load_preset("tiny")
INNER = PRESET.transformer["num_attention_heads"] * PRESET.transformer["attention_head_dim"]
CH = PRESET.transformer["in_channels"]
DEC = PRESET.transformer["num_layers"] - PRESET.split_layer


def tiny_local() -> LocalContextModule:
    torch.manual_seed(0)
    return LocalContextModule(LocalContextConfig(in_channels=CH + 1, width=16, num_blocks=1, heads=2, head_dim=8,
                                                 text_dim=INNER, model_dim=INNER, target_blocks=(0,)))


def tiny_global() -> GlobalContextEmbedder:
    torch.manual_seed(1)
    return GlobalContextEmbedder(GlobalContextConfig(in_channels=CH + 1, model_dim=INNER, max_tokens=16, heads=2,
                                                     head_dim=8, target_blocks=tuple(range(DEC))))


@pytest.fixture(scope="module")
def setup():
    model = build_transformer(PRESET)
    enc = TinyTextEncoder(PRESET)
    f, h, w = 3, 4, 5
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(1, CH, f, h, w, generator=gen)
    tok = torch.zeros(f, h, w, dtype=torch.bool)
    tok[1:, 1:3, 1:3] = True
    frames = (f - 1) * 8 + 1
    ctx = EditContext(torch.zeros(frames, h * 32, w * 32, 3), token_mask_to_pixel_mask(tok, frames), src,
                      src.masked_fill(tok.view(1, 1, f, h, w), 0.0), tok, grid_for(frames, h * 32, w * 32))
    return model, enc.encode(["a boat"]), enc.encode([""]), ctx


def _run(model, pos, neg, ctx, local=None, global_context=None):
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    scd.attach(local, global_context)
    return sample_edit(scd, ctx, pos, neg, SamplerSettings(steps=3, seed=5)).latents


def test_fresh_adapters_change_nothing(setup):
    model, pos, neg, ctx = setup
    plain = _run(model, pos, neg, ctx)
    with_adapters = _run(model, pos, neg, ctx, tiny_local(), tiny_global())
    assert torch.equal(plain, with_adapters)


@pytest.mark.parametrize("which", ["local", "global"])
def test_trained_adapters_change_only_the_edit_tokens(setup, which):
    model, pos, neg, ctx = setup
    local, glob = tiny_local(), tiny_global()
    with torch.no_grad():
        for p in (local.out_proj.parameters() if which == "local" else glob.parameters()):
            p.normal_(0, 0.5)
    plain = _run(model, pos, neg, ctx)
    out = _run(model, pos, neg, ctx, local if which == "local" else None, glob if which == "global" else None)
    edit = dilate_token_mask(ctx.token_mask, 1)
    assert not torch.allclose(plain[:, :, edit], out[:, :, edit])
    assert torch.equal(plain[:, :, ~edit], out[:, :, ~edit])


def test_adapter_for_another_model_is_refused(setup):
    model = setup[0]
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    wrong = LocalContextModule(LocalContextConfig(in_channels=CH + 1, width=16, num_blocks=1, heads=2, head_dim=8,
                                                  text_dim=INNER, model_dim=64, target_blocks=(0, 7)))
    with pytest.raises(ValueError) as err:
        scd.attach(local=wrong)
    assert "model_dim 64" in str(err.value) and "target blocks [7]" in str(err.value)


def test_global_branch_survives_gradient_checkpointing(setup):
    """Checkpointed decoder blocks recompute their forward in the backward pass: the global-context branch must be
    there both times, and the gradients must equal those of an un-checkpointed pass."""
    model, pos, _, ctx = setup
    glob = tiny_global()
    with torch.no_grad():
        for p in glob.parameters():
            p.normal_(0, 0.3)
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    scd.attach(global_context=glob)
    index = ctx.token_mask.flatten().nonzero().squeeze(1)
    with torch.no_grad():
        context = scd.encode(ctx.background_latents.flatten(2).transpose(1, 2), ctx.grid.shape, pos)
    x = torch.randn(1, index.numel(), CH, generator=torch.Generator().manual_seed(2))
    assert_checkpointing_keeps_gradients(scd, index, context, ctx.grid.shape, pos, ctx.background_latents,
                                         ctx.token_mask, x)
