"""LTX-2's real text path: a Gemma text model (all hidden states) -> LTX-2 text connectors -> prompt embeddings.

LTX-2.0 / 2.3 encode prompts with Gemma-3 12B, LTX-2.5 with a Gemma-4 "unified" model (transformers
``gemma4_unified``). The stacked hidden states of every layer go through ``LTX2TextConnectors`` (diffusers): a
projection (``text_embedding_projection`` in the official files) and one 1-D transformer per modality. The
connectors ship inside the LTX checkpoint, not with Gemma, so a text encoder is assembled from up to three sources:

- Gemma weights: a single safetensors file from ``models/text_encoders`` in ComfyUI's layout (``model.layers.*``,
  often with the SentencePiece tokenizer embedded as a ``spiece_model`` byte tensor) or Hugging Face's
  (``language_model.model.*`` / ``model.language_model.*``), or a transformers / diffusers folder (``config.json``
  + safetensors, a diffusers pipeline folder with ``text_encoder/``, ``tokenizer/``, ``connectors/``);
- connectors: the LTX checkpoint (``text_embedding_projection.*``,
  ``model.diffusion_model.{video,audio}_embeddings_connector.*``), a split connectors file, or a diffusers
  ``connectors/`` folder;
- tokenizer: a folder with ``tokenizer.json`` / ``tokenizer.model``, or the ``spiece_model`` tensor of a ComfyUI
  file. A Hugging Face-layout single file has no tokenizer: give the Gemma folder (or its ``tokenizer/``) as well.

Configs ship in ``presets/text/*.json`` (no hub access). Every load is strict (`models.ModelLoadError` names the
missing / unexpected / misshapen keys); float8 Gemma files stay float8 (`fp8.strict_load_fp8`). The ``tiny`` preset
builds the same classes with tiny configs, seeded weights and a byte-level tokenizer made in code; its output is
32 wide, the tiny LTX preset's ``caption_channels``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import init_empty_weights
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from safetensors import SafetensorError, safe_open
from torch import nn

from ..loading.fp8 import strict_load_fp8
from ..loading.models import ModelLoadError, preset_names, read_preset_json
from ..loading.weights_file import save_safetensors
from .text import TextConditioning

TEXT_PRESET_DIR = Path(__file__).parents[1] / "presets" / "text"
OFFICIAL_CONNECTOR_PREFIXES = (
    "text_embedding_projection.",
    "model.diffusion_model.video_embeddings_connector.",
    "model.diffusion_model.audio_embeddings_connector.",
)
_STRIPPED_PREFIXES = ("model.diffusion_model.", "connectors.")
_CONNECTOR_RENAMES = (  # official (ltx-core / ComfyUI) -> diffusers, applied in order
    ("video_embeddings_connector.", "video_connector."),
    ("audio_embeddings_connector.", "audio_connector."),
    ("transformer_1d_blocks.", "transformer_blocks."),
    ("text_embedding_projection.audio_aggregate_embed.", "audio_text_proj_in."),
    ("text_embedding_projection.video_aggregate_embed.", "video_text_proj_in."),
    ("text_embedding_projection.aggregate_embed.", "text_proj_in."),
    ("text_embedding_projection.weight", "text_proj_in.weight"),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)
_DIFFUSERS_CONNECTOR_ROOTS = ("text_proj_in.", "video_text_proj_in.", "audio_text_proj_in.", "video_connector.",
                              "audio_connector.")
_GEMMA_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "language_model.", "")
_GEMMA_IGNORED = (  # keys of a multimodal Gemma file that text encoding does not use
    "vision_tower.", "model.vision_tower.", "vision_model.", "multi_modal_projector.", "model.multi_modal_projector.",
    "model.embed_vision.", "embed_vision.", "model.embed_audio.", "embed_audio.", "audio_tower.", "model.audio_tower.",
    "lm_head.", "language_model.lm_head.", "spiece_model",
)
_WRAPPER_TYPES = {"gemma3": "gemma3_text", "gemma4_unified": "gemma4_unified_text", "gemma4": "gemma4_text"}
SPIECE_KEY = "spiece_model"


def _encoder_classes(encoder_type: str) -> tuple[type, type]:
    """(config class, text model class) for a Gemma text model type."""
    if encoder_type == "gemma3_text":
        from transformers import Gemma3TextConfig, Gemma3TextModel

        return Gemma3TextConfig, Gemma3TextModel
    if encoder_type == "gemma4_unified_text":
        from transformers.models.gemma4_unified import Gemma4UnifiedTextConfig, Gemma4UnifiedTextModel

        return Gemma4UnifiedTextConfig, Gemma4UnifiedTextModel
    if encoder_type == "gemma4_text":
        from transformers import Gemma4TextConfig, Gemma4TextModel

        return Gemma4TextConfig, Gemma4TextModel
    raise ModelLoadError(f"unsupported text encoder type {encoder_type!r}; supported: gemma3, gemma4_unified, gemma4")


@dataclass
class TextPreset:
    """A text-encoder configuration shipped with the pack (`presets/text/<name>.json`)."""

    name: str
    family: str
    encoder_type: str
    encoder: dict[str, Any] | None
    connectors: dict[str, Any]
    tokenizer: str = "required"
    max_length: int = 1024
    padding_side: str = "left"
    seed: int = 0
    notes: str = ""


def list_text_presets() -> list[str]:
    """Names of the text-encoder presets shipped with the pack."""
    return preset_names(TEXT_PRESET_DIR)


def load_text_preset(name: str) -> TextPreset:
    """Read a shipped text-encoder preset by name."""
    return TextPreset(name=name, **read_preset_json(TEXT_PRESET_DIR, name, "text encoder preset"))


# ---------------------------------------------------------------------------------------------- tokenizers


class PromptTokenizer(Protocol):
    """Turns prompts into left- or right-padded ids and a 0/1 mask of a fixed length."""

    def __call__(self, texts: list[str], max_length: int, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, max_length] long, mask [B, max_length] long)."""
        ...


