"""Native interop, tested against the native code itself: ComfyUI 0.8.0's LTX-2 (`comfy/ldm/lightricks`,
`comfy.sd`, `comfy.lora`, UNETLoader, LoraLoaderModelOnly, KSampler) and Lightricks' ltx-core.

Three levels:

- conversions in `editctrl_core.loading.native` (config table, latents, masks, conditioning) in plain Python, and our
  official-layout files built by ltx-core from their own ``config`` metadata (2.0 and 2.3 blocks);
- ComfyUI 0.8.0's own model code in a subprocess of its venv (`PROBE`): it loads our file from the metadata we
  write, its forward equals ours (video-only and audio+video), a LoRA saved by `save_lora` patches every layer
  and gives our hooks' output, the diffusers view over its parameters shares their storage, its LTX VAE built from
  our VAE config encodes/decodes exactly like ours, and its LTX-2 text encoder's post-Gemma code gives (converted)
  our conditioning;
- a real 0.8.0 server: UNETLoader + LoraLoaderModelOnly + KSampler on our file through the bridge nodes, and our
  sampler on a native MODEL giving what our own loader gives.

0.3.75 has no native LTX-2: the server tests skip there, saying so.

Tiny model note: ComfyUI 0.8.0 hard-codes 8 audio channels x 16 mel bins (128 audio latent features); the `tiny`
preset's transformer has 8, so ComfyUI loads it but its forward fails. The native tests use the tiny preset with
``audio_in_channels = audio_out_channels = 128`` (`native_tiny`), which `save_transformer_official` records.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from comfy_server import TINY_TEXT_LOADER, ComfyServer
from conftest import comfy_install
from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from safetensors.torch import load_file, save_file

from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.edit.context import prepare_edit, to_tokens
from editctrl_core.loading.lora import LoraWeights, save_lora
from editctrl_core.loading.models import (
    build_transformer,
    build_vae,
    load_models,
    load_preset,
    save_transformer_official,
    save_vae_official,
)
from editctrl_core.loading.native import (
    NativeFormatError,
    comfy_080_problems,
    comfy_080_vae_problems,
    diffusers_transformer_config,
    edit_context_from_latents,
    native_context_from_text,
    native_latents,
    official_config_problems,
    official_transformer_config,
    official_vae_config,
    our_latents,
    text_conditioning_from_native,
    token_mask_from_noise_mask,
)
from editctrl_core.loading.native import latent_grid as grid_of

REPO = Path(__file__).resolve().parents[1]
PRESET = load_preset("tiny")
CPU = torch.device("cpu")
NATIVE_AUDIO = {"audio_in_channels": 128, "audio_out_channels": 128}
# LTX-2.3 blocks as ltx-core builds them (one gated-attention / cross-attention-AdaLN switch for both streams)
LAYOUT_23 = dict(gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
                 perturbed_attn=True, use_prompt_embeddings=False)
NATIVE_VAE_CONFIG = {**PRESET.vae, "latent_channels": 128, "block_out_channels": [128] * 4,
                     "decoder_block_out_channels": [128] * 3, "upsample_factor": [1, 1, 1]}
SKIP_0375 = "ComfyUI 0.3.75 has no native LTX-2 (it arrived in 0.8.0)"


def native_tiny(seed: int = 0, scale: float = 0.2, **layout: object) -> LTX2VideoTransformer3DModel:
    """The tiny preset with ComfyUI 0.8.0's audio width and every weight drawn N(0, scale²) (the default init leaves
    modulation tables near zero, which would hide mistakes)."""
    torch.manual_seed(seed)
    model = LTX2VideoTransformer3DModel(**{**PRESET.transformer, **NATIVE_AUDIO, **layout}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def native_vae(seed: int = 0) -> AutoencoderKLLTX2Video:
    """The tiny preset's VAE at the width ComfyUI 0.8.0's `VideoVAE` hard-codes (128 base and latent channels, every
    channel multiplier 1: 20 M parameters), with non-trivial latent statistics."""
    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Video(**NATIVE_VAE_CONFIG).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        vae.latents_mean.copy_(torch.randn(128, generator=g) * 0.1)
        vae.latents_std.copy_(torch.rand(128, generator=g) + 0.5)
    return vae


def random_lora(model: torch.nn.Module, seed: int = 3, rank: int = 2) -> dict[str, LoraWeights]:
    """A LoRA on every nn.Linear of the transformer (194 layers on the tiny model)."""
    g = torch.Generator().manual_seed(seed)
    return {name: LoraWeights(torch.randn(rank, m.in_features, generator=g) * 0.3,
                              torch.randn(m.out_features, rank, generator=g) * 0.3, 4.0)
            for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


# ------------------------------------------------------------------------------------------- the config table

def test_config_table_maps_the_presets_and_inverts() -> None:
    for name in ("tiny", "ltx-2.0-19b"):
        config = load_preset(name).transformer
        official = official_transformer_config(config)
        assert official["use_middle_indices_grid"] is True and official["causal_temporal_positioning"] is True
        assert official["num_layers"] == config["num_layers"] and official["rope_type"] == config["rope_type"]
        assert official["positional_embedding_max_pos"] == [config["pos_embed_max_pos"], config["base_height"],
                                                            config["base_width"]]
        back = diffusers_transformer_config(official)
        assert {k: config[k] for k in back} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in back.items()}
    assert comfy_080_problems(official_transformer_config(load_preset("ltx-2.0-19b").transformer)) == []
    tiny_problems = comfy_080_problems(official_transformer_config(PRESET.transformer))
    assert tiny_problems == ["audio_in_channels=8 (ComfyUI 0.8.0 hard-codes 128)",
                             "audio_out_channels=8 (ComfyUI 0.8.0 hard-codes 128)"]
    layout_23 = official_transformer_config({**PRESET.transformer, **LAYOUT_23})
    assert layout_23["apply_gated_attention"] and layout_23["cross_attention_adaln"]
    assert layout_23["caption_proj_before_connector"]
    assert any("apply_gated_attention" in p for p in comfy_080_problems(layout_23))
    problems = official_config_problems(load_preset("ltx-2.5").transformer)
    assert any("use_prompt_adaln_single" in p for p in problems), problems
    with pytest.raises(NativeFormatError, match="gated_attn"):
        official_transformer_config({**PRESET.transformer, "gated_attn": True})  # audio stream left ungated
    with pytest.raises(NativeFormatError, match="causal_temporal_positioning"):
        diffusers_transformer_config({"causal_temporal_positioning": False})


def _ltx_core_forward(core: torch.nn.Module, ours: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, ...]:
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer.modality import Modality

    f, h, w = inputs["grid"]
    n, na = inputs["x"].shape[1], inputs["audio"].shape[1]
    video = Modality(latent=inputs["x"], sigma=inputs["sigma"], timesteps=inputs["sigma"].view(1, 1).expand(1, n),
                     positions=ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0), context=inputs["context"],
                     context_mask=inputs["mask"])
    audio = Modality(latent=inputs["audio"], sigma=inputs["audio_sigma"],
                     timesteps=inputs["audio_sigma"].view(1, 1).expand(1, na),
                     positions=ours.audio_rope.prepare_audio_coords(1, na, CPU), context=inputs["audio_context"],
                     context_mask=inputs["mask"])
    with torch.no_grad():
        return core(video, audio, BatchedPerturbationConfig.empty(1))


def _our_forward(ours: torch.nn.Module, inputs: dict, cross_timestep: bool = True) -> tuple[torch.Tensor, ...]:
    f, h, w = inputs["grid"]
    n, na = inputs["x"].shape[1], inputs["audio"].shape[1]
    with torch.no_grad():
        return ours(hidden_states=inputs["x"], audio_hidden_states=inputs["audio"],
                    encoder_hidden_states=inputs["context"], audio_encoder_hidden_states=inputs["audio_context"],
                    timestep=inputs["sigma"].view(1, 1).expand(1, n) * 1000,
                    audio_timestep=inputs["audio_sigma"].view(1, 1).expand(1, na) * 1000,
                    sigma=inputs["sigma"] * 1000, audio_sigma=inputs["audio_sigma"] * 1000,
                    encoder_attention_mask=inputs["mask"], audio_encoder_attention_mask=inputs["mask"],
                    video_coords=ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0),
                    audio_coords=ours.audio_rope.prepare_audio_coords(1, na, CPU),
                    use_cross_timestep=cross_timestep, return_dict=False)


@pytest.mark.parametrize("layout", ["ltx-2.0", "ltx-2.3"])
def test_ltx_core_builds_our_official_file_from_its_config_metadata(tmp_path: Path, layout: str) -> None:
    """ltx-core reads the architecture only from ``metadata["config"]``: our file must describe itself fully."""
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator

    ours = native_tiny(seed=5, scale=0.1, **(LAYOUT_23 if layout == "ltx-2.3" else {}))
    path = tmp_path / f"{layout}.safetensors"
    save_transformer_official(ours, path)
    core = SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=str(path),
                                 model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP).build(device=CPU, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    inputs = {"grid": (2, 2, 3), "x": torch.randn(1, 12, 16, generator=g), "audio": torch.randn(1, 3, 128, generator=g),
              "context": torch.randn(1, 6, 32, generator=g), "mask": torch.tensor([[1, 1, 1, 1, 0, 0]]),
              "sigma": torch.tensor([0.7]), "audio_sigma": torch.tensor([0.4])}
    inputs["audio_context"] = inputs["context"] if layout == "ltx-2.0" else torch.randn(1, 6, 16, generator=g)
    core_video, core_audio = _ltx_core_forward(core, ours, inputs)
    video, audio = _our_forward(ours, inputs)
    assert core_video.abs().max() > 0.1 and core_audio.abs().max() > 0.1
    torch.testing.assert_close(video, core_video, rtol=0, atol=1e-5)
    torch.testing.assert_close(audio, core_audio, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- conversions

def test_latents_round_trip_in_comfyuis_normalisation() -> None:
    z = torch.randn(1, 16, 2, 2, 3)
    assert torch.equal(native_latents(z), z)  # LTX-2's scaling factor is 1: the numbers are the same
    torch.testing.assert_close(native_latents(z, 2.0), z / 2)
    torch.testing.assert_close(our_latents(native_latents(z, 0.5), 0.5), z)

    class Nested:  # ComfyUI's NestedTensor (video + audio latents)
        tensors = [z, torch.zeros(1, 8, 4, 16)]

    assert torch.equal(our_latents(Nested()), z)
    with pytest.raises(NativeFormatError, match="video latents"):
        our_latents(torch.zeros(1, 16, 4, 4))


def test_noise_masks_of_every_native_form_map_onto_the_token_grid() -> None:
    grid = grid_of(torch.zeros(1, 16, 3, 2, 3))  # 17 frames at 64x96
    tokens = torch.zeros(3, 2, 3, dtype=torch.bool)
    tokens[1:, 1, 2] = True
    latent_res = tokens.float()[None, None]  # LTXV nodes: [B,1,f,h,w]
    assert torch.equal(token_mask_from_noise_mask(latent_res, grid), tokens)
    pixels = torch.zeros(17, 64, 96)  # SetLatentNoiseMask: [F,1,H,W] of the pixel mask
    pixels[5, 40:50, 70:80] = 1  # frame 5 → latent frame 1; rows 40-49 → token row 1, columns 70-79 → column 2
    want = torch.zeros(3, 2, 3, dtype=torch.bool)
    want[1, 1, 2] = True
    assert torch.equal(token_mask_from_noise_mask(pixels[:, None], grid), want)
    assert torch.equal(token_mask_from_noise_mask(pixels[5:6], grid), want[1:2].expand(3, -1, -1))  # one frame
    small = torch.zeros(1, 1, 20, 30)  # any other size: resized onto the grid, as ComfyUI's samplers do
    small[..., 10:, 20:] = 1
    assert token_mask_from_noise_mask(small, grid)[:, 1, 2].all() and not token_mask_from_noise_mask(small, grid)[:, 0, 0].any()
    with pytest.raises(NativeFormatError, match="frames"):
        token_mask_from_noise_mask(torch.zeros(5, 64, 96), grid)


def test_conditioning_round_trip_and_comfyuis_context_layout() -> None:
    video, audio = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    cond = TextConditioning(video, torch.tensor([[1] * 5 + [0] * 2, [1] * 7]), "p", audio)
    context, mask = native_context_from_text(cond)
    assert context.shape == (2, 7, 64) and torch.equal(context[..., :32], video) and torch.equal(context[..., 32:], audio)
    back = text_conditioning_from_native(context, mask)
    assert torch.equal(back.embeds, video) and torch.equal(back.audio_embeds, audio) and torch.equal(back.mask, cond.mask)
    no_audio, no_mask = native_context_from_text(TextConditioning(video, torch.ones(2, 7, dtype=torch.long)))
    assert torch.equal(no_audio[..., 32:], video) and no_mask is None  # the audio stream reads the video prompt
    native = text_conditioning_from_native(torch.randn(1, 1024, 2 * 3840))  # what CLIPTextEncode gives for LTX-2
    assert native.embeds.shape == (1, 1024, 3840) and native.mask.sum() == 1024
    with pytest.raises(NativeFormatError, match="2 x width"):
        text_conditioning_from_native(torch.randn(1, 4, 7))


def test_context_from_native_latents_equals_the_one_our_encoder_builds() -> None:
    vae = build_vae(PRESET)
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(13, 50, 70, 3, generator=g)  # padded to 17 frames at 64x96
    mask = torch.zeros(13, 50, 70)
    mask[3:9, 10:30, 40:60] = 1
    ours = prepare_edit(vae, frames, mask)
    samples = native_latents(ours.source_latents)
    for region in (mask, mask[:, None], ours.token_mask.float()[None, None]):
        ctx = edit_context_from_latents(vae, samples, region, frames)
        assert torch.equal(ctx.token_mask, ours.token_mask) and torch.equal(ctx.background_latents,
                                                                            ours.background_latents)
        assert ctx.padding == ours.padding and torch.equal(ctx.frames, ours.frames)
    assert torch.equal(edit_context_from_latents(vae, samples, mask, frames).mask, ours.mask)
    bare = edit_context_from_latents(vae, samples, ours.token_mask.float()[None, None])
    assert bare.frames is None and bare.padding is None and torch.equal(bare.token_mask, ours.token_mask)
    with pytest.raises(NativeFormatError, match="channels"):
        edit_context_from_latents(vae, torch.zeros(1, 128, 3, 2, 3), mask)
    with pytest.raises(NativeFormatError, match="do not belong"):
        edit_context_from_latents(vae, samples, mask, frames[:, :20])


# --------------------------------------------------------------------- ComfyUI 0.8.0's own code, in its venv

PROMPT = "a red ball on the grass"
PROBE = textwrap.dedent('''
    """Run inside ComfyUI 0.8.0's venv: load our files with ComfyUI's code, write its outputs (and ours through the
    shared-weight view) to a safetensors file, and a JSON report."""
    import io, json, logging, sys
    comfy_dir, repo, work, PROMPT = sys.argv[1:5]
    sys.argv = ["probe", "--cpu"]
    sys.path[:0] = [comfy_dir, repo]
    import torch
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_management, comfy.sd, comfy.utils
    from safetensors.torch import load_file, save_file

    log = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(log))
    report, out = {}, {}
    inp = load_file(f"{work}/inputs.safetensors")
    patcher = comfy.sd.load_diffusion_model(f"{work}/model.safetensors")
    dm = patcher.model.diffusion_model
    report["model"] = {"class": type(dm).__name__, "layers": dm.num_layers, "in_channels": dm.in_channels,
                       "audio_in_channels": dm.audio_in_channels, "inner_dim": dm.inner_dim,
                       "image_model": patcher.model.model_config.unet_config.get("image_model"),
                       "use_middle_indices_grid": dm.use_middle_indices_grid,
                       "causal_temporal_positioning": dm.causal_temporal_positioning,
                       "av_ca_timestep_scale_multiplier": dm.av_ca_timestep_scale_multiplier}

    def video_only(model):
        with torch.no_grad():
            return model([inp["x"]], inp["sigma"], inp["context"], None, frame_rate=24, transformer_options={})

    with torch.no_grad():
        out["video"] = video_only(dm)
        out["av_video"], out["av_audio"] = dm([inp["x"], inp["audio"]], (inp["sigma"], inp["audio_sigma"]),
                                              inp["context"], None, frame_rate=24, transformer_options={})
    lora = comfy.utils.load_torch_file(f"{work}/lora.safetensors")
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 0.7, 0)
    report["lora"] = {"file_layers": len({k.rsplit(".lora_", 1)[0] for k in lora}), "patches": len(patched.patches),
                      "log": [l for l in log.getvalue().splitlines() if "lora key not loaded" in l or "NOT LOADED" in l]}
    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    out["lora_video"] = video_only(dm)

    from diffusers import LTX2VideoTransformer3DModel  # noqa: F401
    from editctrl_core.loading.native import bind_parameters, diffusers_view, shares_storage
    config = json.loads(open(f"{work}/config.json").read())
    view = diffusers_view(dm, config)
    report["view"] = {"shares_storage": shares_storage(view, dm),
                      "copies": sum(p.numel() for p in view.parameters()) - sum(p.numel() for p in dm.parameters())}

    def ours(model):
        f, h, w = inp["x"].shape[-3:]
        x = inp["x"].permute(0, 2, 3, 4, 1).reshape(1, -1, inp["x"].shape[1])
        half = inp["context"].shape[-1] // 2
        s = inp["sigma"] * 1000
        with torch.no_grad():
            o = model(hidden_states=x, audio_hidden_states=torch.zeros(1, 1, 128),
                      encoder_hidden_states=inp["context"][..., :half], audio_encoder_hidden_states=inp["context"][..., half:],
                      timestep=s, audio_timestep=s, sigma=s, video_coords=model.rope.prepare_video_coords(1, f, h, w, x.device, fps=24.0),
                      audio_num_frames=1, isolate_modalities=True, use_cross_timestep=True, return_dict=False)[0]
        return o.reshape(1, f, h, w, -1).permute(0, 4, 1, 2, 3).contiguous()

    out["view_lora_video"] = ours(view)
    patched.unpatch_model()  # ComfyUI restores the backed-up weights as new Parameter objects
    out["view_stale_video"] = ours(view)
    report["view"]["rebound"] = bind_parameters(view, dm)
    out["view_base_video"] = ours(view)

    try:  # the shipped tiny preset: 8 audio channels, where ComfyUI 0.8.0 hard-codes 8 x 16 mel bins = 128
        tiny = comfy.sd.load_diffusion_model(f"{work}/tiny.safetensors").model.diffusion_model
        report["tiny"] = {"loaded": True, "audio_in_channels": tiny.audio_in_channels}
        x16 = inp["x"]
        with torch.no_grad():
            tiny([x16], inp["sigma"], inp["context"], None, frame_rate=24, transformer_options={})
        report["tiny"]["forward"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported
        report["tiny"]["forward"] = f"{type(exc).__name__}: {exc}"
    # the video VAE: what CheckpointLoaderSimple runs (weights + the file's metadata), and VAELoader (weights only)
    vae_sd, vae_md = comfy.utils.load_torch_file(f"{work}/vae.safetensors", return_metadata=True)
    vae = comfy.sd.VAE(sd=vae_sd, metadata=vae_md)
    out["vae_latents"] = vae.encode(inp["frames"])
    out["vae_frames"] = vae.decode(inp["our_latents"]).reshape(inp["frames"].shape)
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE
    report["guess_v2"] = VideoVAE.guess_config(None, 2)  # ComfyUI's built-in LTX-2 VAE layout
    try:
        comfy.sd.VAE(sd=comfy.utils.load_torch_file(f"{work}/vae.safetensors"))
        report["vae_without_metadata"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported
        report["vae_without_metadata"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    # ComfyUI's LTX-2 text encoder after Gemma (LTXAVTEModel.encode_token_weights: all-layer normalisation, feature
    # projection, both connectors, concat), its own code on our tiny Gemma's hidden states and our tiny connectors:
    # only the Gemma-3-12B it hard-codes is stood in for (its weights are not here)
    import types
    import comfy.ops
    from comfy.ldm.lightricks.embeddings_connector import Embeddings1DConnector
    from comfy.text_encoders.lt import LTXAVTEModel
    from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder, official_connector_state
    enc = build_tiny_text_encoder(max_length=1024)  # ComfyUI pads the connectors to 1024 tokens (registers)
    hidden, mask = enc.hidden_states([PROMPT])
    real = hidden[:, mask[0].bool()]  # ComfyUI tokenizes one prompt without padding
    width = enc.caption_channels
    layers_out = real.reshape(1, real.shape[1], width, -1).permute(0, 3, 1, 2)  # what Gemma with layer="all" gives

    class Gemma:
        def encode_token_weights(self, pairs):
            return layers_out, None, {}

    ops, state = comfy.ops.disable_weight_init, official_connector_state(enc.connectors)

    def connector(prefix):
        c = Embeddings1DConnector(attention_head_dim=16, num_attention_heads=2, num_layers=1, num_learnable_registers=8,
                                  split_rope=True, double_precision_rope=True, operations=ops)
        c.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        return c

    proj = ops.Linear(hidden.shape[-1], width, bias=False)
    proj.weight = torch.nn.Parameter(state["text_embedding_projection.aggregate_embed.weight"])
    te = types.SimpleNamespace(gemma3_12b=Gemma(), execution_device=torch.device("cpu"), text_embedding_projection=proj,
                               video_embeddings_connector=connector("model.diffusion_model.video_embeddings_connector."),
                               audio_embeddings_connector=connector("model.diffusion_model.audio_embeddings_connector."))
    with torch.no_grad():
        out["text_context"], _ = LTXAVTEModel.encode_token_weights(te, {"gemma3_12b": None})
    save_file({k: v.contiguous() for k, v in out.items()}, f"{work}/outputs.safetensors")
    open(f"{work}/report.json", "w").write(json.dumps(report))
''')


def _comfy08():
    inst = comfy_install("0.8.0")
    if inst.skip_reason:
        pytest.skip(inst.skip_reason)
    return inst


@pytest.fixture(scope="module")
def comfy_probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Our files and inputs, ComfyUI 0.8.0's outputs on them (PROBE) and our own outputs on the same inputs."""
    inst = _comfy08()
    work = tmp_path_factory.mktemp("comfy08_probe")
    model = native_tiny()
    save_transformer_official(model, work / "model.safetensors")
    save_transformer_official(build_transformer(PRESET), work / "tiny.safetensors")
    (work / "config.json").write_text(json.dumps({k: (list(v) if isinstance(v, tuple) else v)
                                                  for k, v in model.config.items() if not k.startswith("_")}))
    lora = random_lora(model)
    save_lora(lora, work / "lora.safetensors")
    g = torch.Generator().manual_seed(1)
    inputs = {"x": torch.randn(1, 16, 2, 2, 3, generator=g), "context": torch.randn(1, 7, 64, generator=g),
              "audio": torch.randn(1, 8, 5, 16, generator=g), "sigma": torch.tensor([0.6]),
              "audio_sigma": torch.tensor([0.3])}
    vae = native_vae()
    save_vae_official(vae, work / "vae.safetensors")
    inputs["frames"] = torch.rand(9, 64, 64, 3, generator=g)
    inputs["our_latents"] = torch.randn(1, 128, 2, 2, 2, generator=g)
    save_file(inputs, str(work / "inputs.safetensors"))
    (work / "probe.py").write_text(PROBE)
    run = subprocess.run([inst.python, str(work / "probe.py"), str(inst.comfy_dir), str(REPO), str(work), PROMPT],
                         capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                                            "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return {"report": json.loads((work / "report.json").read_text()),
            "out": load_file(str(work / "outputs.safetensors")), "inputs": inputs, "work": work, "lora": lora,
            "vae": vae}


