"""Lightricks' reference implementation (PyPI `ltx-core` 1.0.0) as an oracle for our loaders and forward passes.

Checkpoints are written with ltx-core's own classes (`LTXModel` via `LTXModelConfigurator`, `EmbeddingsProcessor`
with `Embeddings1DConnector`) in the official single-file key layout (`model.diffusion_model.*`,
`text_embedding_projection.*`, config in the safetensors metadata, readable by ltx-core's `SingleGPUModelBuilder`),
then loaded through our `load_models` / `load_text_encoder` and run on identical inputs:

- transformer (audio + video, cross-modal attention on, float32): max |difference| <= 1e-5 (measured: 0.0);
- our video-only piecewise stack (`LTX2Stack`, as the SCD sampler runs it) vs ltx-core with audio<->video
  cross-attention skipped in every block: <= 1e-5 (measured: 0.0);
- a LoRA in the trainer's / ComfyUI's format (`diffusion_model.<module>.lora_A/B.weight`) fused by ltx-core
  (which fuses into bf16 weights) vs our `read_lora` + `apply_loras` hooks: every patched weight equal within bf16
  rounding (2^-7 of the largest weight; ltx-core rounds delta and sum to bf16), forward outputs within 1% of the output range, the LoRA's own effect being ~100x that;
- text connectors (LTX-2.0 and 2.3 style) on the same Gemma hidden states: <= 1e-5;
- an LTX-2.3-layout transformer (gated attention, cross-attention AdaLN with the prompt modulated by σ) built by
  ltx-core, its weights renamed to diffusers' keys: diffusers' forward given the pipeline's scaled σ (audio + video)
  and our video-only stack (prompt AdaLN fed σ·1000, as ltx-core's `timestep_scale_multiplier` does) both
  <= 1e-5 of ltx-core.

Requires `ltx-core` (installed with `pip install --no-deps ltx-core==1.0.0`; its torchaudio requirement is only for
the audio VAE, which is not imported here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)
from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
from ltx_core.model.transformer.modality import Modality
from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator
from ltx_core.model.transformer.rope import LTXRopeType
from ltx_core.text_encoders.gemma.embeddings_connector import Embeddings1DConnector
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV1, FeatureExtractorV2
from safetensors.torch import load_file, save_file

from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.conditioning.text_encoders import (
    build_gemma,
    load_text_encoder,
    load_text_preset,
    save_gemma_comfy,
    tiny_tokenizer,
)
from editctrl_core.edit.scd import LTX2Stack
from editctrl_core.loading.lora import apply_loras, native_to_diffusers, read_lora
from editctrl_core.loading.models import load_models, load_preset, strict_load

CPU = torch.device("cpu")
TOL = 1e-5
# ltx-core's transformer config for a model the size of our `tiny` preset (the keys its configurator checks, too)
CONFIG = {"transformer": {
    "dropout": 0.0, "attention_bias": True, "num_vector_embeds": None, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "use_linear_projection": False, "only_cross_attention": False,
    "cross_attention_norm": True, "double_self_attention": False, "upcast_attention": False,
    "standardization_norm": "rms_norm", "norm_elementwise_affine": False, "qk_norm": "rms_norm",
    "positional_embedding_type": "rope", "use_audio_video_cross_attention": True, "share_ff": False,
    "av_cross_ada_norm": True, "use_middle_indices_grid": True,
    "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 16, "out_channels": 16, "num_layers": 6,
    "cross_attention_dim": 32, "caption_channels": 32, "norm_eps": 1e-6, "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048], "timestep_scale_multiplier": 1000,
    "audio_num_attention_heads": 2, "audio_attention_head_dim": 8, "audio_in_channels": 8, "audio_out_channels": 8,
    "audio_cross_attention_dim": 16, "audio_positional_embedding_max_pos": [20],
    "av_ca_timestep_scale_multiplier": 1000, "rope_type": "split", "frequencies_precision": "float32",
}}


# the same size with LTX-2.3's blocks (caption projection in the text connectors, not in the transformer)
CONFIG_23 = {"transformer": {**CONFIG["transformer"], "apply_gated_attention": True, "cross_attention_adaln": True,
                             "caption_proj_before_connector": True}}
LAYOUT_23 = dict(gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
                 perturbed_attn=True, use_prompt_embeddings=False)


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Fill every parameter with seeded N(0, scale^2) values in float32 (ltx-core leaves some uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    module = module.to_empty(device=CPU).float()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def _core_builder(path: Path) -> SingleGPUModelBuilder:
    return SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=str(path),
                                 model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LTX-2 written by ltx-core in the official layout, in float32 and bf16."""
    root = tmp_path_factory.mktemp("ltx_core")
    model = _randomize(LTXModelConfigurator.from_config(CONFIG), seed=0)
    state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(CONFIG)}
    save_file(state, str(root / "ltx-tiny.safetensors"), metadata=meta)
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(root / "ltx-tiny-bf16.safetensors"),
              metadata=meta)
    return {"f32": root / "ltx-tiny.safetensors", "bf16": root / "ltx-tiny-bf16.safetensors", "root": root}


