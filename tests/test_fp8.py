"""fp8 checkpoints: float8 weights stay float8 after loading and every Linear computes in the activation dtype.

Tiny LTX-2 transformers are written in the official single-file layout with their block Linears quantised the
ways released files do it (ltx-core/Lightricks `weight_scale` + `input_scale`, ComfyUI `scale_weight` + `scaled_fp8`
+ `.comfy_quant` markers, plain casts with float8 biases), read back the way `models.load_models` reads a file,
and loaded with `strict_load_fp8`. Reference: the same model with the dequantised weights in float32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from editctrl_core.loading.fp8 import (
    FP8Linear,
    fp8_summary,
    has_fp8,
    is_fp8,
    quantize_fp8,
    split_quantization,
    strict_load_fp8,
)
from editctrl_core.loading.lora import LoraFile, LoraWeights, apply_loras
from editctrl_core.loading.models import (
    ModelLoadError,
    build_transformer,
    load_preset,
    read_safetensors,
    read_safetensors_header,
    save_transformer_official,
    strict_load,
    transformer_state_from_checkpoint,
)

PRESET = load_preset("tiny")


def _blocks(key: str, value: torch.Tensor) -> bool:
    return "transformer_blocks." in key


def _forward(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio outputs of the tiny transformer on fixed inputs (float32 results)."""
    g = torch.Generator().manual_seed(0)
    f, h, w = 2, 2, 3
    n = f * h * w
    x = torch.randn(1, n, 16, generator=g).to(dtype)
    audio = torch.randn(1, 2, 8, generator=g).to(dtype)
    text = torch.randn(1, 5, 32, generator=g).to(dtype)
    with torch.no_grad():
        video_out, audio_out = model(hidden_states=x, audio_hidden_states=audio, encoder_hidden_states=text,
                                     audio_encoder_hidden_states=text, timestep=torch.full((1, n), 500.0),
                                     audio_timestep=torch.full((1, 2), 500.0), num_frames=f, height=h, width=w,
                                     audio_num_frames=2, return_dict=False)
    return video_out.float(), audio_out.float()


def _official(tmp_path: Path, **quant: object) -> tuple[Path, torch.nn.Module]:
    """An official-layout tiny checkpoint with fp8 blocks, and the float32 model of its dequantised weights."""
    base = tmp_path / "bf16.safetensors"
    save_transformer_official(build_transformer(PRESET), base)
    state = quantize_fp8(load_file(str(base)), _blocks, **quant)
    path = tmp_path / "ltx-tiny-fp8.safetensors"
    save_file(state, str(path))
    rest, info = split_quantization(state)
    deq = {}
    for k, v in rest.items():
        if is_fp8(v):
            v = v.to(torch.float32)
            if k in info.weight_scales:
                v = v * info.weight_scales[k].float()
        deq[k] = v
    reference = strict_load(build_transformer(PRESET, empty=True), transformer_state_from_checkpoint(deq),
                            what="dequantised")
    return path, reference


