"""Model presets and strict loading from single files and diffusers folders (tiny weights made here)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from editctrl_core.loading.models import (
    ModelLoadError,
    build_transformer,
    build_vae,
    detect_preset,
    list_presets,
    load_models,
    load_preset,
    read_safetensors_header,
    save_transformer_official,
)


def test_presets_ship_and_build_tiny():
    assert {"tiny", "ltx-2.0-19b", "ltx-2.3", "ltx-2.5"} <= set(list_presets())
    preset = load_preset("tiny")
    a = build_transformer(preset)
    b = build_transformer(preset)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    vae = build_vae(preset)
    assert vae.spatial_compression_ratio == 32 and vae.temporal_compression_ratio == 8


def test_real_presets_build_on_meta_with_expected_size():
    model = build_transformer(load_preset("ltx-2.0-19b"), empty=True)
    params = sum(p.numel() for p in model.parameters())
    assert 18.5e9 < params < 19.5e9, params
    assert len(model.transformer_blocks) == 48
    names = {name for name, _ in model.named_parameters()}
    gated = build_transformer(load_preset("ltx-2.3"), empty=True)
    assert any("to_gate_logits" in n for n, _ in gated.named_parameters())
    assert not any("to_gate_logits" in n for n in names)


def test_version_detected_from_keys_and_shapes_of_real_configs():
    for name in ("ltx-2.0-19b", "ltx-2.3", "ltx-2.5", "tiny"):
        model = build_transformer(load_preset(name), empty=True)
        shapes = {k: (tuple(v.shape), "F32") for k, v in model.state_dict().items()}
        assert detect_preset(shapes) == name
        official = {"model.diffusion_model." + k.replace("proj_in", "patchify_proj"): v for k, v in shapes.items()}
        assert detect_preset(official) == name


def test_official_single_file_round_trip(tmp_path):
    preset = load_preset("tiny")
    model, vae = build_transformer(preset), build_vae(preset)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    path = tmp_path / "ltx-tiny.safetensors"
    save_transformer_official(model, path, vae)
    header = read_safetensors_header(path)
    assert "model.diffusion_model.patchify_proj.weight" in header
    assert any(k.startswith("vae.") for k in header)
    loaded = load_models(path, "auto")
    assert loaded.preset.name == "tiny"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[k], v), k
    for k, v in vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[k], v), k


def test_diffusers_folder_loads(tmp_path):
    preset = load_preset("tiny")
    model, vae = build_transformer(preset), build_vae(preset)
    for sub, module in (("transformer", model), ("vae", vae)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(dict(module.config)))
        save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                  str(tmp_path / sub / "diffusion_pytorch_model.safetensors"))
    loaded = load_models(tmp_path, "tiny")
    assert torch.equal(loaded.transformer.proj_in.weight, model.proj_in.weight)
    assert loaded.vae is not None


def test_mismatched_file_names_the_keys(tmp_path):
    preset = load_preset("tiny")
    state = build_transformer(preset).state_dict()
    state = {k: v for k, v in state.items() if "transformer_blocks.5." not in k}
    state["transformer_blocks.0.attn1.to_q.weight"] = torch.zeros(7, 32)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as err:
        load_models(path, "auto")
    assert "unrecognised" in str(err.value) or "missing" in str(err.value)
    state = build_transformer(preset).state_dict()
    state["transformer_blocks.0.attn1.to_q.weight"] = torch.zeros(32, 16)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as err:
        load_models(path, "tiny")
    msg = str(err.value)
    assert "extra.weight" in msg and "transformer_blocks.0.attn1.to_q.weight" in msg and "(32, 16)" in msg


def test_wrong_preset_and_corrupt_file(tmp_path):
    preset = load_preset("tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_transformer(preset).state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError, match="preset 'ltx-2.3' was selected"):
        load_models(path, "ltx-2.3")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_models(corrupt, "auto")


def test_official_file_records_the_config_comfyui_and_ltx_core_read(tmp_path):
    """`metadata["config"]` in the official key names (ComfyUI 0.8.0 otherwise assumes the 19B model), our own
    diffusers configs beside it; tests/test_native_interop.py builds the file in ComfyUI and ltx-core from it."""
    from safetensors import safe_open

    preset = load_preset("tiny")
    model, vae = build_transformer(preset), build_vae(preset)
    path = tmp_path / "tiny.safetensors"
    save_transformer_official(model, path, vae)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])["transformer"]
    assert {k: config[k] for k in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                                   "cross_attention_dim", "caption_channels", "audio_in_channels",
                                   "audio_num_attention_heads", "audio_attention_head_dim",
                                   "audio_cross_attention_dim")} == {
        "num_layers": 6, "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 16,
        "cross_attention_dim": 32, "caption_channels": 32, "audio_in_channels": 8, "audio_num_attention_heads": 2,
        "audio_attention_head_dim": 8, "audio_cross_attention_dim": 16}
    assert config["rope_type"] == "split" and config["use_middle_indices_grid"] is True
    assert config["av_ca_timestep_scale_multiplier"] == 1000 and config["causal_temporal_positioning"] is True
    assert json.loads(meta["editctrl.transformer_config"])["num_layers"] == 6
    assert json.loads(meta["editctrl.vae_config"])["latent_channels"] == 16


def test_a_files_recorded_config_describes_a_preset_variant(tmp_path):
    """A file we wrote for a variant of a preset (here: tiny with ComfyUI's 128 audio channels) loads strictly with
    the config it records; the preset is still detected from keys and shapes."""
    from diffusers import LTX2VideoTransformer3DModel

    preset = load_preset("tiny")
    torch.manual_seed(0)
    model = LTX2VideoTransformer3DModel(**{**preset.transformer, "audio_in_channels": 128,
                                           "audio_out_channels": 128}).eval()
    path = tmp_path / "variant.safetensors"
    save_transformer_official(model, path)
    loaded = load_models(path, "auto")
    assert loaded.preset.name == "tiny" and loaded.transformer.config.audio_in_channels == 128
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[k], v), k


def test_ltx23_layout_official_file_loads_strictly_through_the_one_rename_table(tmp_path):
    """2.3 blocks (gated attention, prompt AdaLN) in the official layout: renamed by the table the LoRA files use,
    every key fits (diffusers 0.42.1's converter leaves `prompt_adaln_single.*` unrenamed, so it did not)."""
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers
    from layout_support import LAYOUTS, layout_transformer

    from editctrl_core.loading.models import (
        read_safetensors,
        read_safetensors_metadata,
        strict_load,
        transformer_state_from_checkpoint,
    )

    model = layout_transformer("ltx-2.3")
    path = tmp_path / "ltx23-tiny.safetensors"
    save_transformer_official(model, path)
    state = read_safetensors(path)
    assert any(k.startswith("model.diffusion_model.prompt_adaln_single.") for k in state)
    converted = transformer_state_from_checkpoint(dict(state))
    with torch.device("meta"):
        empty = LTX2VideoTransformer3DModel(**{**load_preset("tiny").transformer, **LAYOUTS["ltx-2.3"]})
    loaded = strict_load(empty, converted, what=path.name)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert any(k.startswith("prompt_adaln_single.") for k in convert_ltx2_transformer_to_diffusers(dict(state)))
    # this layout gates the video stream only, which the official config cannot say: written without `config`
    meta = read_safetensors_metadata(path)
    assert "config" not in meta and "audio_gated_attn" in meta["editctrl.config_problems"]
