"""Training with LTX-2's real text path: captions encoded by a Gemma + LTX-2 connectors checkpoint into the cache.

The checkpoints are the tiny Gemma-3 / connector models of `test_text_encoders` (real transformers / diffusers
classes, seeded weights) written in ComfyUI's and Hugging Face's file layouts; the tiny text preset's output is 32
wide, the tiny LTX preset's caption_channels, so a real training step runs on it.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_text_encoders import (  # the tiny Gemma / connector builders and the SentencePiece fixture
    _ckpt_with_connectors,
    _gemma3_like,
    _save_folder,
    _tiny_connectors,
    spiece,  # noqa: F401  (pytest fixture)
)
from training_support import tiny_config, tiny_config_dict

from editctrl_core.conditioning.text_encoders import LTXTextEncoder, load_text_encoder, save_gemma_comfy, tiny_tokenizer
from training.config import ConfigError, config_from_dict
from training.data import CachedTextEncoder, training_text_encoder
from training.engine import load_base
from training.train import Trainer, prepare_data

CAPTIONS = {"synthetic_00000.mp4": "a red disc on a table", "synthetic_00001.mp4": "a square slides to the left"}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory, spiece: bytes) -> dict[str, Path]:  # noqa: F811
    """A ComfyUI Gemma file (embedded tokenizer), an LTX checkpoint carrying the connectors, and an HF-layout Gemma
    file with a separate tokenizer folder."""
    root = tmp_path_factory.mktemp("text_encoders")
    save_gemma_comfy(_gemma3_like(seed=21)[0], root / "gemma_3_tiny_it.safetensors", spiece=spiece)
    _ckpt_with_connectors(root / "ltx-tiny.safetensors", _tiny_connectors(seed=22))
    other = _gemma3_like(seed=23)[0]
    save_file({f"language_model.model.{k}": v.contiguous() for k, v in other.state_dict().items()},
              str(root / "gemma_hf.safetensors"))
    tiny_tokenizer().save_pretrained(str(root / "gemma_tokenizer"))
    return {"comfy": root / "gemma_3_tiny_it.safetensors", "ckpt": root / "ltx-tiny.safetensors",
            "hf": root / "gemma_hf.safetensors", "tokenizer": root / "gemma_tokenizer"}


def _config(root: Path, data: dict, steps: int = 1) -> object:
    """Tiny two-clip config with distinct captions and the given data.* text settings."""
    cfg = tiny_config_dict(root, clips=2, steps=(steps,))
    (root / "captions.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "captions.json").write_text(json.dumps(CAPTIONS))
    cfg["data"].update(captions=str(root / "captions.json"), **data)
    return config_from_dict(cfg)


def _alive_text_encoders() -> int:
    """Number of LTXTextEncoder objects still in memory."""
    gc.collect()
    return sum(type(o) is LTXTextEncoder for o in gc.get_objects())


def test_precompute_stores_the_gemma_embeddings_reruns_skip_and_a_step_trains(
        tmp_path: Path, encoders: dict[str, Path]) -> None:
    torch.set_num_threads(1)
    cfg = _config(tmp_path, {"text_encoder": str(encoders["comfy"]), "text_encoder_preset": "tiny",
                             "text_connectors": str(encoders["ckpt"]), "text_batch_size": 2})
    base = load_base(cfg)
    before = _alive_text_encoders()
    files, enc = prepare_data(cfg, base, tmp_path / "run")
    assert isinstance(enc.text, CachedTextEncoder) and enc.text.loads == 1  # one load for 2 captions + ""
    assert _alive_text_encoders() == before, "the Gemma encoder must be freed after precompute"
    assert enc.id.endswith(f"|text:{enc.text.id}") and enc.text.id.startswith("gemma:")

    reference = load_text_encoder(encoders["comfy"], "tiny", connectors=encoders["ckpt"])
    for path in files:
        cached = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            caption = fh.metadata()["caption"]
        want = reference.encode([caption])
        assert caption in CAPTIONS.values()
        assert cached["text_embeds"].shape == (64, 32) and cached["text_embeds"].dtype == torch.float32
        assert torch.equal(cached["text_embeds"], want.embeds[0])
        assert torch.equal(cached["text_mask"].long(), want.mask[0].long())
    assert torch.equal(enc.text.encode([""]).embeds, reference.encode([""]).embeds)

    again, enc2 = prepare_data(cfg, base, tmp_path / "run")  # all cached: no Gemma load at all
    assert again == files and enc2.text.loads == 0
    files[1].unlink()
    redone, enc3 = prepare_data(cfg, base, tmp_path / "run")  # the VAE pass redoes one clip, text is cached
    assert redone == files and files[1].is_file() and enc3.text.loads == 0

    result = Trainer(cfg, resume="none", quiet=True).run()  # the same cache, one real training step
    assert result.steps == 1 and len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses)).all()


def test_switching_the_encoder_re_encodes(tmp_path: Path, encoders: dict[str, Path],
                                          spiece: bytes) -> None:  # noqa: F811
    torch.set_num_threads(1)
    first = _config(tmp_path, {"text_encoder": str(encoders["comfy"]), "text_encoder_preset": "tiny",
                               "text_connectors": str(encoders["ckpt"])})
    base = load_base(first)
    files, _ = prepare_data(first, base, tmp_path / "run")
    hf = {"text_encoder": str(encoders["hf"]), "text_encoder_preset": "tiny", "text_connectors": str(encoders["ckpt"])}
    with pytest.raises(ConfigError, match=r"^data\.text_encoder: cannot load .*tokenizer.*data\.tokenizer"):
        prepare_data(_config(tmp_path, hf), base, tmp_path / "run")
    second = _config(tmp_path, {**hf, "tokenizer": str(encoders["tokenizer"]), "text_max_tokens": 32})
    files2, enc2 = prepare_data(second, base, tmp_path / "run")
    assert enc2.text.loads == 1 and not set(files) & set(files2)
    new = load_file(str(files2[0]))["text_embeds"]
    assert new.shape == (32, 32) and not torch.equal(new[-32:], load_file(str(files[0]))["text_embeds"][-32:])
    reference = load_text_encoder(encoders["hf"], "tiny", connectors=encoders["ckpt"], tokenizer=encoders["tokenizer"],
                                  max_length=32)
    assert torch.equal(new, reference.encode([CAPTIONS["synthetic_00000.mp4"]]).embeds[0])
    copy = tmp_path / "copy" / encoders["comfy"].name  # identity is the content: a copy reuses the cache ...
    copy.parent.mkdir()
    shutil.copy(encoders["comfy"], copy)
    moved = _config(tmp_path, {"text_encoder": str(copy), "text_encoder_preset": "tiny",
                               "text_connectors": str(encoders["ckpt"])})
    files3, enc3 = prepare_data(moved, base, tmp_path / "run")
    assert files3 == files and enc3.text.loads == 0
    save_gemma_comfy(_gemma3_like(seed=24)[0], copy, spiece=spiece)  # ... other weights in the same file do not
    files4, enc4 = prepare_data(moved, base, tmp_path / "run")
    assert enc4.text.loads == 1 and not set(files4) & set(files)
    with pytest.raises(ConfigError, match=r"^data\.text_max_tokens: .*multiple"):
        prepare_data(_config(tmp_path, {**hf, "tokenizer": str(encoders["tokenizer"]), "text_max_tokens": 60}), base,
                     tmp_path / "run")


def test_caption_width_mismatch_names_both_widths(tmp_path: Path) -> None:
    """An LTX-2.3-style folder whose connectors give 48-wide embeddings cannot feed the tiny model (32)."""
    torch.set_num_threads(1)
    gemma, _ = _gemma3_like(seed=25)
    wide = _tiny_connectors(26, per_modality_projections=True, video_hidden_dim=48, audio_hidden_dim=16,
                            video_connector_attention_head_dim=24, audio_connector_attention_head_dim=8,
                            proj_bias=True, video_gated_attn=True, audio_gated_attn=True)
    _save_folder(tmp_path / "LTX-wide", "gemma3", gemma.config.to_dict(), gemma, wide)
    cfg = _config(tmp_path, {"text_encoder": str(tmp_path / "LTX-wide"), "text_max_tokens": 64})
    with pytest.raises(ConfigError) as err:
        prepare_data(cfg, load_base(cfg), tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("data.text_encoder:") and "48 wide" in msg and "expects 32" in msg, msg
    assert "same LTX-2 version" in msg


@pytest.mark.parametrize("data, field, words", [
    ({"text_encoder": "models/text_encoders/nope.safetensors"}, "data.text_encoder", "no such file or folder"),
    ({"text_encoder": "{comfy}", "tokenizer": "/no/such/tokenizer"}, "data.tokenizer", "no such file or folder"),
    ({"text_encoder": "{comfy}", "text_connectors": "/no/ckpt.safetensors"}, "data.text_connectors", "no such"),
    ({"text_encoder": "{comfy}"}, "data.text_connectors", "LTX checkpoint"),
    ({"text_encoder": "{comfy}", "text_connectors": "{ckpt}", "text_encoder_preset": "ltx-9"},
     "data.text_encoder_preset", "not one of"),
    ({"text_encoder": "{comfy}", "text_connectors": "{ckpt}", "text_device": "tpu"}, "data.text_device", "not one"),
    ({"tokenizer": "{tokenizer}"}, "data.tokenizer", "only applies"),
    ({"text_encoder": "{tokenizer}/tokenizer.json"}, "data.text_encoder", "neither a .safetensors file"),
])
def test_bad_text_encoder_settings_name_the_field(tmp_path: Path, encoders: dict[str, Path], data: dict, field: str,
                                                  words: str) -> None:
    raw = tiny_config_dict(tmp_path)
    raw["data"].update({k: v.format(**encoders) for k, v in data.items()})
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(field + ":") and words in str(err.value), str(err.value)


def test_tiny_stays_the_builtin_encoder(tmp_path: Path) -> None:
    from editctrl_core.conditioning.text_encoders import LTXTextEncoder
    from editctrl_core.loading.models import load_preset

    cfg = tiny_config(tmp_path, clips=1)
    _, enc = prepare_data(cfg, load_base(cfg), tmp_path / "run")
    assert isinstance(enc.text, LTXTextEncoder) and enc.text.source == "preset:tiny"
    assert enc.id.endswith("|text:tiny-ltx")
    with pytest.raises(ConfigError, match=r"^data\.text_encoder: 'tiny' .* expects caption_channels 3840: .*gemma"):
        training_text_encoder(cfg, load_preset("ltx-2.0-19b"), None, tmp_path / "cache")
