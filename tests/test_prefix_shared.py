"""The one-way prefix is implemented once: the reference processors (kv_cache) and the fast blocks (fast_decode,
training_free's FastMaskLocal) project, rotate and attend through editctrl_core.edit.prefix_attention, and the fast
local module is LocalContextModule's own prepare/step.

- at one attention, the reference processor's recorded prefix keys/values are bit-identical to the fast path's
  (precomputed split-rope tables included) and its [prefix; own] output equals the fast buffer's;
- both edit paths call the one projection for every block's prefix and every step, and give the same per-block
  prefix keys/values (the fast block reorders RMSNorm/AdaLN arithmetic: the 2e-5 bound of test_training_free.py);
- FastLocal's hints are LocalContextModule.forward's, exactly.
"""

from __future__ import annotations

import pytest
import torch
from layout_support import layout_transformer, with_audio_embeds

from editctrl_core.conditioning.text import concat_conditionings
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit import kv_cache, training_free
from editctrl_core.edit import prefix_attention as pa
from editctrl_core.edit.adapters import LocalContextConfig, LocalContextModule, token_coords
from editctrl_core.edit.fast_decode import FastLocal
from editctrl_core.edit.kv_cache import PrefixAttention
from editctrl_core.edit.scd import LTX2Stack
from editctrl_core.edit.training_free import FastMaskLocal, MaskLocalModel
from editctrl_core.loading.models import load_preset

PRESET = load_preset("tiny")
CH = PRESET.transformer["in_channels"]
INNER = PRESET.transformer["num_attention_heads"] * PRESET.transformer["attention_head_dim"]
GRID = (3, 4, 5)
N = GRID[0] * GRID[1] * GRID[2]
LAYOUTS = ["ltx-2.0", "ltx-2.3", "ltx-2.5"]