def _video_only(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Our diffusers forward, video-only (one silent audio token, modalities isolated: what our sampler runs)."""
    x = inputs["x"]
    f, h, w = x.shape[-3:]
    cond = text_conditioning_from_native(inputs["context"])  # ComfyUI's [B,T,2C] context → our conditioning
    s = inputs["sigma"] * 1000
    with torch.no_grad():
        out = model(hidden_states=to_tokens(x), audio_hidden_states=torch.zeros(1, 1, 128),
                    encoder_hidden_states=cond.embeds, audio_encoder_hidden_states=cond.audio_embeds, timestep=s, audio_timestep=s, sigma=s,
                    encoder_attention_mask=cond.mask, audio_encoder_attention_mask=cond.mask,
                    video_coords=model.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0), audio_num_frames=1,
                    isolate_modalities=True, use_cross_timestep=True, return_dict=False)[0]
    return out.reshape(1, f, h, w, -1).permute(0, 4, 1, 2, 3)


def test_comfyui_builds_our_file_from_its_metadata_and_its_forward_matches_ours(comfy_probe: dict) -> None:
    """ComfyUI's own LTXAVModel, built from the ``config`` metadata we write, computes what our diffusers model
    computes (float32; measured: 2e-6 of outputs ~5): video-only, and audio + video (ComfyUI 0.8.0 modulates the
    cross-modal attention by each stream's own σ, i.e. diffusers' ``use_cross_timestep=False``; ltx-core uses the
    other stream's σ — our sampler runs video-only, where the two agree)."""
    report, out, inputs = comfy_probe["report"], comfy_probe["out"], comfy_probe["inputs"]
    assert report["model"] == {"class": "LTXAVModel", "layers": 6, "in_channels": 16, "audio_in_channels": 128,
                               "inner_dim": 32, "image_model": "ltxav", "use_middle_indices_grid": True,
                               "causal_temporal_positioning": True, "av_ca_timestep_scale_multiplier": 1000}
    ours = load_models(comfy_probe["work"] / "model.safetensors").transformer  # our loader reads the same file
    assert ours.config.audio_in_channels == 128
    video = _video_only(ours, inputs)
    assert out["video"].abs().max() > 1
    torch.testing.assert_close(out["video"], video, rtol=0, atol=2e-5)
    x, na = to_tokens(inputs["x"]), inputs["audio"].shape[2]
    cond = text_conditioning_from_native(inputs["context"])
    f, h, w = inputs["x"].shape[-3:]
    with torch.no_grad():
        av_video, av_audio = ours(
            hidden_states=x, audio_hidden_states=inputs["audio"].permute(0, 2, 1, 3).reshape(1, na, 128),
            encoder_hidden_states=cond.embeds, audio_encoder_hidden_states=cond.audio_embeds,
            timestep=inputs["sigma"] * 1000, audio_timestep=inputs["audio_sigma"] * 1000,
            sigma=inputs["sigma"] * 1000, audio_sigma=inputs["audio_sigma"] * 1000,
            video_coords=ours.rope.prepare_video_coords(1, f, h, w, CPU, fps=24.0),
            audio_coords=ours.audio_rope.prepare_audio_coords(1, na, CPU), audio_num_frames=na,
            use_cross_timestep=False, return_dict=False)[:2]
    torch.testing.assert_close(out["av_video"], av_video.reshape(1, f, h, w, -1).permute(0, 4, 1, 2, 3),
                               rtol=0, atol=2e-5)
    torch.testing.assert_close(out["av_audio"], av_audio.reshape(1, na, 8, 16).permute(0, 2, 1, 3), rtol=0, atol=2e-5)


def test_our_lora_patches_every_layer_of_comfyuis_model_like_our_hooks(comfy_probe: dict) -> None:
    """`comfy.sd.load_lora_for_models` (what LoraLoaderModelOnly runs) maps every key of a `save_lora` file onto
    the native model (no "lora key not loaded"), and the patched model computes what our hooks compute."""
    from editctrl_core.loading.lora import apply_loras, read_lora

    report, out = comfy_probe["report"], comfy_probe["out"]
    assert report["lora"] == {"file_layers": 194, "patches": 194, "log": []}
    ours = load_models(comfy_probe["work"] / "model.safetensors").transformer
    base = _video_only(ours, comfy_probe["inputs"])
    with apply_loras(ours, [(read_lora(comfy_probe["work"] / "lora.safetensors"), 0.7)]):
        patched = _video_only(ours, comfy_probe["inputs"])
    effect = float((patched - base).abs().max())
    assert effect > 1
    torch.testing.assert_close(out["lora_video"], patched, rtol=0, atol=5e-5)  # merged weights vs hooks: rounding


def test_diffusers_view_runs_on_comfyuis_own_parameters(comfy_probe: dict) -> None:
    """`diffusers_view` builds our transformer around the native module's Parameter objects: no copy (every
    parameter's storage is the native one's), LoRA patches applied by ComfyUI are seen; after ComfyUI unpatches
    (new Parameter objects) the view is stale until `bind_parameters` re-points it."""
    report, out = comfy_probe["report"], comfy_probe["out"]
    assert report["view"]["shares_storage"] and report["view"]["copies"] == 0 and report["view"]["rebound"] > 0
    torch.testing.assert_close(out["view_lora_video"], out["lora_video"], rtol=0, atol=2e-5)
    torch.testing.assert_close(out["view_stale_video"], out["lora_video"], rtol=0, atol=2e-5)
    torch.testing.assert_close(out["view_base_video"], out["video"], rtol=0, atol=2e-5)


def test_comfyuis_video_vae_from_our_config_metadata_encodes_and_decodes_like_ours(comfy_probe: dict) -> None:
    """ComfyUI's LTX `VideoVAE`, built from the official VAE config we write (as CheckpointLoaderSimple builds it),
    encodes frames to our latents and decodes our latents to our frames (measured: bit-identical; both normalise
    with the same per-channel statistics and LTX-2's scaling factor is 1, so a LATENT needs no conversion). Its
    VAELoader reads no metadata and guesses a 19B-size layout, which does not fit."""
    from editctrl_core.media.vae import decode_latents, encode_frames

    out, inputs, vae = comfy_probe["out"], comfy_probe["inputs"], comfy_probe["vae"]
    torch.testing.assert_close(out["vae_latents"], encode_frames(vae, inputs["frames"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["vae_frames"], decode_latents(vae, inputs["our_latents"]), rtol=0, atol=1e-5)
    assert out["vae_frames"].std() > 0.01
    assert comfy_probe["report"]["vae_without_metadata"] != "ok"
    # the 19B preset's VAE maps onto the very block list ComfyUI hard-codes for LTX-2 (version 2)
    ours, problems = official_vae_config(load_preset("ltx-2.0-19b").vae)
    guess = comfy_probe["report"]["guess_v2"]
    assert not problems and comfy_080_vae_problems(ours) == []
    assert ours["encoder_blocks"] == guess["encoder_blocks"] and ours["decoder_blocks"] == guess["decoder_blocks"]
    assert {k: ours[k] for k in ("latent_channels", "patch_size", "norm_layer", "latent_log_var", "causal_decoder")} == \
        {k: guess[k] for k in ("latent_channels", "patch_size", "norm_layer", "latent_log_var", "causal_decoder")}
    native, _ = official_vae_config(NATIVE_VAE_CONFIG)
    assert native is not None and comfy_080_vae_problems(native) == []
    assert "not an integer multiplier" in official_vae_config(PRESET.vae)[1][0]  # the tiny VAE has no native form


def test_comfyuis_ltx2_text_encoder_conditioning_converts_to_ours(comfy_probe: dict) -> None:
    """What CLIPTextEncode yields with ComfyUI's LTX-2 text encoder: its `LTXAVTEModel.encode_token_weights` runs the
    connectors itself and returns concat(video, audio) [1, 1024, 2 x width] without a mask. Run on our tiny Gemma's
    hidden states with ComfyUI's own connector class holding our tiny connectors' weights, converted by
    `text_conditioning_from_native` it is our text encoder's conditioning (measured: 1.2e-5 of values ~3). The
    real encoder needs Gemma-3-12B (hard-coded: 3840 x 49 layers), whose weights are not on these machines."""
    from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder

    context = comfy_probe["out"]["text_context"]
    assert context.shape == (1, 1024, 64)
    native = text_conditioning_from_native(context)
    ours = build_tiny_text_encoder(max_length=1024).encode([PROMPT])
    assert ours.mask.sum() == 1024 and torch.equal(native.mask, ours.mask)
    torch.testing.assert_close(native.embeds, ours.embeds, rtol=0, atol=5e-5)
    torch.testing.assert_close(native.audio_embeds, ours.audio_embeds, rtol=0, atol=5e-5)


def test_the_tiny_presets_audio_width_does_not_fit_comfyuis_model(comfy_probe: dict) -> None:
    """Documents the limit: ComfyUI loads the shipped tiny preset (8 audio channels) but its forward cannot run."""
    tiny = comfy_probe["report"]["tiny"]
    assert tiny["loaded"] and tiny["audio_in_channels"] == 8
    assert tiny["forward"] != "ok" and "128" in tiny["forward"] and "8" in tiny["forward"], tiny


# ----------------------------------------------------------------------------------- a real ComfyUI 0.8.0 server

NATIVE_FILE = "editctrl-native-tiny.safetensors"
NATIVE_LORA = "editctrl-native-tiny-lora.safetensors"
NATIVE_VAE = "editctrl-native-tiny-vae.safetensors"


@pytest.fixture(scope="module")
def native_files(comfy_server: ComfyServer) -> dict[str, Path]:
    """Our tiny (ComfyUI-width audio) checkpoint in diffusion_models and checkpoints, and a LoRA in loras."""
    if comfy_server.version_info < (0, 8):
        pytest.skip(SKIP_0375)
    model = native_tiny(scale=0.05)
    paths = {}
    for folder in ("diffusion_models", "checkpoints", "loras"):
        (comfy_server.models_dir / folder).mkdir(parents=True, exist_ok=True)
    paths["unet"] = comfy_server.models_dir / "diffusion_models" / NATIVE_FILE
    save_transformer_official(model, paths["unet"])
    paths["ckpt"] = comfy_server.models_dir / "checkpoints" / NATIVE_FILE
    save_transformer_official(model, paths["ckpt"])
    paths["lora"] = comfy_server.models_dir / "loras" / NATIVE_LORA
    save_lora(random_lora(model, rank=2), paths["lora"])
    (comfy_server.models_dir / "vae").mkdir(parents=True, exist_ok=True)
    paths["vae"] = comfy_server.models_dir / "vae" / NATIVE_VAE
    save_file({k: v.contiguous() for k, v in build_vae(PRESET).state_dict().items()}, str(paths["vae"]))
    return paths


def _source_nodes(steps: int = 2) -> dict:
    """Our tiny VAE and text encoder, a 9-frame 64x96 clip with a rectangle to edit, our edit context."""
    return {
        "1": {"class_type": "EditCtrlModelLoader", "inputs": {"preset": "tiny", "weights": "(preset weights)",
                                                              "dtype": "float32", "device": "cpu", "split_layer": 0}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 9, "color": 0x3366CC}},
        "3": {"class_type": "EditCtrlRectMask", "inputs": {"images": ["2", 0], "x": 32, "y": 0, "width": 40,
                                                           "height": 40}},
        "4": {"class_type": "EditCtrlVAEEncode", "inputs": {"vae": ["1", 1], "images": ["2", 0], "mask": ["3", 0],
                                                            "geometry": "pad"}},
        "5": {"class_type": "EditCtrlLTXTextEncoderLoader", "inputs": TINY_TEXT_LOADER},
        "6": {"class_type": "EditCtrlTextEncode", "inputs": {"text_encoder": ["5", 0], "text": "a red ball"}},
    }


def _saved_latent(server: ComfyServer, history: dict, node: str) -> torch.Tensor:
    item = history["outputs"][node]["latents"][0]
    return load_file(str(server.output_dir / item["subfolder"] / item["filename"]))["latent_tensor"]


def _native_sampling(lora: bool, loader: str = "UNETLoader") -> dict:
    wf = _source_nodes()
    wf.update({
        "7": {"class_type": "EditCtrlContextToLatent", "inputs": {"edit_context": ["4", 0]}},
        "8": {"class_type": "EditCtrlConditioningToNative", "inputs": {"conditioning": ["6", 0]}},
        "9": ({"class_type": "UNETLoader", "inputs": {"unet_name": NATIVE_FILE, "weight_dtype": "default"}}
              if loader == "UNETLoader" else
              {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NATIVE_FILE}}),
        "10": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["9", 0], "lora_name": NATIVE_LORA,
                                                               "strength_model": 0.7}},
        "11": {"class_type": "KSampler", "inputs": {
            "model": ["10" if lora else "9", 0], "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["8", 0], "negative": ["8", 0], "latent_image": ["7", 0],
            "denoise": 1.0}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "native/edit"}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "native/source"}},
        "14": {"class_type": "EditCtrlLatentToEdit", "inputs": {"latent": ["11", 0]}},
        "15": {"class_type": "EditCtrlVAEDecode", "inputs": {"vae": ["1", 1], "latents": ["14", 0], "region": "full",
                                                             "halo_tokens": 2}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}},
    })
    if not lora:
        del wf["10"]
    return wf


