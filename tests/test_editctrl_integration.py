"""EditCtrl adapters attached to the SCD decoder: fresh ones change nothing, trained ones act on the edit only."""

import pytest
import torch
import torch.nn.functional as F
from checkpoint_support import assert_checkpointing_keeps_gradients

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit import adapters
from editctrl_core.edit.adapters import (
    GlobalContextConfig,
    GlobalContextEmbedder,
    LocalContextConfig,
    LocalContextModule,
)
from editctrl_core.edit.context import EditContext, global_input, prepare_edit
from editctrl_core.edit.geometry import grid_for
from editctrl_core.edit.masks import dilate_token_mask, token_mask_to_pixel_mask
from editctrl_core.edit.sampler import SamplerSettings, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.models import build_transformer, build_vae, load_preset
from editctrl_core.media.vae import encode_frames

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
    enc = build_tiny_text_encoder()
    f, h, w = 3, 4, 5
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(1, CH, f, h, w, generator=gen)
    tok = torch.zeros(f, h, w, dtype=torch.bool)
    tok[1:, 1:3, 1:3] = True
    frames = (f - 1) * 8 + 1
    ctx = EditContext(torch.rand(frames, h * 32, w * 32, 3, generator=gen), token_mask_to_pixel_mask(tok, frames),
                      src, src.masked_fill(tok.view(1, 1, f, h, w), 0.0), tok, grid_for(frames, h * 32, w * 32),
                      vae=build_vae(PRESET))
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


def _decode_with_local(model, pos, ctx, local, x):
    """(velocity, hints) of one decoder pass over the dilated edit tokens x at σ=0.6, with `local` attached."""
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    scd.attach(local=local)
    index = dilate_token_mask(ctx.token_mask, 1).flatten().nonzero().squeeze(1)
    with torch.no_grad():
        context = scd.encode(ctx.background_latents.flatten(2).transpose(1, 2), ctx.grid.shape, pos)
        plan = scd.plan(index, context, ctx.grid.shape, pos, background=ctx.background_latents,
                        edit_mask=ctx.token_mask)
        seen = []
        handle = local.register_forward_hook(lambda m, a, out: seen.append({k: v.clone() for k, v in out.items()}))
        try:
            velocity = scd.decode(plan, x, torch.tensor([0.6]))
        finally:
            handle.remove()
    return velocity, seen[0], index


def test_local_hints_depend_on_the_noisy_tokens_in_the_decoder(setup):
    """The decoder hands x_t of the selected tokens to the local module (EditCtrl/VACE): its hints and the velocity
    change with x_t; x_t of tokens outside the selection never reaches it (the sampler gathers the selected ones)."""
    model, pos, _, ctx = setup
    local = tiny_local()
    with torch.no_grad():
        for p in local.out_proj.parameters():
            p.normal_(0, 0.5)
    n = int(dilate_token_mask(ctx.token_mask, 1).sum())
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(1, CH, *ctx.grid.shape, generator=gen)
    index = dilate_token_mask(ctx.token_mask, 1).flatten().nonzero().squeeze(1)
    x = full.flatten(2).transpose(1, 2)[:, index]
    v1, h1, _ = _decode_with_local(model, pos, ctx, local, x)
    v2, h2, _ = _decode_with_local(model, pos, ctx, local, x + torch.randn(1, n, CH, generator=gen))
    assert (h1[0] - h2[0]).abs().max() > 1e-3
    outside = full.clone()
    outside[:, :, ~dilate_token_mask(ctx.token_mask, 1)] += 5.0
    v3, h3, _ = _decode_with_local(model, pos, ctx, local, outside.flatten(2).transpose(1, 2)[:, index])
    assert torch.equal(h1[0], h3[0]) and torch.equal(v1, v3)
    zero = tiny_local()
    plain, _, _ = _decode_with_local(model, pos, ctx, zero, x)
    assert (v1 - plain).abs().max() > 1e-4


def test_global_embedder_copies_the_models_patch_embedding(setup):
    model = setup[0]
    glob = GlobalContextEmbedder(tiny_global().config, patch_embedding=model.proj_in)
    low = torch.cat([torch.randn(1, CH, 3, 4, 5), torch.zeros(1, 1, 3, 4, 5)], dim=1)
    pooled = glob.pool(low)[:, :CH].flatten(2).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(glob(low), model.proj_in(pooled.to(model.proj_in.weight.dtype)).float(), atol=1e-5)


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
                                         ctx.token_mask, x, global_input=ctx.global_input())


def test_global_input_is_the_vae_latents_of_the_low_resolution_masked_frames():
    """EditCtrl's global input: 9 of the clip's 8n+1 frames, resized to ~256 px on the long side (multiples of 32),
    VAE-encoded, the edit region blanked to the grey clip's latents and the low-resolution mask appended."""
    vae = build_vae(PRESET)
    gen = torch.Generator().manual_seed(7)
    frames = torch.rand(17, 320, 512, 3, generator=gen)
    pixel = torch.zeros(17, 320, 512)
    pixel[9:, 64:192, 128:320] = 1.0  # latent frame 2, rows 2:6, columns 4:10 of the 10x16 grid
    ctx = prepare_edit(vae, frames, pixel)
    got = global_input(vae, ctx.frames, ctx.token_mask)
    small = F.interpolate(frames[list(range(0, 17, 2))].permute(0, 3, 1, 2), size=(160, 256), mode="bilinear",
                          antialias=True, align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    latents = encode_frames(vae, small)
    grey = encode_frames(vae, torch.full_like(small, 0.5))
    low = torch.zeros(2, 5, 8, dtype=torch.bool)
    low[1, 1:3, 2:5] = True  # latent frame 1 of the 9 frames covers pixel frames 2..16 (full latent frames 1, 2)
    expected = torch.cat([torch.where(low, grey, latents), low[None, None].float()], dim=1)
    assert got.shape == (1, CH + 1, 2, 5, 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(ctx.global_input(), got)
    assert ctx.global_latents is not None  # encoded once, kept on the context


def test_sampler_feeds_the_global_embedder_the_low_resolution_input(setup, monkeypatch):
    """A sampler edit with a global adapter embeds `global_input(vae, frames, edit mask)`, not pooled latents; an
    edit without one never runs the low-resolution encode."""
    model, pos, neg, ctx = setup
    seen = []
    forward = adapters.GlobalContextEmbedder.forward
    monkeypatch.setattr(adapters.GlobalContextEmbedder, "forward",
                        lambda self, x: seen.append(x.clone()) or forward(self, x))
    fresh = EditContext(ctx.frames, ctx.mask, ctx.source_latents, ctx.background_latents, ctx.token_mask, ctx.grid,
                        vae=ctx.vae)
    _run(model, pos, neg, fresh)
    assert not seen and fresh.global_latents is None
    _run(model, pos, neg, fresh, global_context=tiny_global())
    assert seen and fresh.global_latents is not None
    expected = global_input(ctx.vae, ctx.frames, ctx.token_mask)
    assert all(torch.equal(x, expected) for x in seen)
    assert expected.shape[1:] == (CH + 1, 2, 4, 5)