def _rope(stack: LTX2Stack, index: torch.Tensor, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' rotary tables of the tokens `index` of GRID."""
    return stack.rope(stack.video_coords(GRID, batch)[:, :, index])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_processor_and_fast_path_share_the_prefix_keys_values_and_attention(layout):
    model = layout_transformer(layout)
    stack, attn = LTX2Stack(model), model.transformer_blocks[0].attn1
    gen = torch.Generator().manual_seed(5)
    prefix_index, own_index = torch.arange(0, 24), torch.arange(30, 42)
    prefix = torch.randn(2, prefix_index.numel(), INNER, generator=gen)
    own = torch.randn(2, own_index.numel(), INNER, generator=gen)
    prefix_rope, own_rope = _rope(stack, prefix_index), _rope(stack, own_index)
    processor = PrefixAttention()
    with torch.no_grad():
        recorded = processor(attn, prefix, query_rotary_emb=prefix_rope)
        torch.testing.assert_close(recorded, attn(prefix, query_rotary_emb=prefix_rope))  # diffusers' processor
        fast_prefix = pa.project_kv(attn, prefix, pa.split_rope(prefix_rope, attn.rope_type), attn.rope_type)
        assert torch.equal(processor.cache.k, fast_prefix.k) and torch.equal(processor.cache.v, fast_prefix.v)
        processor.mode = "prepend"
        reference = processor(attn, own, query_rotary_emb=own_rope)
        rope = pa.split_rope(own_rope, attn.rope_type)
        buffer = pa.PrefixBuffer.around(fast_prefix, own.shape[1])
        kv, kept = pa.keys_with_prefix(attn, own, rope, attn.rope_type, buffer)
        assert kv is buffer and kept is None
        fast = pa.attention_out(attn, pa.attention(pa.project_query(attn, own, rope, attn.rope_type), kv.k, kv.v), own)
    assert torch.equal(fast, reference)
    assert not torch.allclose(reference, attn(own, query_rotary_emb=own_rope), atol=1e-4), "the prefix must count"


def _mask_local(layout: str):
    """A training_free edit of a quarter of GRID on a layout's tiny model: (model, plan, x)."""
    gen = torch.Generator().manual_seed(3)
    stack = LTX2Stack(layout_transformer(layout))
    enc = build_tiny_text_encoder()
    text = concat_conditionings([enc.encode(["a red ball"]), enc.encode(["blurry"])])
    if layout != "ltx-2.0":
        text = with_audio_embeds(text, gen)
    tokens = torch.randn(1, N, CH, generator=gen)
    index = torch.randperm(N, generator=gen)[: N // 4].sort().values
    keep = torch.ones(N, dtype=torch.bool)
    keep[index] = False
    model = MaskLocalModel(stack)
    plan = model.plan(index, tokens, GRID, text, background_index=keep.nonzero().squeeze(1))
    return model, plan, torch.randn(2, index.numel(), CH, generator=gen)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_and_fast_edits_compute_the_prefix_through_the_one_projection(layout, monkeypatch):
    model, plan, x = _mask_local(layout)
    layers, p = model.stack.num_layers, plan.background.shape[1]
    calls = {"into a buffer": 0, "fresh": 0}
    shared = pa.project_kv

    def counted(attn, hidden, rope=None, rope_type="split", out=None):
        calls["into a buffer" if out is not None else "fresh"] += 1
        return shared(attn, hidden, rope, rope_type, out)

    recorders: list[kv_cache.OneWayPrefix] = []

    class Recorded(kv_cache.OneWayPrefix):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            recorders.append(self)

    monkeypatch.setattr(pa, "project_kv", counted)
    monkeypatch.setattr(training_free, "OneWayPrefix", Recorded)
    sigma = torch.full((2,), 0.6)
    with torch.no_grad():
        reference = model.decode(plan, x, sigma)
        assert calls == {"into a buffer": 0, "fresh": 2 * layers}  # background pass, then the step
        fast = FastMaskLocal(model, plan)
        assert calls["fresh"] == 3 * layers  # the fast background pass: once per edit
        out = fast(x, sigma)
        assert calls["into a buffer"] == layers  # the step projects straight behind the cached prefix
    torch.testing.assert_close(out, reference, atol=3e-5, rtol=1e-5)
    (recorder,) = recorders
    for i in range(layers):
        ref, buffer = recorder.caches[i].cache, fast.prefix_kv[i]
        assert buffer.prefix_len == p == ref.k.shape[2]
        torch.testing.assert_close(buffer.k[:, :, :p], ref.k, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(buffer.v[:, :, :p], ref.v, atol=2e-5, rtol=1e-5)


def test_fast_local_is_the_local_context_modules_forward():
    torch.manual_seed(0)
    local = LocalContextModule(LocalContextConfig(in_channels=CH + 1, width=16, num_blocks=2, heads=2, head_dim=8,
                                                  text_dim=INNER, model_dim=INNER, target_blocks=(0, 1, 3)))
    with torch.no_grad():
        for proj in local.out_proj.parameters():
            proj.normal_(0, 0.3)
    gen = torch.Generator().manual_seed(2)
    index = torch.arange(7, 31)
    tokens = torch.randn(2, index.numel(), CH + 1, generator=gen)
    coords = token_coords(index, GRID)
    text = torch.randn(2, 6, INNER, generator=gen)
    bias = torch.zeros(2, 1, 6)
    bias[1, :, 4:] = -10000.0
    with torch.no_grad():
        fast = FastLocal(local, tokens, coords, text, bias)
        for value in (0.8, 0.2):
            sigma, x = torch.full((2,), value), torch.randn(2, index.numel(), CH, generator=gen)
            hints, reference = fast(sigma, x), local(tokens, x, coords, text, sigma, text_mask=bias)
            assert sorted(hints) == sorted(reference) == [0, 1, 3]
            for block, hint in hints.items():
                assert hint.abs().max() > 0
                assert torch.equal(hint, reference[block])


@pytest.mark.parametrize("layout", ["ltx-2.3", "ltx-2.5"])
def test_perturbed_attention_layouts_run_the_reference_without_warnings_and_refuse_stg(layout):
    """LTX-2.3/2.5 blocks pass the spatio-temporal-guidance arguments to every self-attention call; diffusers logs a
    warning for each argument a processor does not name (thousands per edit on a 48-block model), so the
    processors name them, and refuse an actual perturbation instead of silently ignoring it."""
    import logging

    model, plan, x = _mask_local(layout)
    assert model.stack.model.transformer_blocks[0].perturbed_attn
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with torch.no_grad():
            model.decode(plan, x, torch.full((2,), 0.6))
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "are not expected" in m], seen[:3]
    attn = model.stack.model.transformer_blocks[0].attn1
    processor = kv_cache.CachedSelfAttention()
    with pytest.raises(ValueError, match="spatio-temporal guidance"):
        processor(attn, torch.zeros(1, 4, attn.to_q.in_features), perturbation_mask=torch.zeros(1, 1, 1))


def test_attention_warm_up_is_a_no_op_off_cuda_and_runs_once_per_device(monkeypatch):
    """`warm_attention_kernels` (called by EditModel.edit once the weights are ready) initialises cuDNN's and
    flash attention once per process, device and dtype. Its CUDA call itself needs a GPU (the benchmark times it on
    the H200: docs/benchmarks.md); here: nothing runs on the CPU, and a device already warmed is not warmed again."""
    calls: list[object] = []
    monkeypatch.setattr(pa, "_WARMED", set())
    monkeypatch.setattr(pa.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a))
    assert pa.warm_attention_kernels("cpu", torch.bfloat16) == 0.0
    assert calls == [] and pa._WARMED == set()
    pa._WARMED.add(("cuda:0", torch.bfloat16))
    assert pa.warm_attention_kernels("cuda:0", torch.bfloat16) == 0.0
    assert calls == []


def test_encoder_kernel_warm_up_runs_the_fast_encoder_once_on_cuda_only(monkeypatch):
    """`warm_encoder_kernels` (EditModel.edit, once the weights are ready) runs the fast encoder on a one-token clip
    once per process, device, dtype and width, so the first launches that load the kernels' CUDA modules (≈0.4 s at
    19B, timed by the benchmark on the H200) are not paid by the first edit. Its CUDA run needs a GPU; here: nothing
    runs on the CPU, and a model already warmed is not run again."""
    from editctrl_core.edit import fast_decode
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.loading.models import build_transformer

    calls: list[tuple] = []
    monkeypatch.setattr(fast_decode, "_ENCODER_WARMED", set())
    monkeypatch.setattr(fast_decode, "fast_encode", lambda *a, **k: calls.append(a))
    scd = SCDModel(build_transformer(PRESET), SCDOptions(split_layer=PRESET.split_layer))
    text = build_tiny_text_encoder().encode(["a red ball"])
    assert fast_decode.warm_encoder_kernels(scd, text) == 0.0 and calls == []
    cfg = scd.stack.model.config
    monkeypatch.setattr(type(scd.stack), "device", property(lambda self: torch.device("cuda:0")))
    fast_decode._ENCODER_WARMED.add(("cuda:0", scd.stack.dtype, cfg.num_attention_heads * cfg.attention_head_dim))
    assert fast_decode.warm_encoder_kernels(scd, text) == 0.0 and calls == []