def test_native_unet_loader_lora_and_ksampler_run_our_files(comfy_server: ComfyServer,
                                                            native_files: dict[str, Path]) -> None:
    """UNETLoader builds ComfyUI's LTXAV model from our file's metadata, LoraLoaderModelOnly applies every key of
    our LoRA (ComfyUI logs `lora key not loaded: …` for any it cannot place), KSampler denoises the LATENT our
    bridge made inside its noise_mask only, and our decoder reads the result back."""
    start = len(comfy_server.log_text())
    with_lora = comfy_server.run(_native_sampling(lora=True), timeout=300)
    log = comfy_server.log_text()[start:]
    assert with_lora.ok and "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    assert "model_type FLUX" in log  # ComfyUI detected LTXAV (a flow model) from the file
    plain = comfy_server.run(_native_sampling(lora=False), timeout=300)
    edited, source = _saved_latent(comfy_server, with_lora.history, "12"), _saved_latent(comfy_server, with_lora.history, "13")
    edited_plain = _saved_latent(comfy_server, plain.history, "12")
    assert edited.shape == source.shape == (1, 16, 2, 2, 3)
    inside = torch.zeros(2, 2, 3, dtype=torch.bool)
    inside[:, :, 1:3] = True  # the rectangle x 32..72, y 0..40 covers token columns 1-2 of both rows
    # KSampler keeps the source outside noise_mask (up to float rounding of its x·m + s·(1 − m) blend)
    torch.testing.assert_close(edited[..., ~inside], source[..., ~inside], rtol=0, atol=1e-6)
    assert float((edited[..., inside] - source[..., inside]).abs().max()) > 0.1
    assert float((edited - edited_plain).abs().max()) > 1e-3  # the LoRA changed the model's output
    assert with_lora.history["outputs"]["16"]["images"]