def _inputs() -> dict[str, torch.Tensor | tuple[int, int, int]]:
    g = torch.Generator().manual_seed(1)
    grid, na, t = (2, 2, 3), 3, 6
    n = grid[0] * grid[1] * grid[2]
    return {"grid": grid, "x": torch.randn(1, n, 16, generator=g), "audio": torch.randn(1, na, 8, generator=g),
            "context": torch.randn(1, t, 32, generator=g), "mask": torch.tensor([[1, 1, 1, 1, 0, 0]]),
            "sigma": torch.tensor([0.7]), "audio_sigma": torch.tensor([0.4])}


def _core_forward(core: torch.nn.Module, ours: torch.nn.Module, inp: dict,
                  perturbations: BatchedPerturbationConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ltx-core's forward with positions from our model's coordinate helpers (same coordinates for both)."""
    f, h, w = inp["grid"]
    n, na = inp["x"].shape[1], inp["audio"].shape[1]
    vcoords = ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0)
    acoords = ours.audio_rope.prepare_audio_coords(1, na, CPU)
    video = Modality(latent=inp["x"], sigma=inp["sigma"], timesteps=inp["sigma"].view(1, 1).expand(1, n),
                     positions=vcoords, context=inp["context"], context_mask=inp["mask"])
    audio = Modality(latent=inp["audio"], sigma=inp["audio_sigma"],
                     timesteps=inp["audio_sigma"].view(1, 1).expand(1, na), positions=acoords,
                     context=inp["context"], context_mask=inp["mask"])
    with torch.no_grad():
        return core(video, audio, perturbations or BatchedPerturbationConfig.empty(1))


def _our_forward(ours: torch.nn.Module, inp: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Our (diffusers) transformer's full audio+video forward, timesteps scaled as the model expects."""
    f, h, w = inp["grid"]
    n, na = inp["x"].shape[1], inp["audio"].shape[1]
    with torch.no_grad():
        return ours(hidden_states=inp["x"], audio_hidden_states=inp["audio"], encoder_hidden_states=inp["context"],
                    audio_encoder_hidden_states=inp["context"],
                    timestep=inp["sigma"].view(1, 1).expand(1, n) * 1000,
                    audio_timestep=inp["audio_sigma"].view(1, 1).expand(1, na) * 1000,
                    sigma=inp["sigma"] * 1000, audio_sigma=inp["audio_sigma"] * 1000,
                    encoder_attention_mask=inp["mask"], audio_encoder_attention_mask=inp["mask"],
                    video_coords=ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0),
                    audio_coords=ours.audio_rope.prepare_audio_coords(1, na, CPU),
                    use_cross_timestep=True, return_dict=False)


