"""Cached fast paths equal the uncached ones: text/global/prefix K/V caches, chunked causal encoder, full step."""

from dataclasses import replace

import pytest
import torch
from checkpoint_support import assert_checkpointing_keeps_gradients
from layout_support import LAYOUTS, layout_transformer, pipeline_forward, with_audio_embeds

from editctrl_core.conditioning.text import TextConditioning, concat_conditionings
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.adapters import (
    GlobalContextConfig,
    GlobalContextEmbedder,
    LocalContextConfig,
    LocalContextModule,
)
from editctrl_core.edit.context import to_tokens
from editctrl_core.edit.fast_decode import FastDecoder, FastStack, fast_encode
from editctrl_core.edit.kv_cache import PrefixAttention
from editctrl_core.edit.scd import SCDModel, SCDOptions, one_way_prefix_bias
from editctrl_core.loading.models import build_transformer, load_preset

PRESET = load_preset("tiny")
INNER = PRESET.transformer["num_attention_heads"] * PRESET.transformer["attention_head_dim"]
CH = PRESET.transformer["in_channels"]
DEC = PRESET.transformer["num_layers"] - PRESET.split_layer
GRID = (3, 4, 5)


def global_input(background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A global-context input [1,C+1,f,h,w] for these unit tests (latents plus the edit-mask channel)."""
    return torch.cat([background, mask[None, None].to(background)], dim=1)


def _adapters() -> tuple[LocalContextModule, GlobalContextEmbedder]:
    """Adapters with non-zero output projections, so their residuals really reach the decoder."""
    torch.manual_seed(0)
    local = LocalContextModule(LocalContextConfig(in_channels=CH + 1, width=16, num_blocks=2, heads=2, head_dim=8,
                                                  text_dim=INNER, model_dim=INNER, target_blocks=(0, 1)))
    glob = GlobalContextEmbedder(GlobalContextConfig(in_channels=CH + 1, model_dim=INNER, max_tokens=8, heads=2,
                                                     head_dim=8, target_blocks=tuple(range(DEC))))
    with torch.no_grad():
        for p in list(local.out_proj.parameters()) + list(glob.parameters()):
            p.normal_(0, 0.3)
    return local, glob


def _padding_after(mask: torch.Tensor, keep: int) -> torch.Tensor:
    """`mask` with every token after the first `keep` marked as padding (the LTX connectors' registers fill the
    padding, so a prompt from them is all valid; an encoder without registers pads like this)."""
    out = mask.clone()
    out[:, keep:] = 0
    return out


@pytest.fixture(scope="module")
def setup():
    model = build_transformer(PRESET)
    enc = build_tiny_text_encoder()
    positive = enc.encode(["a red boat on a lake"])
    empty = enc.encode([""])
    text = concat_conditionings([positive, TextConditioning(empty.embeds, _padding_after(empty.mask, 12))])
    assert not bool(text.mask.all())  # padded prompt: the text mask is exercised
    gen = torch.Generator().manual_seed(3)
    background = torch.randn(1, CH, *GRID, generator=gen)
    mask = torch.zeros(GRID, dtype=torch.bool)
    mask[1:, 1:3, 1:4] = True
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    local, glob = _adapters()
    scd.attach(local, glob)
    index = mask.flatten().nonzero().squeeze(1)
    with torch.no_grad():
        context = scd.encode(to_tokens(background), GRID, positive)
        plan = scd.plan(index, context, GRID, text, background=background, edit_mask=mask,
                        global_input=global_input(background, mask))
    x = torch.randn(2, index.numel(), CH, generator=gen)
    return scd, plan, text, background, x, positive


def _with_prefix(scd: SCDModel, prefix: str) -> SCDModel:
    """The same transformer and adapters under another prefix mode."""
    other = SCDModel(scd.transformer, replace(scd.options, prefix=prefix))
    other.attach(scd.local, scd.global_context)
    return other


@pytest.mark.parametrize("prefix", ["one_way", "bidirectional"])
def test_cached_path_equals_scd_decode(setup, prefix):
    scd, plan, _, _, x, _ = setup
    scd = _with_prefix(scd, prefix)
    sigma = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        ref = scd.decode(plan, x, sigma)
        fast = FastDecoder(scd, plan)
        out = fast(x, sigma)
        again = fast(x, torch.tensor([0.3, 0.3]))
    assert fast.one_way == (prefix == "one_way")
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(again, out)  # σ really changes the cached path's output


def test_prefix_modes_differ_and_one_way_is_default(setup):
    scd, plan, _, _, x, _ = setup
    assert SCDOptions(split_layer=1).prefix == "one_way"
    with pytest.raises(ValueError, match="prefix mode"):
        SCDOptions(split_layer=1, prefix="sideways")
    sigma = torch.tensor([0.6, 0.6])
    with torch.no_grad():
        one_way = _with_prefix(scd, "one_way").decode(plan, x, sigma)
        both = _with_prefix(scd, "bidirectional").decode(plan, x, sigma)
    assert not torch.allclose(one_way, both, atol=1e-4)


def test_one_way_prefix_cache_equals_uncached_masked_decoder(setup):
    scd, plan, _, _, x, _ = setup
    n = plan.index.numel()
    bias = one_way_prefix_bias(n, 2, x.device, torch.float32)
    with torch.no_grad():
        cached = FastDecoder(scd, plan, one_way_prefix=True)
        uncached = FastDecoder(scd, plan, one_way_prefix=False, self_bias=bias)
        bidirectional = FastDecoder(scd, plan, one_way_prefix=False)
        for s in (0.9, 0.4):
            sigma = torch.tensor([s, s])
            torch.testing.assert_close(cached(x, sigma), uncached(x, sigma), atol=2e-5, rtol=1e-5)
        assert not torch.allclose(cached(x, sigma), bidirectional(x, sigma), atol=1e-4)
        plan.prefix = plan.prefix + 1.0
        try:
            moved = FastDecoder(scd, plan, one_way_prefix=True)(x, sigma)
        finally:
            plan.prefix = plan.prefix - 1.0
    assert not torch.allclose(moved, cached(x, sigma), atol=1e-4)  # the cached prefix is really used


def test_chunked_causal_encoder_equals_masked_encoder(setup):
    scd, _, _, background, _, positive = setup
    with torch.no_grad():
        ref = scd.encode(to_tokens(background), GRID, positive)
        fast = fast_encode(scd, to_tokens(background), GRID, positive)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_full_step_equals_plain_model(setup):
    scd, _, text, background, _, _ = setup
    plain = SCDModel(scd.transformer, SCDOptions(split_layer=PRESET.split_layer, causal=False, shift=False,
                                                 concat=False))
    x = to_tokens(background).expand(2, -1, -1)
    sigma = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        ref = plain.forward_split(x, sigma, GRID, text)
        stack = FastStack(scd.stack, text)
        fast = stack.full_step(x, sigma, stack.rope(GRID, 2))
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_compiled_blocks_equal_eager_and_compile_once_for_any_token_count(setup):
    """torch.compile over the decoder blocks (the "eager" backend here: the same dynamo tracing and dynamic shapes as inductor on a
    GPU, without code generation) reproduces the eager path, and a new edit with another token count reuses
    the compiled graphs instead of recompiling."""
    from torch._dynamo.utils import counters

    scd, plan, text, background, x, positive = setup
    torch._dynamo.reset()
    counters.clear()
    sigma = torch.tensor([0.8, 0.8])
    with torch.no_grad():
        eager = FastDecoder(scd, plan)(x, sigma)
        compiled = FastDecoder(scd, plan, compile="eager")
        torch.testing.assert_close(compiled(x, sigma), eager, atol=1e-5, rtol=1e-5)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        mask = torch.zeros(GRID, dtype=torch.bool)
        mask[:, :2, :] = True
        index = mask.flatten().nonzero().squeeze(1)
        assert index.numel() != plan.index.numel()
        context = scd.encode(to_tokens(background), GRID, positive)
        other = scd.plan(index, context, GRID, text, background=background, edit_mask=mask,
                        global_input=global_input(background, mask))
        y = torch.randn(2, index.numel(), CH, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(FastDecoder(scd, other, compile="eager")(y, sigma),
                                   FastDecoder(scd, other)(y, sigma), atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs, "a new token count recompiled the blocks"
    torch._dynamo.reset()


def _layout_model(layout: str, prefix: str) -> tuple[SCDModel, TextConditioning, TextConditioning, torch.Generator]:
    """A tiny model with an LTX-2.3/2.5 block layout, both adapters attached, and its prompts (positive, CFG pair)."""
    model = layout_transformer(layout)
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer, prefix=prefix))
    local, glob = _adapters()
    scd.attach(local, glob)
    enc = build_tiny_text_encoder()
    gen = torch.Generator().manual_seed(4)
    positive = with_audio_embeds(enc.encode(["a red boat on a lake"]), gen)
    return scd, positive, concat_conditionings([positive, with_audio_embeds(enc.encode([""]), gen)]), gen


def _layout_edit(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Background latents, an edit mask and its token indices for the layout tests."""
    background = torch.randn(1, CH, *GRID, generator=gen)
    mask = torch.zeros(GRID, dtype=torch.bool)
    mask[:, 1:3, 2:5] = True
    return background, mask, mask.flatten().nonzero().squeeze(1)


@pytest.mark.parametrize("prefix", ["one_way", "bidirectional"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fast_path_reproduces_ltx23_and_ltx25_blocks(layout, prefix):
    """Gated attention + prompt AdaLN (σ-modulated prompt on 2.3, static on 2.5): the cached path equals
    SCDModel.decode through diffusers' own blocks, with both adapters attached."""
    scd, positive, text, gen = _layout_model(layout, prefix)
    assert scd.stack.model.transformer_blocks[0].video_cross_attn_adaln
    background, mask, index = _layout_edit(gen)
    x = torch.randn(2, index.numel(), CH, generator=gen)
    with torch.no_grad():
        context = scd.encode(to_tokens(background), GRID, positive)
        torch.testing.assert_close(fast_encode(scd, to_tokens(background), GRID, positive), context, atol=3e-5,
                                   rtol=1e-5)
        plan = scd.plan(index, context, GRID, text, background=background, edit_mask=mask,
                        global_input=global_input(background, mask))
        fast = FastDecoder(scd, plan)
        assert fast.sigma_text == (layout == "ltx-2.3")
        for s in (0.9, 0.3):
            sigma = torch.tensor([s, s])
            ref = scd.decode(plan, x, sigma)
            assert ref.abs().max() > 0.1
            torch.testing.assert_close(fast(x, sigma), ref, atol=3e-5, rtol=1e-5)


def _pipeline_decoder(scd: SCDModel, plan, x: torch.Tensor, sigma: torch.Tensor, text: TextConditioning
                      ) -> torch.Tensor:
    """The SCD decoder through diffusers' own forward called as LTX2Pipeline calls it (blocks [k, N) only, the plan's
    prefix in place of proj_in's output), so diffusers derives every modulation from timestep = sigma = σ·1000.
    Bidirectional prefix: one pass over [prefix; noisy] with per-token timesteps (0 on the prefix). One-way prefix: a
    pass over the prefix at σ=0 that keeps each block's self-attention keys/values, then the noisy tokens' pass
    attending to [prefix; own]."""
    model, n = scd.transformer, plan.index.numel()
    blocks = model.transformer_blocks
    decoder = torch.nn.ModuleList(list(blocks)[scd.split_layer:])
    originals = [b.attn1.processor for b in decoder]
    model.transformer_blocks = decoder

    def replace_proj_in(make):
        return model.proj_in.register_forward_hook(lambda module, args, out: make(out))

    try:
        if scd.options.prefix == "bidirectional":
            token_sigma = torch.cat([torch.zeros(x.shape[0], n), sigma[:, None].expand(-1, n)], dim=1)
            handle = replace_proj_in(lambda out: torch.cat([plan.prefix, out], dim=1))
            try:
                out = pipeline_forward(model, x, sigma, text, torch.cat([plan.coords, plan.coords], dim=2),
                                       token_sigma=token_sigma)
            finally:
                handle.remove()
            return out[:, n:]
        caches = [PrefixAttention() for _ in decoder]
        for block, cache in zip(decoder, caches):
            block.attn1.set_processor(cache)
        handle = replace_proj_in(lambda out: plan.prefix)
        try:
            pipeline_forward(model, x, torch.zeros_like(sigma), text, plan.coords)
        finally:
            handle.remove()
        for cache in caches:
            cache.mode = "prepend"
        return pipeline_forward(model, x, sigma, text, plan.coords)
    finally:
        model.transformer_blocks = blocks
        for block, original in zip(decoder, originals):
            block.attn1.set_processor(original)


@pytest.mark.parametrize("prefix", ["one_way", "bidirectional"])
@pytest.mark.parametrize("layout", ["ltx-2.0", "ltx-2.3", "ltx-2.5"])
def test_decoders_equal_diffusers_forward_as_the_pipeline_calls_it(layout, prefix):
    """SCDModel.decode and the cached FastDecoder equal the decoder run through diffusers' forward with the scaled
    timestep LTX2Pipeline passes (timestep = sigma = σ·1000): LTX-2.3's prompt AdaLN gets σ·1000 like every AdaLN."""
    model = layout_transformer(layout)
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer, prefix=prefix))
    enc = build_tiny_text_encoder()
    gen = torch.Generator().manual_seed(4)
    positive, negative = enc.encode(["a red boat on a lake"]), enc.encode([""])
    if layout != "ltx-2.0":
        positive, negative = with_audio_embeds(positive, gen), with_audio_embeds(negative, gen)
    text = concat_conditionings([positive, negative])
    background, mask, index = _layout_edit(gen)
    x = torch.randn(2, index.numel(), CH, generator=gen)
    with torch.no_grad():
        plan = scd.plan(index, scd.encode(to_tokens(background), GRID, positive), GRID, text)
        fast = FastDecoder(scd, plan)
        for s in (0.9, 0.3):
            sigma = torch.tensor([s, s])
            ref = _pipeline_decoder(scd, plan, x, sigma, text)
            assert ref.abs().max() > 0.1
            torch.testing.assert_close(scd.decode(plan, x, sigma), ref, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(fast(x, sigma), ref, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", ["one_way", "bidirectional"])
def test_per_token_prompt_masks_of_several_regions(setup, prefix):
    """Multi-region edits restrict each token to its region's prompt tokens: the fast path keeps those masks (split
    between the one-way prefix pass and the noisy tokens) and equals SCDModel.decode."""
    scd, _, text, background, x, positive = setup
    scd = _with_prefix(scd, prefix)
    mask = torch.zeros(GRID, dtype=torch.bool)
    mask[1:, 1:3, 1:4] = True
    index = mask.flatten().nonzero().squeeze(1)
    keep = torch.zeros(2, index.numel(), text.embeds.shape[1], dtype=torch.bool)
    keep[:, : index.numel() // 2, :3] = True
    keep[:, index.numel() // 2:, 2:] = True
    sigma = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        context = scd.encode(to_tokens(background), GRID, positive)
        plan = scd.plan(index, context, GRID, text, background=background, edit_mask=mask, text_keep=keep,
                        global_input=global_input(background, mask))
        ref = scd.decode(plan, x, sigma)
        torch.testing.assert_close(FastDecoder(scd, plan)(x, sigma), ref, atol=2e-5, rtol=1e-5)
        unmasked = scd.plan(index, context, GRID, text, background=background, edit_mask=mask,
                        global_input=global_input(background, mask))
        assert not torch.allclose(scd.decode(unmasked, x, sigma), ref, atol=1e-4)  # the masks really matter


def test_two_pass_one_way_decode_equals_the_masked_single_pass(setup):
    """SCDModel.decode runs the one-way prefix as two passes (prefix, then noisy tokens against its kept keys/values):
    the same numbers as one pass over [prefix; noisy] under the additive one-way mask through diffusers' blocks."""
    model = setup[0].transformer
    _, _, text, background, x, positive = setup
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    mask = torch.zeros(GRID, dtype=torch.bool)
    mask[:, 1:4, 0:3] = True
    index = mask.flatten().nonzero().squeeze(1)
    x = torch.randn(2, index.numel(), CH, generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        plan = scd.plan(index, scd.encode(to_tokens(background), GRID, positive), GRID, text)
        s, n = scd.stack, index.numel()
        time = s.time(sigma, sigma)
        hidden = torch.cat([plan.prefix, s.model.proj_in(x)], dim=1)
        time.temb = torch.cat([plan.prefix_time, time.temb.expand(-1, n, -1)], dim=1)
        masked = s.run_blocks(hidden, scd.split_layer, s.num_layers, plan.text, time, plan.rotary,
                              one_way_prefix_bias(n, 2, x.device, torch.float32))
        ref = s.head(masked[:, n:], time.embedded)
        torch.testing.assert_close(scd.decode(plan, x, sigma), ref, atol=2e-5, rtol=1e-5)


def test_ltx23_two_pass_decoder_trains_under_gradient_checkpointing():
    """On LTX-2.3 the one-way decoder runs each block twice (prefix at σ=0, then the noisy tokens): checkpointed
    recomputation in the backward pass must reproduce both passes, so adapter gradients match the plain run."""
    scd, positive, _, gen = _layout_model("ltx-2.3", "one_way")
    background, mask, index = _layout_edit(gen)
    x = torch.randn(1, index.numel(), CH, generator=gen)
    with torch.no_grad():
        context = scd.encode(to_tokens(background), GRID, positive)
    assert_checkpointing_keeps_gradients(scd, index, context, GRID, positive, background, mask, x)