def test_native_checkpoint_loader_reads_our_transformer_only_file(comfy_server: ComfyServer,
                                                                  native_files: dict[str, Path]) -> None:
    """CheckpointLoaderSimple (models/checkpoints) gives the same model as UNETLoader: same sampled latents."""
    wf = _native_sampling(lora=False, loader="CheckpointLoaderSimple")
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.ok, result.error
    unet = comfy_server.run(_native_sampling(lora=False), timeout=300)
    torch.testing.assert_close(_saved_latent(comfy_server, result.history, "12"),
                               _saved_latent(comfy_server, unet.history, "12"), rtol=0, atol=0)


def _edit_nodes(model: list, prefix: str) -> dict:
    return {
        f"{prefix}1": {"class_type": "EditCtrlSampler", "inputs": {
            "model": model, "edit_context": ["4", 0], "positive": ["6", 0], "seed": 5, "steps": 3, "cfg": 1.0,
            "shift": 1.0, "dilation": 1, "strength": 1.0, "window_frames": 0, "mode": "training_free"}},
        f"{prefix}2": {"class_type": "EditCtrlEditToLatent", "inputs": {"latents": [f"{prefix}1", 0], "noise_mask": False}},
        f"{prefix}3": {"class_type": "SaveLatent", "inputs": {"samples": [f"{prefix}2", 0],
                                                              "filename_prefix": f"native/{prefix}"}},
    }


