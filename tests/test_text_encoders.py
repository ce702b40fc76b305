"""LTX-2 text encoders (Gemma + LTX2TextConnectors): tiny preset, every file/folder layout, strict errors, offload.

All models are the real transformers / diffusers classes with tiny configs and seeded weights; tokenizers are built
in code (a byte-level BPE and a SentencePiece model trained on a few sentences).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from comfy_server import ComfyServer
from safetensors.torch import load_file, save_file

from editctrl_core.conditioning.text_encoders import (
    HFPromptTokenizer,
    LTXTextEncoder,
    PlainDevices,
    SentencePiecePromptTokenizer,
    build_connectors,
    build_gemma,
    build_tiny_text_encoder,
    load_text_encoder,
    load_text_preset,
    official_connector_state,
    save_gemma_comfy,
    tiny_tokenizer,
)
from editctrl_core.edit.scd import LTX2Stack
from editctrl_core.loading.models import ModelLoadError, build_transformer, load_preset, save_transformer_official
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import write_video

PROMPTS = ["a red disc on a table", "the empty textured background, no object"]
TINY_SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 260}


@pytest.fixture(scope="module")
def spiece() -> bytes:
    """A SentencePiece model (Gemma's special ids) trained in code on a few sentences."""
    import sentencepiece as spm

    buf = io.BytesIO()
    sentences = PROMPTS + ["a red car drives down the road", "a coloured disc", "hello world"]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 20), model_writer=buf, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                   character_coverage=1.0, minloglevel=2, hard_vocab_limit=False)
    return buf.getvalue()


def _gemma3_like(seed: int = 1) -> tuple[torch.nn.Module, dict]:
    """A Gemma-3 text model of the tiny preset's config (files of this size are read with preset="tiny")."""
    cfg = dict(load_text_preset("tiny").encoder)
    return build_gemma("gemma3_text", cfg, empty=False, seed=seed), cfg


def _tiny_connectors(seed: int = 2, **overrides: object) -> torch.nn.Module:
    return build_connectors({**load_text_preset("tiny").connectors, **overrides}, empty=False, seed=seed)


def _ltx23_connectors(seed: int = 3) -> torch.nn.Module:
    return _tiny_connectors(seed, per_modality_projections=True, video_hidden_dim=32, audio_hidden_dim=16,
                            audio_connector_attention_head_dim=8, proj_bias=True, video_gated_attn=True,
                            audio_gated_attn=True)


def _ckpt_with_connectors(path: Path, connectors: torch.nn.Module) -> Path:
    """An official-layout LTX single file: the tiny transformer plus the connectors' official keys."""
    save_transformer_official(build_transformer(load_preset("tiny")), path)
    state = load_file(str(path))
    state.update(official_connector_state(connectors))
    save_file(state, str(path))
    return path


def _reference(gemma: torch.nn.Module, connectors: torch.nn.Module, tokenizer: object) -> LTXTextEncoder:
    return LTXTextEncoder(gemma, connectors, tokenizer, "reference", max_length=64)


def test_tiny_preset_fits_the_tiny_transformer() -> None:
    enc = build_tiny_text_encoder()
    cond = enc.encode(PROMPTS)
    width = load_preset("tiny").transformer["caption_channels"]
    assert enc.caption_channels == width == 32
    assert cond.embeds.shape == (2, 64, width) and cond.audio_embeds.shape == (2, 64, width)
    assert cond.mask.shape == (2, 64) and bool(cond.mask.all())  # learnable registers fill the padding
    assert cond.embeds.dtype == torch.float32 and cond.embeds.device.type == "cpu"
    assert not torch.allclose(cond.embeds[0], cond.embeds[1])
    again = build_tiny_text_encoder().encode(PROMPTS)
    assert torch.equal(again.embeds, cond.embeds) and torch.equal(again.audio_embeds, cond.audio_embeds)
    ids, mask = enc.tokenize(["ab"])
    assert ids[0, -3:].tolist() == [2, 68, 69]  # BOS, then 4 specials + the byte alphabet from "!" (33): a = 97
    assert mask[0].sum() == 3 and mask[0, :-3].sum() == 0  # BOS + 2 bytes, padded on the left
    context = LTX2Stack(build_transformer(load_preset("tiny"))).text(cond)
    assert context.video.shape == (2, 64, 32) and context.audio.shape == (2, 64, 16)  # caption projections
    single = enc.encode("a red disc on a table")
    assert torch.equal(single.embeds[0], cond.embeds[0]) and single.prompt == "a red disc on a table"


