"""Model presets and strict loading from single files and diffusers folders (tiny weights made here)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from editctrl_core.models import (
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