def test_official_checkpoint_from_ltx_core_matches_our_forward(checkpoints: dict[str, Path]) -> None:
    loaded = load_models(checkpoints["f32"])
    assert loaded.preset.name == "tiny" and loaded.vae is None
    core = _core_builder(checkpoints["f32"]).build(device=CPU, dtype=torch.float32)
    inp = _inputs()
    core_video, core_audio = _core_forward(core, loaded.transformer, inp)
    video, audio = _our_forward(loaded.transformer, inp)
    assert core_video.abs().max() > 0.1 and core_audio.abs().max() > 0.1
    torch.testing.assert_close(video, core_video, rtol=0, atol=TOL)
    torch.testing.assert_close(audio, core_audio, rtol=0, atol=TOL)


def test_video_only_stack_matches_ltx_core_without_cross_modal_attention(checkpoints: dict[str, Path]) -> None:
    ours = load_models(checkpoints["f32"]).transformer
    core = _core_builder(checkpoints["f32"]).build(device=CPU, dtype=torch.float32)
    inp = _inputs()
    skip = BatchedPerturbationConfig([PerturbationConfig([Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
                                                          Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None)])])
    core_video, _ = _core_forward(core, ours, inp, skip)
    stack = LTX2Stack(ours)
    n = inp["x"].shape[1]
    with torch.no_grad():
        time = stack.time(inp["sigma"].view(1, 1).expand(1, n), inp["sigma"])
        hidden = ours.proj_in(inp["x"])
        hidden = stack.run_blocks(hidden, 0, stack.num_layers, stack.text(TextConditioning(inp["context"],
                                                                                            inp["mask"])),
                                  time, stack.rope(stack.video_coords(inp["grid"])))
        video = stack.head(hidden, time.embedded)
    torch.testing.assert_close(video, core_video, rtol=0, atol=TOL)


