"""The text nodes: one loader (LTX-2's Gemma + connectors, or its built-in tiny preset) and one encode node."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io

from ..editctrl_core.conditioning.text import TextConditioning
from ..editctrl_core.conditioning.text import TextEncoder as TextEncoderProtocol
from ..editctrl_core.conditioning.text_encoders import list_text_presets, load_text_encoder
from . import vram
from .common import CATEGORY, EditConditioning, TextEncoder, pick_device

log = logging.getLogger("editctrl")

TINY = "(tiny preset)"
FROM_ENCODER = "(from text encoder)"
TEXT_FOLDER = "text_encoders"
CONNECTOR_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def _folders(kind: str, test: tuple[str, ...]) -> list[str]:
    """Sub-folders (`name/`) of a ComfyUI model folder containing one of the relative paths in `test`."""
    found = []
    for base in folder_paths.get_folder_paths(kind) if kind in folder_paths.folder_names_and_paths else []:
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            if any(os.path.isfile(os.path.join(base, name, t)) for t in test):
                found.append(name + "/")
    return found


def _files(kind: str) -> list[str]:
    """`.safetensors` files of a ComfyUI model folder (empty if the folder type is unknown)."""
    if kind not in folder_paths.folder_names_and_paths:
        return []
    return [n for n in folder_paths.get_filename_list(kind) if n.endswith(".safetensors")]


def list_text_encoder_sources() -> list[str]:
    """Loader choices: the tiny preset, then Gemma files and transformers/diffusers folders in models/text_encoders."""
    return [TINY] + _files(TEXT_FOLDER) + _folders(TEXT_FOLDER, ("config.json", "text_encoder/config.json"))


def _first_real(choices: list[str], placeholder: str) -> str:
    """The first choice that is a real file or folder, else the placeholder (the tiny preset / from the encoder)."""
    return next((c for c in choices if c != placeholder), placeholder)


def list_connector_sources() -> list[str]:
    """Where the LTX-2 text connectors come from: the encoder folder, an LTX checkpoint, or a connectors file/folder."""
    choices = [FROM_ENCODER]
    for kind in CONNECTOR_FOLDERS:
        choices += [f"{kind}/{n}" for n in _files(kind) + _folders(kind, ("connectors/config.json",))]
    return choices


def list_tokenizer_sources() -> list[str]:
    """Tokenizer choices: from the encoder (folder or ComfyUI file), or a tokenizer folder in models/text_encoders."""
    return [FROM_ENCODER] + _folders(TEXT_FOLDER, _TOKENIZER_FILES + tuple(f"tokenizer/{f}" for f in _TOKENIZER_FILES))


def _resolve(kind: str, name: str) -> Path:
    """Absolute path of `name` inside ComfyUI model folder `kind`, refusing paths that escape it."""
    if name.endswith("/"):
        for base in folder_paths.get_folder_paths(kind):
            real_base = os.path.realpath(base)
            candidate = os.path.realpath(os.path.join(base, name))
            if os.path.commonpath([candidate, real_base]) != real_base:
                raise ValueError(f"{kind}/{name} escapes the {kind} folder")
            if os.path.isdir(candidate):
                return Path(candidate)
        raise FileNotFoundError(f"folder {name} not found in any {kind} folder")
    return Path(folder_paths.get_full_path_or_raise(kind, name))


def _resolve_choice(choice: str) -> Path:
    """Path of a `kind/name` connector choice."""
    kind, _, name = choice.partition("/")
    if kind not in CONNECTOR_FOLDERS or not name:
        raise ValueError(f"connector source {choice!r} must be one of the listed entries")
    return _resolve(kind, name)


class EditCtrlLTXTextEncoderLoader(io.ComfyNode):
    """Load LTX-2's text encoder: Gemma-3 (2.0/2.3) or Gemma-4 (2.5) plus the LTX-2 text connectors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs and outputs of the node (defaults: the first real Gemma file and LTX checkpoint found)."""
        encoders, connectors = list_text_encoder_sources(), list_connector_sources()
        return io.Schema(
            node_id="EditCtrlLTXTextEncoderLoader",
            display_name="EditCtrl Load Text Encoder",
            category=CATEGORY,
            description="Gemma text model + LTX-2 text connectors -> prompt conditioning for the EditCtrl sampler. "
                        "The connectors ship inside the LTX-2 checkpoint: pick it under 'connectors'.",
            inputs=[
                io.Combo.Input("text_encoder", options=encoders, default=_first_real(encoders, TINY),
                               tooltip="Gemma weights from models/text_encoders: a .safetensors file (ComfyUI's "
                                       "gemma_3_12B_it file embeds its tokenizer) or a transformers/diffusers folder. "
                                       "'(tiny preset)' is the built-in test/demo encoder."),
                io.Combo.Input("connectors", options=connectors, default=_first_real(connectors, FROM_ENCODER),
                               tooltip="LTX-2 text connectors: the LTX-2 checkpoint (e.g. ltx-2-19b-dev.safetensors), "
                                       "a split connectors file, or a diffusers folder with connectors/. "
                                       "'(from text encoder)' uses the encoder folder's connectors/."),
                io.Combo.Input("tokenizer", options=list_tokenizer_sources(),
                               tooltip="A folder with the Gemma tokenizer (tokenizer.json / tokenizer.model). Needed "
                                       "when the Gemma file is a Hugging Face-layout single file (it has none)."),
                io.Combo.Input("preset", options=["auto", *list_text_presets()], default="auto",
                               tooltip="'auto' detects LTX-2.0 / 2.3 / 2.5 from the weights."),
                io.Combo.Input("device", options=["auto", "cpu", "cuda"], default="auto",
                               tooltip="Where encoding runs. 'cpu' keeps the 24 GB Gemma-3 off the GPU (slow)."),
                io.Combo.Input("dtype", options=["auto", "bfloat16", "float16", "float32"], default="auto",
                               tooltip="'auto': float32 for the tiny preset, bfloat16 otherwise (also on the CPU). "
                                       "fp8 Gemma files stay fp8 in memory and compute in this dtype."),
                io.Boolean.Input("offload_after_encode", default=True,
                                 tooltip="Move the encoder back to the CPU right after encoding (frees VRAM for the "
                                         "video model). Off: it stays loaded until ComfyUI needs the memory."),
                io.Int.Input("max_length", default=0, min=0, max=4096, step=8,
                             tooltip="Prompt length in tokens (multiple of the connectors' registers); 0 = preset "
                                     "default (1024 for the real models)."),
            ],
            outputs=[TextEncoder.Output(display_name="text_encoder", tooltip="For EditCtrl Text Encode.")],
        )

    @classmethod
    def execute(cls, text_encoder: str, connectors: str, tokenizer: str, preset: str, device: str, dtype: str,
                offload_after_encode: bool, max_length: int) -> io.NodeOutput:
        """Resolve the chosen files, load the encoder and register it with ComfyUI's model management."""
        dev = pick_device(device)
        dt = None if dtype == "auto" else {"bfloat16": torch.bfloat16, "float16": torch.float16,
                                           "float32": torch.float32}[dtype]
        if text_encoder == TINY:
            if preset not in ("auto", "tiny"):
                raise ValueError(f"'(tiny preset)' builds the tiny encoder; preset {preset!r} needs weights: pick a "
                                 "Gemma file or folder")
            source, preset = None, "tiny"
        else:
            source = _resolve(TEXT_FOLDER, text_encoder)
        conn = None if connectors == FROM_ENCODER else _resolve_choice(connectors)
        tok = None if tokenizer == FROM_ENCODER else _resolve(TEXT_FOLDER, tokenizer)
        encoder = load_text_encoder(source, preset, connectors=conn, tokenizer=tok, device=dev, dtype=dt,
                                    offload=offload_after_encode, max_length=max_length or None)
        vram.manage_text_encoder(encoder)
        log.info("EditCtrl: loaded %s", encoder.describe())
        return io.NodeOutput(encoder)