def test_our_sampler_on_a_native_model_shares_its_weights_and_matches_our_loader(comfy_server: ComfyServer,
                                                                                 native_files: dict[str, Path]) -> None:
    """EditCtrl Model From Native: our sampler on UNETLoader's model (+ LoraLoaderModelOnly, or + EditCtrl Load
    LoRA) equals our sampler on our own loader's model of the same file (+ EditCtrl Load LoRA), and no second
    transformer is registered with ComfyUI's model management."""
    wf = _source_nodes()
    wf.update({
        "20": {"class_type": "EditCtrlModelLoader", "inputs": {"preset": "auto", "dtype": "float32", "device": "cpu",
                                                               "weights": f"diffusion_models/{NATIVE_FILE}",
                                                               "split_layer": 0, "vae_weights": NATIVE_VAE}},
        "21": {"class_type": "EditCtrlLoraLoader", "inputs": {"model": ["20", 0], "lora_name": NATIVE_LORA,
                                                              "strength": 0.7}},
        "30": {"class_type": "UNETLoader", "inputs": {"unet_name": NATIVE_FILE, "weight_dtype": "default"}},
        "31": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["30", 0], "lora_name": NATIVE_LORA,
                                                               "strength_model": 0.7}},
        "32": {"class_type": "EditCtrlModelFromNative", "inputs": {"model": ["31", 0], "split_layer": 0}},
        "33": {"class_type": "EditCtrlModelFromNative", "inputs": {"model": ["30", 0], "split_layer": 0}},
        **_edit_nodes(["21", 0], "o"), **_edit_nodes(["32", 0], "n"), **_edit_nodes(["20", 0], "b"),
        **_edit_nodes(["33", 0], "m"),
        "34": {"class_type": "EditCtrlLoraLoader", "inputs": {"model": ["33", 0], "lora_name": NATIVE_LORA,
                                                              "strength": 0.7}},
        **_edit_nodes(["34", 0], "l"),
    })
    result = comfy_server.run(wf, timeout=300)
    ours, shared = _saved_latent(comfy_server, result.history, "o3"), _saved_latent(comfy_server, result.history, "n3")
    base_ours, base_shared = (_saved_latent(comfy_server, result.history, "b3"),
                              _saved_latent(comfy_server, result.history, "m3"))
    torch.testing.assert_close(base_shared, base_ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared, ours, rtol=0, atol=1e-4)  # ComfyUI merges the LoRA; we hook it
    # our LoRA node on the shared-weight model hooks the native weights exactly as on our own copy
    torch.testing.assert_close(_saved_latent(comfy_server, result.history, "l3"), ours, rtol=0, atol=1e-5)
    assert float((ours - base_ours).abs().max()) > 1e-3
    # the native route alone, after /free: ComfyUI tracks its LTXAV model and none of ours is a transformer
    comfy_server.free(unload_models=True, free_memory=True)
    comfy_server.run({"1": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 8, "height": 8}},
                      "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
                      "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}, timeout=60)
    native_only = {k: v for k, v in wf.items() if k in ("1", "2", "3", "4", "5", "6", "30", "33", "m1", "m2", "m3")}
    native_only["m3"] = {**native_only["m3"], "inputs": {**native_only["m3"]["inputs"], "filename_prefix": "native/m2"}}
    again = comfy_server.run(native_only, timeout=300)
    torch.testing.assert_close(_saved_latent(comfy_server, again.history, "m3"), base_shared, rtol=0, atol=0)
    vram = comfy_server.get("/editctrl/vram").json()
    assert not [m for m in vram["models"] if "transformer" in m["name"]], vram
    assert vram["loaded_models_total"] > len(vram["models"]), vram  # the native model is loaded, not counted as ours