def _load(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """What `models.load_models` does for a single file, with `strict_load_fp8` for the transformer."""
    state = transformer_state_from_checkpoint(read_safetensors(path))
    return strict_load_fp8(build_transformer(PRESET, empty=True), state, what=path.name, dtype=dtype)


@pytest.mark.parametrize("quant", [
    {"scaled": True, "style": "ltx", "input_scales": True},
    {"scaled": True, "style": "comfy", "input_scales": True, "markers": True},
    {"scaled": False},
], ids=["ltx-weight_scale", "comfy-scale_weight", "plain-cast"])
def test_fp8_file_stays_fp8_and_matches_the_dequantised_model(tmp_path: Path, quant: dict) -> None:
    path, reference = _official(tmp_path, **quant)
    assert has_fp8(read_safetensors_header(path))
    model = _load(path)
    summary = fp8_summary(model)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.transformer_blocks.modules())
    assert summary["fp8_layers"] == linears > 0
    assert summary["fp8_bytes"] > summary["other_bytes"] / 4  # 1 byte per block weight instead of 4
    q = model.transformer_blocks[0].attn1.to_q
    assert isinstance(q, FP8Linear) and q.weight.dtype == torch.float8_e4m3fn
    assert (q.weight_scale is not None) == quant["scaled"]
    assert set(model.state_dict()) == set(reference.state_dict())  # scales are not state-dict entries
    outputs = _forward(model)
    for got, want in zip(outputs, _forward(reference)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    original = _forward(build_transformer(PRESET))[0]
    err = (outputs[0] - original).abs().mean() / original.abs().mean()
    assert 0 < err < 0.1, err  # fp8 rounding is visible but small


def test_bf16_compute_and_dtype_moves_keep_fp8_storage(tmp_path: Path) -> None:
    path, reference = _official(tmp_path, scaled=True, style="ltx")
    model = _load(path, dtype=torch.bfloat16)
    assert model.proj_in.weight.dtype == torch.bfloat16
    q = model.transformer_blocks[1].ff.net[2]
    assert isinstance(q, FP8Linear) and q.weight.dtype == torch.float8_e4m3fn
    model.to(torch.bfloat16)
    model.to("cpu")
    model.float()
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.dtype == torch.float32
    assert model.proj_in.weight.dtype == torch.float32
    model.to(torch.bfloat16)
    got = _forward(model, torch.bfloat16)[0]
    want = _forward(reference)[0]
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_lora_hooks_work_on_fp8_layers(tmp_path: Path) -> None:
    path, reference = _official(tmp_path, scaled=True, style="ltx")
    model = _load(path)
    g = torch.Generator().manual_seed(3)
    layers = {f"transformer_blocks.{i}.attn1.to_q": LoraWeights(torch.randn(4, 32, generator=g) * 0.1,
                                                                torch.randn(32, 4, generator=g) * 0.1, 4.0)
              for i in range(2)}
    lora = LoraFile(layers=layers)
    before = _forward(model)[0]
    with apply_loras(model, [(lora, 1.0)]), apply_loras(reference, [(lora, 1.0)]):
        got, want = _forward(model)[0], _forward(reference)[0]
    assert (got - before).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # lora.py runs the factors in bf16 on fp8 layers
    torch.testing.assert_close(_forward(model)[0], before, rtol=0, atol=0)


def test_fp8_errors_name_the_layer(tmp_path: Path) -> None:
    base = tmp_path / "bf16.safetensors"
    save_transformer_official(build_transformer(PRESET), base)
    state = quantize_fp8(load_file(str(base)), _blocks, scaled=True, style="comfy", markers=True)
    layer = "model.diffusion_model.transformer_blocks.0.attn1.to_k"
    nvfp4 = dict(state)
    nvfp4[layer + ".comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    with pytest.raises(ModelLoadError, match=r"transformer_blocks\.0\.attn1\.to_k.*nvfp4"):
        split_quantization(nvfp4)
    stray = dict(state)
    stray["model.diffusion_model.proj_out.weight_scale"] = torch.tensor(0.5)
    with pytest.raises(ModelLoadError, match="proj_out.weight.*not float8"):
        split_quantization(stray)
    orphan = {k: v for k, v in state.items() if not k.endswith("transformer_blocks.5.ff.net.2.weight")}
    with pytest.raises(ModelLoadError, match=r"scale for transformer_blocks\.5\.ff\.net\.2\.weight.*no such weight"):
        strict_load_fp8(build_transformer(PRESET, empty=True), transformer_state_from_checkpoint(orphan), what="x")
    missing = {k: v for k, v in orphan.items() if "transformer_blocks.5.ff.net.2." not in k}
    with pytest.raises(ModelLoadError, match=r"missing keys: transformer_blocks\.5\.ff\.net\.2\.bias"):
        strict_load_fp8(build_transformer(PRESET, empty=True), transformer_state_from_checkpoint(missing), what="x")
    bf16_only = load_file(str(base))
    plain = strict_load_fp8(build_transformer(PRESET, empty=True), transformer_state_from_checkpoint(bf16_only),
                            what="bf16")
    assert fp8_summary(plain)["fp8_layers"] == 0  # no float8 tensors: exactly `models.strict_load`


def test_fp8_gemma_text_encoder(tmp_path: Path) -> None:
    from editctrl_core.conditioning.text_encoders import (
        LTXTextEncoder,
        build_connectors,
        build_gemma,
        load_text_encoder,
        load_text_preset,
        save_gemma_comfy,
        tiny_tokenizer,
    )

    tiny = load_text_preset("tiny")
    gemma = build_gemma("gemma3_text", tiny.encoder, empty=False, seed=21)
    connectors = build_connectors(tiny.connectors, empty=False, seed=22)
    save_gemma_comfy(gemma, tmp_path / "g.safetensors")
    state = quantize_fp8(load_file(str(tmp_path / "g.safetensors")), lambda k, v: ".layers." in k, style="comfy")
    save_file(state, str(tmp_path / "gemma_fp8_scaled.safetensors"))
    connectors.save_pretrained(str(tmp_path / "conn" / "connectors"))
    tiny_tokenizer().save_pretrained(str(tmp_path / "tok"))
    enc = load_text_encoder(tmp_path / "gemma_fp8_scaled.safetensors", "tiny", connectors=tmp_path / "conn",
                            tokenizer=tmp_path / "tok", dtype=torch.float32)
    assert isinstance(enc.encoder.layers[0].mlp.down_proj, FP8Linear)
    assert enc.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    rest, info = split_quantization({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    deq = {k: (v.float() * info.weight_scales[k] if k in info.weight_scales else v) for k, v in rest.items()}
    ref_gemma = build_gemma("gemma3_text", tiny.encoder, empty=False, seed=0)
    ref_gemma.load_state_dict(deq)
    ref = LTXTextEncoder(ref_gemma, connectors, enc.tokenizer, "ref", max_length=64)
    prompts = ["a red disc", "background"]
    torch.testing.assert_close(enc.encode(prompts).embeds, ref.encode(prompts).embeds, rtol=1e-5, atol=1e-5)