def test_gemma_text_model_equals_the_multimodal_gemma_of_the_reference_pipelines() -> None:
    """diffusers' LTX2Pipeline and ltx-core run Gemma3ForConditionalGeneration; text-only, its hidden states are ours."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tiny = load_text_preset("tiny").encoder
    config = Gemma3Config(text_config=dict(tiny), vision_config={
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 14}, mm_tokens_per_image=4, image_token_index=259, boi_token_index=257,
        eoi_token_index=258)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        full = Gemma3ForConditionalGeneration(config).eval()
    text = build_gemma("gemma3_text", tiny, empty=False)
    text.load_state_dict({k[len("model.language_model."):]: v for k, v in full.state_dict().items()
                          if k.startswith("model.language_model.")})
    ids, mask = HFPromptTokenizer(tiny_tokenizer())(PROMPTS, 64, "left")
    with torch.no_grad():
        want = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = text(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == tiny["num_hidden_layers"] + 1
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_comfy_single_file_with_embedded_tokenizer_and_connectors_from_the_ltx_checkpoint(
        tmp_path: Path, spiece: bytes) -> None:
    gemma, _ = _gemma3_like()
    connectors = _tiny_connectors()
    save_gemma_comfy(gemma, tmp_path / "gemma_3_tiny_it.safetensors", spiece=spiece)
    ckpt = _ckpt_with_connectors(tmp_path / "ltx-tiny.safetensors", connectors)
    with pytest.raises(ModelLoadError, match="head size 128"):  # auto reads it as LTX-2.0: 30 x 128 heads
        load_text_encoder(tmp_path / "gemma_3_tiny_it.safetensors", connectors=ckpt, dtype=torch.float32)
    enc = load_text_encoder(tmp_path / "gemma_3_tiny_it.safetensors", "tiny", connectors=ckpt, dtype=torch.float32)
    assert enc.family == "tiny" and enc.max_length == 64 and isinstance(enc.tokenizer, SentencePiecePromptTokenizer)
    ref = _reference(gemma, connectors, SentencePiecePromptTokenizer(spiece))
    got, want = enc.encode(PROMPTS), ref.encode(PROMPTS)
    torch.testing.assert_close(got.embeds, want.embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.audio_embeds, want.audio_embeds, rtol=0, atol=1e-6)
    ids, mask = enc.tokenize(["a red disc"])
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=spiece).encode("a red disc")
    assert ids[0, -len(pieces) - 1:].tolist() == [2, *pieces] and int(mask.sum()) == len(pieces) + 1


@pytest.mark.parametrize("layout", ["hf-legacy", "hf-v5"])
def test_hf_single_file_needs_a_tokenizer_folder(tmp_path: Path, layout: str) -> None:
    gemma, _ = _gemma3_like(seed=4)
    connectors = _tiny_connectors(seed=5)
    prefix, extra = {
        "hf-legacy": ("language_model.model.", {"vision_tower.vision_model.post_layernorm.weight": torch.ones(4),
                                                "multi_modal_projector.mm_input_projection_weight": torch.ones(4, 2),
                                                "language_model.lm_head.weight": torch.ones(260, 32)}),
        "hf-v5": ("model.language_model.", {"model.vision_tower.vision_model.post_layernorm.weight": torch.ones(4),
                                            "model.multi_modal_projector.mm_soft_emb_norm.weight": torch.ones(4),
                                            "lm_head.weight": torch.ones(260, 32)}),
    }[layout]
    state = {prefix + k: v.contiguous() for k, v in gemma.state_dict().items()} | extra
    save_file(state, str(tmp_path / "gemma.safetensors"))
    save_file(official_connector_state(connectors), str(tmp_path / "connectors.safetensors"))
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_text_encoder(tmp_path / "gemma.safetensors", "tiny", connectors=tmp_path / "connectors.safetensors",
                          dtype=torch.float32)
    tiny_tokenizer().save_pretrained(str(tmp_path / "gemma_tokenizer"))
    enc = load_text_encoder(tmp_path / "gemma.safetensors", "tiny", connectors=tmp_path / "connectors.safetensors",
                            tokenizer=tmp_path / "gemma_tokenizer", dtype=torch.float32)
    assert "3 vision/lm-head keys ignored" in enc.source and isinstance(enc.tokenizer, HFPromptTokenizer)
    want = _reference(gemma, connectors, HFPromptTokenizer(tiny_tokenizer())).encode(PROMPTS)
    torch.testing.assert_close(enc.encode(PROMPTS).embeds, want.embeds, rtol=0, atol=1e-6)


def _save_folder(root: Path, model_type: str, text_config: dict, gemma: torch.nn.Module,
                 connectors: torch.nn.Module) -> None:
    """A diffusers pipeline folder: text_encoder/ (HF v5 layout), tokenizer/, connectors/."""
    (root / "text_encoder").mkdir(parents=True)
    (root / "text_encoder" / "config.json").write_text(json.dumps(
        {"model_type": model_type, "architectures": ["ForConditionalGeneration"], "text_config": text_config}))
    save_file({f"model.language_model.{k}": v.contiguous() for k, v in gemma.state_dict().items()},
              str(root / "text_encoder" / "model.safetensors"))
    tiny_tokenizer().save_pretrained(str(root / "tokenizer"))
    connectors.save_pretrained(str(root / "connectors"))


def test_diffusers_folder_with_ltx23_connectors(tmp_path: Path) -> None:
    gemma, cfg = _gemma3_like(seed=6)
    connectors = _ltx23_connectors()
    _save_folder(tmp_path / "LTX-2.3-tiny", "gemma3", gemma.config.to_dict(), gemma, connectors)
    enc = load_text_encoder(tmp_path / "LTX-2.3-tiny", dtype=torch.float32, max_length=64)
    assert enc.family == "ltx-2.3" and enc.caption_channels == 32 and enc.audio_channels == 16
    got = enc.encode(PROMPTS)
    want = _reference(gemma, connectors, HFPromptTokenizer(tiny_tokenizer())).encode(PROMPTS)
    assert got.embeds.shape == (2, 64, 32) and got.audio_embeds.shape == (2, 64, 16)
    torch.testing.assert_close(got.embeds, want.embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.audio_embeds, want.audio_embeds, rtol=0, atol=1e-6)


def test_gemma4_unified_folder_is_ltx25(tmp_path: Path) -> None:
    cfg = {**TINY_SIZES, "max_position_embeddings": 256, "layer_types": ["sliding_attention", "full_attention"],
           "per_layer_config": {}, "sliding_window": 32}
    gemma = build_gemma("gemma4_unified_text", cfg, empty=False, seed=7)
    connectors = _ltx23_connectors(seed=8)
    _save_folder(tmp_path / "LTX-2.5-tiny", "gemma4_unified", gemma.config.to_dict(), gemma, connectors)
    enc = load_text_encoder(tmp_path / "LTX-2.5-tiny", dtype=torch.float32, max_length=64)
    assert enc.family == "ltx-2.5" and type(enc.encoder).__name__ == "Gemma4UnifiedTextModel"
    want = _reference(gemma, connectors, HFPromptTokenizer(tiny_tokenizer())).encode(PROMPTS)
    torch.testing.assert_close(enc.encode(PROMPTS).embeds, want.embeds, rtol=0, atol=1e-6)
    single = tmp_path / "gemma4.safetensors"
    save_gemma_comfy(gemma, single)
    with pytest.raises(ModelLoadError, match="config.json"):
        load_text_encoder(single, connectors=tmp_path / "LTX-2.5-tiny", dtype=torch.float32)


def test_strict_loading_names_the_mismatch(tmp_path: Path, spiece: bytes) -> None:
    gemma, _ = _gemma3_like(seed=9)
    ckpt = _ckpt_with_connectors(tmp_path / "ltx.safetensors", _tiny_connectors(seed=10))
    state = {f"model.{k}": v.contiguous() for k, v in gemma.state_dict().items()}
    state["spiece_model"] = torch.tensor(list(spiece), dtype=torch.uint8)

    def attempt(name: str, st: dict, **kw: object) -> str:
        save_file(st, str(tmp_path / name))
        with pytest.raises(ModelLoadError) as err:
            load_text_encoder(tmp_path / name, kw.pop("preset", "tiny"), dtype=torch.float32, **kw)
        return str(err.value)

    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.down_proj.weight"}
    msg = attempt("missing.safetensors", missing, connectors=ckpt)
    assert "missing" in msg and "layers.1.mlp.down_proj.weight" in msg
    msg = attempt("extra.safetensors", state | {"model.layers.0.self_attn.extra.weight": torch.ones(2)},
                  connectors=ckpt)
    assert "unexpected" in msg and "layers.0.self_attn.extra.weight" in msg
    msg = attempt("outside.safetensors", state | {"value_head.weight": torch.ones(2)}, connectors=ckpt)
    assert "outside the Gemma language model" in msg and "value_head.weight" in msg
    msg = attempt("noconn.safetensors", state)
    assert "connectors" in msg and "LTX" in msg
    save_transformer_official(build_transformer(load_preset("tiny")), tmp_path / "bare.safetensors")
    msg = attempt("noconn2.safetensors", state, connectors=tmp_path / "bare.safetensors")
    assert "connectors" in msg
    wide = _ckpt_with_connectors(tmp_path / "wide.safetensors", _tiny_connectors(seed=11, text_proj_in_factor=5))
    msg = attempt("gemma_for_wide.safetensors", state, connectors=wide)
    assert "do not belong together" in msg
    bad = load_file(str(ckpt))
    key = "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.ff.net.2.weight"
    bad[key] = bad[key][:, :8].contiguous()
    save_file(bad, str(tmp_path / "bad_conn.safetensors"))
    msg = attempt("badshape.safetensors", state, connectors=tmp_path / "bad_conn.safetensors")
    assert "shape" in msg and "video_connector.transformer_blocks.0.ff.net.2.weight" in msg
    msg = attempt("preset.safetensors", state, connectors=ckpt, preset="ltx-2.3")
    assert "ltx-2.0" in msg and "ltx-2.3" in msg


class RecordingDevices(PlainDevices):
    """The default device manager, also recording calls and where the weights were during encoding."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def load(self, encoder: LTXTextEncoder) -> None:
        super().load(encoder)
        self.calls.append(f"load:{next(encoder.module.parameters()).device.type}")

    def unload(self, encoder: LTXTextEncoder) -> None:
        super().unload(encoder)
        self.calls.append(f"unload:{next(encoder.module.parameters()).device.type}")