def test_bridge_nodes_register_on_every_version(comfy_server: ComfyServer) -> None:
    """The bridge nodes register on every version (they only need ComfyUI's core types)."""
    info = comfy_server.object_info()
    for node in ("EditCtrlConditioningFromNative", "EditCtrlConditioningToNative", "EditCtrlEditToLatent",
                 "EditCtrlContextToLatent", "EditCtrlLatentToEdit", "EditCtrlContextFromLatent",
                 "EditCtrlModelFromNative"):
        assert info[node]["category"] == "EditCtrl/native", node


def test_latent_and_conditioning_bridges_round_trip_into_our_sampler(comfy_server: ComfyServer) -> None:
    """Our context → native LATENT (noise_mask) → our context again, and our conditioning → native CONDITIONING →
    ours again: the sampler gives the same edit as on the originals (every version: only core types are used).
    From the noise_mask alone (no pixel mask) the context's pixel mask is the token grid's, so only the token
    mask is compared there."""
    wf = _source_nodes()
    wf.update({
        "7": {"class_type": "EditCtrlContextToLatent", "inputs": {"edit_context": ["4", 0]}},
        "8": {"class_type": "EditCtrlContextFromLatent", "inputs": {"latent": ["7", 0], "vae": ["1", 1],
                                                                    "mask": ["3", 0], "images": ["2", 0]}},
        "9": {"class_type": "EditCtrlConditioningToNative", "inputs": {"conditioning": ["6", 0]}},
        "10": {"class_type": "EditCtrlConditioningFromNative", "inputs": {"conditioning": ["9", 0]}},
        "11": {"class_type": "EditCtrlContextFromLatent", "inputs": {"latent": ["7", 0], "vae": ["1", 1]}},
        **_edit_nodes(["1", 0], "o"), **_edit_nodes(["1", 0], "r"), **_edit_nodes(["1", 0], "q"),
    })
    wf["r1"]["inputs"].update(edit_context=["8", 0], positive=["10", 0])
    wf["q1"]["inputs"].update(edit_context=["11", 0])
    wf["q2"]["inputs"].update(noise_mask=True)
    wf["q4"] = {"class_type": "EditCtrlContextToLatent", "inputs": {"edit_context": ["11", 0]}}
    wf["q5"] = {"class_type": "SaveLatent", "inputs": {"samples": ["q4", 0], "filename_prefix": "native/q_source"}}
    wf["q6"] = {"class_type": "EditCtrlLatentToEdit", "inputs": {"latent": ["q2", 0]}}
    wf["q7"] = {"class_type": "EditCtrlVAEDecode", "inputs": {"vae": ["1", 1], "latents": ["q6", 0], "region": "full",
                                                              "halo_tokens": 2}}
    wf["q8"] = {"class_type": "PreviewImage", "inputs": {"images": ["q7", 0]}}
    result = comfy_server.run(wf, timeout=300)
    original, bridged = _saved_latent(comfy_server, result.history, "o3"), _saved_latent(comfy_server, result.history, "r3")
    assert torch.equal(original, bridged)
    from_mask_only = _saved_latent(comfy_server, result.history, "q3")
    source = _saved_latent(comfy_server, result.history, "q5")
    inside = torch.zeros(2, 2, 3, dtype=torch.bool)
    inside[:, :, 1:3] = True
    assert float((from_mask_only[..., inside] - source[..., inside]).abs().max()) > 0.1
    assert float((from_mask_only - original).abs().max()) < float((from_mask_only - source).abs().max())
    assert len(result.history["outputs"]["q8"]["images"]) == 9