class HFPromptTokenizer:
    """A transformers tokenizer used the way LTX-2 does: strip, BOS, pad to `max_length` (left by default), truncate."""

    def __init__(self, tokenizer: Any, source: str = ""):
        """Wrap `tokenizer` (pad token defaults to EOS, as LTX-2's pipelines do)."""
        self.tokenizer = tokenizer
        self.source = source
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def __call__(self, texts: list[str], max_length: int, padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded to exactly `max_length`."""
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer([t.strip() for t in texts], padding="max_length", max_length=max_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        return enc.input_ids.long(), enc.attention_mask.long()


class SentencePiecePromptTokenizer:
    """Gemma's SentencePiece model from its serialized bytes (ComfyUI files embed it as ``spiece_model``)."""

    def __init__(self, model_proto: bytes, bos_id: int | None = None, pad_id: int | None = None):
        """Load the serialized SentencePiece model (needs the `sentencepiece` package, a ComfyUI requirement)."""
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.bos_id = self.sp.bos_id() if bos_id is None else bos_id
        self.pad_id = (self.sp.pad_id() if self.sp.pad_id() >= 0 else 0) if pad_id is None else pad_id
        self.source = "spiece_model"

    def __call__(self, texts: list[str], max_length: int, padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (BOS + pieces, no EOS, as Gemma's tokenizer) and mask, padded to `max_length`."""
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = ([self.bos_id] + self.sp.encode(text.strip()))[:max_length]
            span = slice(max_length - len(tokens), max_length) if padding_side == "left" else slice(0, len(tokens))
            ids[row, span] = torch.tensor(tokens, dtype=torch.long)
            mask[row, span] = 1
        return ids, mask


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (Gemma's special ids: pad 0, eos 1, bos 2) built in code, for the tiny preset."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                        special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def load_tokenizer_folder(folder: str | Path) -> HFPromptTokenizer:
    """A tokenizer from a local folder (or its `tokenizer/` sub-folder); never contacts a hub."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if (folder / "tokenizer").is_dir():
        folder = folder / "tokenizer"
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((folder / n).is_file() for n in names):
        raise ModelLoadError(f"{folder} holds no tokenizer ({', '.join(names)}); point 'tokenizer' at the Gemma folder")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the tokenizer in {folder}: {exc}") from exc
    return HFPromptTokenizer(tok, str(folder))


# ---------------------------------------------------------------------------------------------- the encoder


class DeviceManager(Protocol):
    """Moves an encoder's modules onto its compute device and back (ComfyUI's model management plugs in here)."""

    def load(self, encoder: LTXTextEncoder) -> None:
        """Make the encoder's modules ready on `encoder.device`."""
        ...

    def unload(self, encoder: LTXTextEncoder) -> None:
        """Move the encoder's modules to `encoder.offload_device`."""
        ...


class PlainDevices:
    """Default device manager: `.to(device)` / `.to(offload_device)`."""

    def load(self, encoder: LTXTextEncoder) -> None:
        """Move to the compute device."""
        encoder.module.to(encoder.device)

    def unload(self, encoder: LTXTextEncoder) -> None:
        """Move to the offload device."""
        encoder.module.to(encoder.offload_device)


@dataclass
class LTXTextEncoder:
    """Gemma text model + LTX-2 connectors + tokenizer; `encode(prompts)` gives the transformer's text conditioning."""

    encoder: nn.Module
    connectors: LTX2TextConnectors
    tokenizer: PromptTokenizer | Callable[..., tuple[torch.Tensor, torch.Tensor]]
    family: str
    max_length: int = 1024
    padding_side: str = "left"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload: bool = False
    source: str = ""
    manager: DeviceManager = field(default_factory=PlainDevices)

    def __post_init__(self) -> None:
        """Normalise devices, group the modules, check the length against the connectors' registers."""
        self.device = torch.device(self.device)
        self.offload_device = torch.device(self.offload_device)
        self.module = nn.ModuleDict({"encoder": self.encoder, "connectors": self.connectors}).eval()
        regs = [r for r in (self.connectors.config.video_connector_num_learnable_registers,
                            self.connectors.config.audio_connector_num_learnable_registers) if r]
        for r in regs:
            if self.max_length % r:
                raise ValueError(f"max_length {self.max_length} must be a multiple of the connectors' {r} registers")

    @property
    def caption_channels(self) -> int:
        """Width of the video embeddings this encoder produces."""
        c = self.connectors.config
        if c.per_modality_projections:
            return c.video_hidden_dim
        return c.caption_channels

    @property
    def audio_channels(self) -> int:
        """Width of the audio-stream embeddings."""
        c = self.connectors.config
        return c.audio_hidden_dim if c.per_modality_projections else c.caption_channels

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (that of the connectors' parameters)."""
        return next(self.connectors.parameters()).dtype

    def describe(self) -> str:
        """One line for logs."""
        params = sum(p.numel() for p in self.module.parameters())
        return (f"{self.family} text encoder ({type(self.encoder).__name__}, {params / 1e6:.1f} M parameters, "
                f"{self.dtype}, on {self.device}{', offloaded after encoding' if self.offload else ''}) from "
                f"{self.source}")

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Modules on the compute device inside the block; back on the offload device after it when `offload`."""
        self.manager.load(self)
        try:
            yield
        finally:
            if self.offload:
                self.manager.unload(self)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask of the prompts at this encoder's length and padding side."""
        return self.tokenizer(list(prompts), self.max_length, self.padding_side)

    @torch.no_grad()
    def hidden_states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gemma's hidden states of all layers, stacked and flattened to [B, T, hidden x (layers + 1)], and the mask."""
        ids, mask = self.tokenize(prompts)
        with self.on_device():
            return self._hidden(ids, mask)

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run Gemma on the encoder's current device; all hidden states packed to [B, T, D x L]."""
        dev = next(self.encoder.parameters()).device
        out = self.encoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=-1).flatten(2, 3), mask.to(dev)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextConditioning:
        """Prompt embeddings for the transformer (video + audio streams) and their mask, on the CPU in float32."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(prompts)
        with self.on_device():
            hidden, mask = self._hidden(ids, mask)
            video, audio, out_mask = self.connectors(hidden.to(self.dtype), mask, padding_side=self.padding_side)
            result = TextConditioning(video.float().cpu(), out_mask.cpu(), prompts[0] if len(prompts) == 1 else "",
                                         audio.float().cpu())
            del hidden, video, audio
        return result


# ---------------------------------------------------------------------------------------------- reading files


def _read_selected(path: Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file whose key `keep` accepts (the rest is never read from disk)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file ({exc}); re-download or re-export it") from exc


def _safetensors_files(folder: Path) -> list[Path]:
    """The safetensors shards of a folder (refusing folders with only pickles)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights (.bin pickles are not loaded for safety)")
    return files


def _describe(keys: list[str], limit: int = 6) -> str:
    """The first keys of a list, and how many more there are."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def gemma_text_state(state: dict[str, torch.Tensor], what: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The text model's weights (Gemma*TextModel keys) of a Gemma file in any layout, and the keys it ignored.

    Vision/audio towers, projector, lm_head and an embedded tokenizer are ignored (named in the second result);
    anything else outside the language model is an error.
    """
    prefix = next((p for p in _GEMMA_PREFIXES if f"{p}embed_tokens.weight" in state), None)
    if prefix is None:
        raise ModelLoadError(f"{what} holds no Gemma language model (no embed_tokens.weight under any of "
                             f"{', '.join(repr(p) for p in _GEMMA_PREFIXES if p)} or at the top level)")
    text, ignored, unknown = {}, [], []
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith(".scaled_fp8"):
            text["scaled_fp8"] = value  # ComfyUI's fp8 marker: read (and dropped) by the fp8 loader
        elif key.startswith(_GEMMA_IGNORED):
            ignored.append(key)
        elif key.startswith(prefix):
            text[key[len(prefix):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelLoadError(f"{what}: {len(unknown)} keys outside the Gemma language model: {_describe(sorted(unknown))}")
    return text, ignored


def infer_gemma_config(state: dict[str, torch.Tensor] | dict[str, tuple], base: dict[str, Any]) -> dict[str, Any]:
    """Gemma text config from weight shapes (sizes, heads, layers) on top of `base` (RoPE, windows, eps...)."""
    def shape(key: str) -> tuple[int, ...]:
        """Shape of a tensor or of a header entry."""
        v = state[key]
        return tuple(v[0]) if isinstance(v, tuple) else tuple(v.shape)

    cfg = dict(base)
    vocab, hidden = shape("embed_tokens.weight")
    layers = len({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    head_dim = shape("layers.0.self_attn.q_norm.weight")[0]
    cfg.update(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, head_dim=head_dim,
               num_attention_heads=shape("layers.0.self_attn.q_proj.weight")[0] // head_dim,
               num_key_value_heads=shape("layers.0.self_attn.k_proj.weight")[0] // head_dim,
               intermediate_size=shape("layers.0.mlp.gate_proj.weight")[0])
    return cfg


def _gemma_type_from_keys(keys: Any) -> str:
    """gemma4_unified_text if the weights carry Gemma-4's per-layer scalars, else gemma3_text."""
    return "gemma4_unified_text" if any(k.endswith(".layer_scalar") for k in keys) else "gemma3_text"


def build_gemma(encoder_type: str, config: dict[str, Any], *, empty: bool, seed: int = 0) -> nn.Module:
    """A Gemma text model: uninitialised parameters (`empty`, buffers real) to load into, or seeded random weights."""
    config_cls, model_cls = _encoder_classes(encoder_type)
    cfg = config_cls.from_dict({k: v for k, v in config.items()
                                if not k.startswith("_") and k not in ("model_type", "architectures")})
    if empty:
        with init_empty_weights(include_buffers=False):
            return model_cls(cfg).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(cfg).eval()


def _strict_module(module: nn.Module, state: dict[str, torch.Tensor], what: str, dtype: torch.dtype | None,
                   device: torch.device) -> nn.Module:
    """Strict load keeping float8 tensors float8 (names mismatching keys)."""
    module = strict_load_fp8(module, state, what=what, dtype=dtype, device=device)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def connector_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers `LTX2TextConnectors` keys from official / ComfyUI / diffusers connector weights (others dropped)."""
    out = {}
    for key, value in state.items():
        new = key
        for prefix in _STRIPPED_PREFIXES:
            if new.startswith(prefix):
                new = new[len(prefix):]
        for old, rep in _CONNECTOR_RENAMES:
            new = new.replace(old, rep)
        if new.startswith(_DIFFUSERS_CONNECTOR_ROOTS):
            out[new] = value
    return out


def official_connector_state(connectors: LTX2TextConnectors) -> dict[str, torch.Tensor]:
    """Connector weights in the official single-file layout (inverse of `connector_state`; writes test files)."""
    inverse = (
        ("text_proj_in.", "text_embedding_projection.aggregate_embed."),
        ("video_text_proj_in.", "text_embedding_projection.video_aggregate_embed."),
        ("audio_text_proj_in.", "text_embedding_projection.audio_aggregate_embed."),
        ("video_connector.", "model.diffusion_model.video_embeddings_connector."),
        ("audio_connector.", "model.diffusion_model.audio_embeddings_connector."),
    )
    out = {}
    for key, value in connectors.state_dict().items():
        new = key.replace(".transformer_blocks.", ".transformer_1d_blocks.").replace(".norm_q.", ".q_norm.")
        new = new.replace(".norm_k.", ".k_norm.")
        for old, rep in inverse:
            if new.startswith(old):
                new = rep + new[len(old):]
                break
        out[new] = value.detach().contiguous()
    return out


def infer_connector_config(state: dict[str, torch.Tensor], base: dict[str, Any],
                           encoder_hidden: int | None = None, encoder_layers: int | None = None) -> dict[str, Any]:
    """LTX2TextConnectors config from connector weights (projection style, widths, depth, registers, gating).

    Head counts are read from the attention gates when gated (2.3); otherwise the preset's head size is kept and the
    count follows the width.
    """
    cfg = dict(base)
    per_modality = "video_text_proj_in.weight" in state
    if per_modality:
        v_out, flat = state["video_text_proj_in.weight"].shape
        a_out = state["audio_text_proj_in.weight"].shape[0]
        cfg.update(per_modality_projections=True, video_hidden_dim=v_out, audio_hidden_dim=a_out,
                   proj_bias="video_text_proj_in.bias" in state)
        caption = encoder_hidden or cfg.get("caption_channels")
    elif "text_proj_in.weight" in state:
        caption, flat = state["text_proj_in.weight"].shape
        cfg.update(per_modality_projections=False, proj_bias="text_proj_in.bias" in state)
    else:
        raise ModelLoadError("no text projection in the connector weights (text_embedding_projection.* / "
                             "text_proj_in.*): pick the LTX checkpoint (or its connectors file) as 'connectors'")
    if caption is None and encoder_layers is not None:
        caption = flat // (encoder_layers + 1)
    if not caption or flat % caption:
        raise ModelLoadError(f"connector projection input {flat} is not a multiple of the text encoder width {caption}")
    cfg.update(caption_channels=int(caption), text_proj_in_factor=int(flat // caption))
    for stream in ("video", "audio"):
        root = f"{stream}_connector."
        blocks = {int(k[len(root):].split(".")[1]) for k in state if k.startswith(root + "transformer_blocks.")}
        if not blocks:
            raise ModelLoadError(f"no {stream} connector blocks in the connector weights")
        width = state[f"{root}transformer_blocks.0.attn1.to_q.weight"].shape[0]
        gate = state.get(f"{root}transformer_blocks.0.attn1.to_gate_logits.weight")
        head_dim = width // gate.shape[0] if gate is not None else cfg.get(f"{stream}_connector_attention_head_dim", 128)
        if width % head_dim:
            raise ModelLoadError(f"{stream} connector width {width} is not a multiple of the preset's head size "
                                 f"{head_dim}: choose the text preset that matches these weights")
        cfg[f"{stream}_connector_attention_head_dim"] = head_dim
        registers = state.get(f"{root}learnable_registers")
        cfg.update({f"{stream}_connector_num_layers": len(blocks),
                    f"{stream}_connector_num_attention_heads": width // head_dim,
                    f"{stream}_connector_num_learnable_registers": None if registers is None else registers.shape[0],
                    f"{stream}_gated_attn": f"{root}transformer_blocks.0.attn1.to_gate_logits.weight" in state})
    return cfg


def build_connectors(config: dict[str, Any], *, empty: bool, seed: int = 0) -> LTX2TextConnectors:
    """LTX2TextConnectors from a config: on the meta device to load into (`empty`), or with seeded weights."""
    if empty:
        with torch.device("meta"):
            return LTX2TextConnectors(**config).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LTX2TextConnectors(**config).eval()


def _read_connectors(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """Connector weights (diffusers keys), a diffusers config if the source has one, and a label."""
    if source.is_dir():
        folder = source / "connectors" if (source / "connectors").is_dir() else source
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ModelLoadError(f"{folder} has no config.json: not a diffusers connectors folder")
        state: dict[str, torch.Tensor] = {}
        for f in _safetensors_files(folder):
            state.update(_read_selected(f, lambda k: True))
        config = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
        return connector_state(state), config, f"{source.name}/connectors"
    if not source.is_file():
        raise ModelLoadError(f"connectors file not found: {source}")
    state = _read_selected(source, lambda k: k.startswith(OFFICIAL_CONNECTOR_PREFIXES + _DIFFUSERS_CONNECTOR_ROOTS + (
        "connectors.", "video_embeddings_connector.", "audio_embeddings_connector.")))
    return connector_state(state), None, source.name


def _read_gemma(source: Path) -> dict[str, Any]:
    """Gemma weights, type, config (folder) or None, embedded tokenizer bytes, sibling tokenizer/connector folders."""
    found: dict[str, Any] = {"config": None, "spiece": None, "tokenizer_dir": None, "connectors_dir": None}
    if source.is_dir():
        root = source / "text_encoder" if (source / "text_encoder" / "config.json").is_file() else source
        config_path = root / "config.json"
        if not config_path.is_file():
            raise ModelLoadError(f"{source} has no config.json (nor text_encoder/config.json): not a transformers or "
                                 "diffusers text encoder folder")
        raw = json.loads(config_path.read_text())
        model_type = raw.get("model_type", "")
        if model_type in _WRAPPER_TYPES:
            found["type"], config = _WRAPPER_TYPES[model_type], raw.get("text_config") or {}
        else:
            found["type"], config = model_type, raw
        _encoder_classes(found["type"])
        found["config"] = {k: v for k, v in config.items() if not k.startswith("_")}
        state: dict[str, torch.Tensor] = {}
        for f in _safetensors_files(root):
            state.update(_read_selected(f, lambda k: True))
        for candidate in (source / "tokenizer", root, source):
            if any((candidate / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
                found["tokenizer_dir"] = candidate
                break
        if (source / "connectors" / "config.json").is_file():
            found["connectors_dir"] = source
        found["state"] = state
        return found
    if not source.is_file():
        raise ModelLoadError(f"text encoder file not found: {source}")
    state = _read_selected(source, lambda k: True)
    spiece = state.pop(SPIECE_KEY, None)
    if spiece is not None:
        found["spiece"] = bytes(spiece.to(torch.uint8).flatten().tolist())
    found["state"] = state
    found["type"] = _gemma_type_from_keys(state)
    return found


def _pick_preset(requested: str, encoder_type: str, per_modality: bool, what: str) -> TextPreset:
    """The text preset for detected weights: the requested one if it agrees, else the detected family."""
    if encoder_type.startswith("gemma4"):
        detected = "ltx-2.5"
    else:
        detected = "ltx-2.3" if per_modality else "ltx-2.0"
    if requested not in ("auto", detected):
        req = load_text_preset(requested)
        if req.encoder_type != encoder_type or bool(req.connectors.get("per_modality_projections")) != per_modality:
            raise ModelLoadError(f"{what} is an {detected} text encoder (detected from its keys and shapes) but preset "
                                 f"{requested!r} was selected; choose {detected!r} or 'auto'")
        return req
    return load_text_preset(detected)


def build_tiny_text_encoder(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                            offload: bool = False, max_length: int | None = None) -> LTXTextEncoder:
    """The `tiny` preset: real Gemma3TextModel + LTX2TextConnectors with tiny configs, seeded, byte tokenizer."""
    preset = load_text_preset("tiny")
    encoder = build_gemma(preset.encoder_type, preset.encoder, empty=False, seed=preset.seed + 10)
    connectors = build_connectors(preset.connectors, empty=False, seed=preset.seed + 11)
    if dtype != torch.float32:
        encoder, connectors = encoder.to(dtype), connectors.to(dtype)
    for p in list(encoder.parameters()) + list(connectors.parameters()):
        p.requires_grad_(False)
    enc = LTXTextEncoder(encoder, connectors, HFPromptTokenizer(tiny_tokenizer(), "builtin"), preset.family,
                         max_length or preset.max_length, preset.padding_side, torch.device(device),
                         offload=offload, source="preset:tiny")
    enc.module.to(enc.offload_device if offload else enc.device)
    return enc


def load_text_encoder(source: str | Path | None, preset: str = "auto", *, connectors: str | Path | None = None,
                      tokenizer: str | Path | None = None, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None, offload: bool = False,
                      max_length: int | None = None) -> LTXTextEncoder:
    """Assemble an LTX-2 text encoder from Gemma weights, connector weights and a tokenizer (see module docs).

    `source=None` builds a preset with seeded weights (only `tiny`). `dtype=None` keeps float32 for `tiny` and uses
    bfloat16 otherwise (Gemma-3 12B is 24 GB in bf16). With `offload` the modules wait on the CPU and go back there
    after each encode; otherwise they stay on `device`.
    """
    device = torch.device(device)
    if source is None:
        if preset not in ("tiny",):
            raise ModelLoadError(f"text encoder preset {preset!r} needs weights: choose a Gemma file or folder from "
                                 "models/text_encoders (only 'tiny' has built-in weights)")
        return build_tiny_text_encoder(device=device, dtype=dtype or torch.float32, offload=offload,
                                       max_length=max_length)
    source = Path(source)
    gemma = _read_gemma(source)
    text, ignored = gemma_text_state(gemma["state"], source.name)
    del gemma["state"]
    conn_source = Path(connectors) if connectors is not None else gemma["connectors_dir"]
    conn_state: dict[str, torch.Tensor] = {}
    conn_config: dict[str, Any] | None = None
    conn_label = ""
    if conn_source is not None:
        conn_state, conn_config, conn_label = _read_connectors(conn_source)
    if not conn_state:
        raise ModelLoadError(
            f"no LTX-2 text connectors for {source.name}: they ship in the LTX checkpoint, not with Gemma. Choose the "
            "LTX-2 checkpoint (models/checkpoints, e.g. ltx-2-19b-dev.safetensors), its split connectors file, or a "
            "diffusers folder with connectors/ as 'connectors'")
    per_modality = "video_text_proj_in.weight" in conn_state
    chosen = _pick_preset(preset, gemma["type"], per_modality, source.name)
    if gemma["config"] is not None:
        enc_config = gemma["config"]
    elif chosen.encoder is not None:
        enc_config = infer_gemma_config(text, chosen.encoder)
    else:
        raise ModelLoadError(f"{source.name}: a {chosen.family} ({gemma['type']}) text encoder needs its config.json — "
                             "use the model folder (config.json + safetensors + tokenizer) instead of a single file")
    dtype = dtype or torch.bfloat16
    encoder = _strict_module(build_gemma(gemma["type"], enc_config, empty=True), text, f"{source.name} (Gemma)",
                             dtype, device if not offload else torch.device("cpu"))
    cfg = conn_config or infer_connector_config(conn_state, chosen.connectors,
                                                encoder_hidden=enc_config["hidden_size"],
                                                encoder_layers=enc_config["num_hidden_layers"])
    expected_flat = enc_config["hidden_size"] * (enc_config["num_hidden_layers"] + 1)
    if cfg["caption_channels"] * cfg["text_proj_in_factor"] != expected_flat:
        raise ModelLoadError(
            f"connectors from {conn_label} expect {cfg['caption_channels']} x {cfg['text_proj_in_factor']} text "
            f"features but {source.name} gives {enc_config['hidden_size']} x {enc_config['num_hidden_layers'] + 1}: "
            "the text encoder and the LTX checkpoint do not belong together")
    conn = _strict_module(build_connectors(cfg, empty=True), conn_state, f"{conn_label} (text connectors)", dtype,
                          device if not offload else torch.device("cpu"))
    if tokenizer is not None:
        tok: Any = load_tokenizer_folder(tokenizer)
    elif gemma["tokenizer_dir"] is not None:
        tok = load_tokenizer_folder(gemma["tokenizer_dir"])
    elif gemma["spiece"] is not None:
        tok = SentencePiecePromptTokenizer(gemma["spiece"])
    else:
        raise ModelLoadError(
            f"{source.name} has no tokenizer: a single Hugging Face-layout file does not carry one. Put the Gemma "
            "tokenizer (tokenizer.json / tokenizer.model from the same Gemma release) in a folder under "
            "models/text_encoders and choose it as 'tokenizer', or use ComfyUI's Gemma file (it embeds spiece_model)")
    label = f"{source.name} + {conn_label}" + (f" ({len(ignored)} vision/lm-head keys ignored)" if ignored else "")
    enc = LTXTextEncoder(encoder, conn, tok, chosen.family, max_length or chosen.max_length, chosen.padding_side,
                         device, offload=offload, source=label)
    return enc


def save_gemma_comfy(encoder: nn.Module, path: str | Path, spiece: bytes | None = None,
                     prefix: str = "model.") -> None:
    """Write a Gemma text model as one safetensors file (ComfyUI layout `model.*`, optional `spiece_model`)."""
    out = {prefix + k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    if spiece is not None:
        out[SPIECE_KEY] = torch.tensor(list(spiece), dtype=torch.uint8)
    save_safetensors(path, out)


def check_text_width(cond: TextConditioning, transformer_config: Any) -> None:
    """Raise a clear error when prompt embeddings do not fit a transformer (LTX-2.0 vs 2.3/2.5 text encoders)."""
    cfg = dict(transformer_config)
    if cfg.get("use_prompt_embeddings", True):
        want, what = cfg["caption_channels"], "caption_channels"
    else:
        want, what = cfg["num_attention_heads"] * cfg["attention_head_dim"], "transformer width (no caption projection)"
    got = cond.embeds.shape[-1]
    if got != want:
        raise ValueError(f"the prompt embeddings are {got} wide but the model expects {want} ({what}): load the text "
                         "encoder (and connectors) of the same LTX-2 version as the video model")