def test_offload_after_encode_also_when_encoding_fails() -> None:
    enc = build_tiny_text_encoder(offload=True)
    enc.manager = RecordingDevices()
    enc.encode(["x"])
    assert enc.manager.calls == ["load:cpu", "unload:cpu"]

    def out_of_vocab(texts: list[str], max_length: int, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((len(texts), max_length), 10_000), torch.ones(len(texts), max_length, dtype=torch.long)

    enc.tokenizer = out_of_vocab
    with pytest.raises(IndexError):
        enc.encode(["x"])
    assert enc.manager.calls[-2:] == ["load:cpu", "unload:cpu"]
    kept = build_tiny_text_encoder(offload=False)
    kept.manager = RecordingDevices()
    kept.encode(["x"])
    assert kept.manager.calls == ["load:cpu"]
    with pytest.raises(ValueError, match="multiple"):
        build_tiny_text_encoder(max_length=60)


def test_loader_node_reads_files_from_comfyui_model_folders(comfy_server: ComfyServer, spiece: bytes,
                                                            tmp_path: Path) -> None:
    """On a real server: a ComfyUI-layout Gemma file from models/text_encoders + connectors from models/checkpoints."""
    text_dir, ckpt_dir = comfy_server.models_dir / "text_encoders", comfy_server.models_dir / "checkpoints"
    text_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    gemma, _ = _gemma3_like(seed=12)
    save_gemma_comfy(gemma, text_dir / "gemma_tiny_it.safetensors", spiece=spiece)
    _ckpt_with_connectors(ckpt_dir / "ltx-tiny-with-connectors.safetensors", _tiny_connectors(seed=13))
    info = comfy_server.object_info("EditCtrlLTXTextEncoderLoader")["EditCtrlLTXTextEncoderLoader"]["input"]
    required = info["required"]
    assert "gemma_tiny_it.safetensors" in json.dumps(required["text_encoder"])
    assert "checkpoints/ltx-tiny-with-connectors.safetensors" in json.dumps(required["connectors"])
    clip = tmp_path / "text_node_clip.mp4"
    write_video(clip, make_clip(9, 64, 96, seed=2).frames, fps=24)
    comfy_server.upload_image(clip)
    wf = json.loads((Path(__file__).resolve().parents[1] / "graphs" / "editctrl_demo.api.json").read_text())
    wf["1"]["inputs"]["file"] = clip.name
    wf["4"] = {"class_type": "EditCtrlLTXTextEncoderLoader", "inputs": {
        "text_encoder": "gemma_tiny_it.safetensors", "connectors": "checkpoints/ltx-tiny-with-connectors.safetensors",
        "tokenizer": "(from text encoder)", "preset": "tiny", "device": "cpu", "dtype": "float32",
        "offload_after_encode": True, "max_length": 0}}
    wf["9"]["inputs"]["steps"] = 1
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    assert "gemma_tiny_it.safetensors + ltx-tiny-with-connectors.safetensors" in comfy_server.log_text()
    wf["4"]["inputs"]["connectors"] = "(from text encoder)"
    failed = comfy_server.run(wf, timeout=300, check=False)
    assert failed.error is not None and "connectors" in failed.error["data"]["exception_message"]


def test_one_text_encoder_loader_and_one_encode_node(comfy_server: ComfyServer, tmp_path: Path) -> None:
    """The pack has one text-encoder loader (Gemma + connectors, or its tiny preset) and one encode node, whose two
    outputs are the prompt's and the negative prompt's conditioning from one pass: a CFG edit runs on them."""
    info = comfy_server.object_info()
    text_nodes = {name for name, node in info.items() if name.startswith("EditCtrl")
                  and any(t == "EDITCTRL_TEXT_ENCODER" for t in node["output"])}
    encode_nodes = {name for name, node in info.items() if name.startswith("EditCtrl")
                    and "EDITCTRL_TEXT_ENCODER" in json.dumps(node["input"]) and name not in text_nodes}
    assert text_nodes == {"EditCtrlLTXTextEncoderLoader"} and encode_nodes == {"EditCtrlTextEncode"}, (
        text_nodes, encode_nodes)
    encode = info["EditCtrlTextEncode"]
    assert encode["output_name"] == ["conditioning", "negative"] and "negative" in encode["input"]["optional"]
    clip = tmp_path / "encode_node_clip.mp4"
    write_video(clip, make_clip(9, 64, 96, seed=4).frames, fps=24)
    comfy_server.upload_image(clip)
    wf = json.loads((Path(__file__).resolve().parents[1] / "graphs" / "editctrl_demo.api.json").read_text())
    wf["1"]["inputs"]["file"] = clip.name
    wf["5"]["inputs"].update(text="the empty textured background", negative="a coloured disc")
    del wf["6"]
    wf["9"]["inputs"].update(positive=["5", 0], negative=["5", 1], cfg=3.0, steps=1)
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error


def test_width_check_tells_which_text_encoder_fits() -> None:
    from editctrl_core.conditioning.text_encoders import check_text_width

    cond = build_tiny_text_encoder().encode(["x"])
    check_text_width(cond, load_preset("tiny").transformer)
    with pytest.raises(ValueError, match="same LTX-2 version"):
        check_text_width(cond, load_preset("ltx-2.3").transformer)