def test_checkpoint_loader_builds_our_vae_from_its_metadata_and_native_vae_nodes_match_ours(
        comfy_server: ComfyServer, tmp_path: Path) -> None:
    """A single file (transformer + VAE at ComfyUI's 128 channels) in models/checkpoints: CheckpointLoaderSimple
    builds both from its metadata; native VAE Encode gives our encoder's latents and native VAE Decode our
    decoder's frames (to the PNG's 8 bits); a native KSampler runs on the model in between."""
    if comfy_server.version_info < (0, 8):
        pytest.skip(SKIP_0375)
    import numpy as np
    from PIL import Image

    from editctrl_core.media.vae import decode_latents, encode_frames

    vae = native_vae(seed=4)
    name = "editctrl-native-tiny-128.safetensors"
    (comfy_server.models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_transformer_official(native_tiny(scale=0.05, in_channels=128, out_channels=128),
                              comfy_server.models_dir / "checkpoints" / name, vae)
    wf = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 9, "color": 0}},
        "3": {"class_type": "EditCtrlRectMask", "inputs": {"images": ["2", 0], "x": 8, "y": 16, "width": 30,
                                                           "height": 20}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "native/vae"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "native/vae"}},
        "9": {"class_type": "EditCtrlLTXTextEncoderLoader", "inputs": TINY_TEXT_LOADER},
        "10": {"class_type": "EditCtrlTextEncode", "inputs": {"text_encoder": ["9", 0], "text": "a white card"}},
        "11": {"class_type": "EditCtrlConditioningToNative", "inputs": {"conditioning": ["10", 0]}},
        "12": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "simple",
                                                    "positive": ["11", 0], "negative": ["11", 0],
                                                    "latent_image": ["5", 0], "denoise": 0.5}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}},
        "14": {"class_type": "PreviewImage", "inputs": {"images": ["13", 0]}},
    }
    result = comfy_server.run(wf, timeout=300)
    frames = torch.zeros(9, 64, 64, 3)
    frames[:, 16:36, 8:38] = 1
    latents = encode_frames(vae, frames)
    torch.testing.assert_close(_saved_latent(comfy_server, result.history, "6"), latents, rtol=0, atol=1e-5)
    ours = np.clip(255.0 * decode_latents(vae, latents).numpy(), 0, 255).astype(np.int16)
    pngs = [np.array(Image.open(comfy_server.output_dir / i["subfolder"] / i["filename"])).astype(np.int16)
            for i in result.history["outputs"]["8"]["images"]]
    assert len(pngs) == 9 and int(np.abs(np.stack(pngs) - ours).max()) <= 1
    assert len(result.history["outputs"]["14"]["images"]) == 9