def _row(cond: TextConditioning, i: int, prompt: str) -> TextConditioning:
    """Conditioning of batch row `i`, every field kept (the audio-stream embeddings too)."""
    audio = cond.audio_embeds
    return replace(cond, embeds=cond.embeds[i:i + 1], mask=cond.mask[i:i + 1], prompt=prompt,
                   audio_embeds=None if audio is None else audio[i:i + 1])


class EditCtrlTextEncode(io.ComfyNode):
    """Encode the prompt and, for CFG, the negative prompt in one pass of the text encoder (one load)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs and outputs of the node."""
        return io.Schema(
            node_id="EditCtrlTextEncode",
            display_name="EditCtrl Text Encode",
            category=CATEGORY,
            description="A prompt (describe the result, not an instruction) and a negative prompt, in one pass of "
                        "the text encoder → positive and negative conditioning for the edit sampler.",
            inputs=[
                TextEncoder.Input("text_encoder", tooltip="From EditCtrl Load Text Encoder."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="Describe what the edited region should show (a caption, not a command)."),
                io.String.Input("negative", multiline=True, default="", optional=True,
                                tooltip="What to steer away from (the sampler uses it when cfg > 1)."),
            ],
            outputs=[EditConditioning.Output(display_name="conditioning", tooltip="For the sampler's positive input."),
                     EditConditioning.Output(display_name="negative", tooltip="For the sampler's negative input.")],
        )

    @classmethod
    def execute(cls, text_encoder: TextEncoderProtocol, text: str, negative: str = "") -> io.NodeOutput:
        """Encode both prompts as one batch and split it."""
        both = text_encoder.encode([text, negative])
        return io.NodeOutput(_row(both, 0, text), _row(both, 1, negative))


NODES = [EditCtrlLTXTextEncoderLoader, EditCtrlTextEncode]