def test_trainer_format_lora_matches_ltx_core_fusion(checkpoints: dict[str, Path]) -> None:
    g = torch.Generator().manual_seed(2)
    targets = {"transformer_blocks.0.attn1.to_q": (32, 32), "transformer_blocks.3.attn2.to_k": (32, 32),
               "transformer_blocks.1.audio_attn1.to_v": (16, 16), "transformer_blocks.2.ff.net.0.proj": (32, 128),
               "transformer_blocks.4.video_to_audio_attn.to_out.0": (16, 16), "patchify_proj": (16, 32),
               "adaln_single.linear": (32, 192)}
    lora_state = {}
    for name, (fan_in, fan_out) in targets.items():
        lora_state[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(4, fan_in, generator=g) * 0.3
        lora_state[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(fan_out, 4, generator=g) * 0.3
    lora_path = checkpoints["root"] / "trainer_lora.safetensors"
    save_file(lora_state, str(lora_path))
    strength = 0.8
    fused = _core_builder(checkpoints["bf16"]).lora(str(lora_path), strength, LTXV_LORA_COMFY_RENAMING_MAP).build(
        device=CPU, dtype=torch.bfloat16)
    ours = load_models(checkpoints["bf16"]).transformer  # bf16 values held in float32
    lora = read_lora(lora_path)
    assert sorted(lora.layers) == sorted(native_to_diffusers(n) for n in targets)
    for native in targets:
        diffusers_name = native_to_diffusers(native)
        w = lora.layers[diffusers_name]
        ours_weight = ours.get_submodule(diffusers_name).weight.detach() + strength * w.scale * (w.B @ w.A)
        core_weight = fused.get_submodule(native).weight.float()
        delta = strength * w.scale * (w.B @ w.A)
        assert (core_weight - ours_weight).abs().max() <= 2 ** -7 * ours_weight.abs().max()  # bf16 rounding
        assert delta.abs().max() > 20 * (core_weight - ours_weight).abs().max()
    inp = _inputs()
    base, _ = _our_forward(ours, inp)
    with apply_loras(ours, [(lora, strength)]):
        video, audio = _our_forward(ours, inp)
    core_video, core_audio = _core_forward(fused.float(), ours, inp)
    effect = (video - base).abs().max()
    assert effect > 0.5
    assert (video - core_video).abs().max() < 0.01 * effect
    assert (audio - core_audio).abs().max() < 0.01 * core_audio.abs().max()


def _core_processor(v2: bool, flat: int, width: int) -> EmbeddingsProcessor:
    """ltx-core's feature extractor + connectors: LTX-2.0 style (V1) or 2.3 style (V2, gated, per modality)."""
    if v2:
        extractor = FeatureExtractorV2(torch.nn.Linear(flat, 32, bias=True), width, torch.nn.Linear(flat, 16, bias=True))
        heads = ((2, 16), (2, 8))
    else:
        extractor = FeatureExtractorV1(torch.nn.Linear(flat, width, bias=False), is_av=True)
        heads = ((2, 16), (2, 16))
    video, audio = (Embeddings1DConnector(attention_head_dim=d, num_attention_heads=h, num_layers=2,
                                          positional_embedding_max_pos=[4096], num_learnable_registers=8,
                                          rope_type=LTXRopeType.SPLIT, double_precision_rope=True,
                                          apply_gated_attention=v2) for h, d in heads)
    return _randomize(EmbeddingsProcessor(feature_extractor=extractor, video_connector=video, audio_connector=audio),
                      seed=5 if v2 else 4, scale=0.2)


@pytest.mark.parametrize("v2", [False, True], ids=["ltx-2.0-connectors", "ltx-2.3-connectors"])
def test_text_connectors_match_ltx_core(tmp_path: Path, v2: bool) -> None:
    base = load_text_preset("tiny" if not v2 else "ltx-2.3").encoder
    gemma = build_gemma("gemma3_text", {**base, **{k: load_text_preset("tiny").encoder[k] for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "vocab_size")}}, empty=False, seed=3)
    width, layers = gemma.config.hidden_size, gemma.config.num_hidden_layers + 1
    processor = _core_processor(v2, width * layers, width)
    official = {}
    for key, value in processor.state_dict().items():
        key = key.replace("feature_extractor.", "text_embedding_projection.")
        key = key.replace("video_connector.", "model.diffusion_model.video_embeddings_connector.")
        key = key.replace("audio_connector.", "model.diffusion_model.audio_embeddings_connector.")
        official[key] = value.contiguous()
    save_file(official, str(tmp_path / "connectors.safetensors"))
    save_gemma_comfy(gemma, tmp_path / "gemma.safetensors")
    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    enc = load_text_encoder(tmp_path / "gemma.safetensors", "auto" if v2 else "tiny",
                            connectors=tmp_path / "connectors.safetensors", tokenizer=tmp_path / "tokenizer",
                            dtype=torch.float32, max_length=64)
    assert enc.family == ("ltx-2.3" if v2 else "tiny")
    assert set(load_file(str(tmp_path / "connectors.safetensors"))) == set(official)
    for prompt in ("a red disc on a table", "the empty textured background"):
        packed, mask = enc.hidden_states([prompt])
        per_layer = tuple(packed.view(1, packed.shape[1], width, layers).unbind(-1))
        with torch.no_grad():
            want = processor.process_hidden_states(per_layer, mask, padding_side="left")
            video, audio, out_mask = enc.connectors(packed, mask, padding_side="left")
        torch.testing.assert_close(video, want.video_encoding, rtol=0, atol=TOL)
        torch.testing.assert_close(audio, want.audio_encoding, rtol=0, atol=TOL)
        assert torch.equal(out_mask, want.attention_mask)
        cond = enc.encode([prompt])
        torch.testing.assert_close(cond.embeds, want.video_encoding, rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def ltx23() -> tuple[torch.nn.Module, torch.nn.Module]:
    """ltx-core's LTX-2.3-layout transformer at the tiny size and the same weights in diffusers' class."""
    from diffusers import LTX2VideoTransformer3DModel

    core = _randomize(LTXModelConfigurator.from_config(CONFIG_23), seed=6).eval()
    with torch.device("meta"):
        ours = LTX2VideoTransformer3DModel(**{**load_preset("tiny").transformer, **LAYOUT_23})
    state = {native_to_diffusers(k): v for k, v in core.state_dict().items()}
    return core, strict_load(ours, state, what="ltx-core LTX-2.3 weights").eval()


def _inputs_23() -> dict[str, torch.Tensor | tuple[int, int, int]]:
    """The shared inputs with per-modality prompt embeddings (2.3's connectors project video and audio apart)."""
    inp = _inputs()
    inp["audio_context"] = torch.randn(1, inp["context"].shape[1], 16, generator=torch.Generator().manual_seed(7))
    return inp


def _core_forward_23(core: torch.nn.Module, ours: torch.nn.Module, inp: dict,
                     perturbations: BatchedPerturbationConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ltx-core's forward on the 2.3 inputs (audio stream with its own prompt embeddings)."""
    f, h, w = inp["grid"]
    n, na = inp["x"].shape[1], inp["audio"].shape[1]
    video = Modality(latent=inp["x"], sigma=inp["sigma"], timesteps=inp["sigma"].view(1, 1).expand(1, n),
                     positions=ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0), context=inp["context"],
                     context_mask=inp["mask"])
    audio = Modality(latent=inp["audio"], sigma=inp["audio_sigma"],
                     timesteps=inp["audio_sigma"].view(1, 1).expand(1, na),
                     positions=ours.audio_rope.prepare_audio_coords(1, na, CPU), context=inp["audio_context"],
                     context_mask=inp["mask"])
    with torch.no_grad():
        return core(video, audio, perturbations or BatchedPerturbationConfig.empty(1))


def test_ltx23_diffusers_forward_with_the_pipelines_scaled_sigma_matches_ltx_core(ltx23) -> None:
    core, ours = ltx23
    inp = _inputs_23()
    f, h, w = inp["grid"]
    n, na = inp["x"].shape[1], inp["audio"].shape[1]
    core_video, core_audio = _core_forward_23(core, ours, inp)
    with torch.no_grad():
        video, audio = ours(hidden_states=inp["x"], audio_hidden_states=inp["audio"],
                            encoder_hidden_states=inp["context"], audio_encoder_hidden_states=inp["audio_context"],
                            timestep=inp["sigma"].view(1, 1).expand(1, n) * 1000,
                            audio_timestep=inp["audio_sigma"].view(1, 1).expand(1, na) * 1000,
                            sigma=inp["sigma"] * 1000, audio_sigma=inp["audio_sigma"] * 1000,
                            encoder_attention_mask=inp["mask"], audio_encoder_attention_mask=inp["mask"],
                            video_coords=ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0),
                            audio_coords=ours.audio_rope.prepare_audio_coords(1, na, CPU),
                            use_cross_timestep=True, return_dict=False)
    assert core_video.abs().max() > 0.1 and core_audio.abs().max() > 0.1
    torch.testing.assert_close(video, core_video, rtol=0, atol=TOL)
    torch.testing.assert_close(audio, core_audio, rtol=0, atol=TOL)


def test_ltx23_video_only_stack_matches_ltx_core(ltx23) -> None:
    """Our piecewise stack (as the SCD sampler runs it) feeds the prompt AdaLN σ·1000, as ltx-core does."""
    core, ours = ltx23
    inp = _inputs_23()
    skip = BatchedPerturbationConfig([PerturbationConfig([Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
                                                          Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None)])])
    core_video, _ = _core_forward_23(core, ours, inp, skip)
    stack = LTX2Stack(ours)
    assert stack.prompt_depends_on_sigma
    n = inp["x"].shape[1]
    cond = TextConditioning(inp["context"], inp["mask"], audio_embeds=inp["audio_context"])
    with torch.no_grad():
        time = stack.time(inp["sigma"].view(1, 1).expand(1, n), inp["sigma"])
        hidden = stack.run_blocks(ours.proj_in(inp["x"]), 0, stack.num_layers, stack.text(cond), time,
                                  stack.rope(stack.video_coords(inp["grid"])))
        video = stack.head(hidden, time.embedded)
    assert core_video.abs().max() > 0.1
    torch.testing.assert_close(video, core_video, rtol=0, atol=TOL)
