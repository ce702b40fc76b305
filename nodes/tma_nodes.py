"""TMA: Qwen-VL semantic tokens prepended to the text conditioning (a thin node over `editctrl_core.perception.tma`)."""

from __future__ import annotations

from typing import Any

import folder_paths
import torch
from comfy_api.latest import io

from ..editctrl_core.conditioning.text import TextConditioning
from ..editctrl_core.perception import qwen as qwen_core
from ..editctrl_core.perception.tma import (
    TMAConfig,
    build_tma,
    load_tma,
    semantic_tokens,
    tiny_tma_config,
    with_semantic_tokens,
)
from .common import CATEGORY, EditConditioning, check_interrupt, notice
from .detection_nodes import QwenType, check_images
from .model_folders import release

FRESH_TMA = "fresh"


def tma_files() -> list[str]:
    """.safetensors files in models/editctrl (TMA connectors among them)."""
    try:
        return [n for n in folder_paths.get_filename_list("editctrl") if n.endswith(".safetensors")]
    except KeyError:
        return []


def tma_connector(choice: str, qwen_dim: int, text_dim: int, tiny: bool, seed: int) -> tuple[Any, str]:
    """A fresh connector sized for the models, or one loaded strictly from models/editctrl; plus its description."""
    if choice == FRESH_TMA:
        config = tiny_tma_config(qwen_dim, text_dim) if tiny else TMAConfig(qwen_dim=qwen_dim, text_dim=text_dim,
                                                                            mlp_dim=qwen_dim)
        return build_tma(config, seed=seed), f"fresh TMA (untrained, seed {seed})"
    path = folder_paths.get_full_path_or_raise("editctrl", choice)
    connector, base = load_tma(path)
    config = connector.config
    if config.qwen_dim != qwen_dim:
        raise ValueError(f"TMA file {choice} reads Qwen hidden states {config.qwen_dim} wide but the loaded Qwen-VL's "
                         f"are {qwen_dim}; load the Qwen-VL it was trained with ({base or 'not recorded'})")
    if config.text_dim != text_dim:
        raise ValueError(f"TMA file {choice} makes tokens {config.text_dim} wide but the conditioning is {text_dim} "
                         "wide; use the TMA trained for this LTX-2 model's text encoder")
    return connector, f"TMA {choice} (base {base or 'not recorded'})"


class EditCtrlTMATokens(io.ComfyNode):
    """Prepend 8 TMA semantic tokens (Qwen-VL reads keyframes + caption) to the conditioning."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Conditioning, Qwen, frames, caption, TMA weights."""
        return io.Schema(
            node_id="EditCtrlTMATokens",
            display_name="EditCtrl TMA Semantic Tokens",
            category=CATEGORY,
            description="Qwen-VL hidden states over K evenly spaced frames + editing template + caption, pooled by "
                        "learnable queries into tokens prepended to the text context (mask extended).",
            inputs=[
                EditConditioning.Input("conditioning", tooltip="The prompt conditioning to extend."),
                QwenType.Input("qwen", tooltip="From EditCtrl Load Qwen-VL."),
                io.Image.Input("images", tooltip="The source video [F,H,W,3]."),
                io.String.Input("caption", multiline=True, default="",
                                tooltip="What the edited video shows; empty = the conditioning's prompt."),
                io.Combo.Input("tma_weights", options=[FRESH_TMA, *tma_files()], default=FRESH_TMA,
                               tooltip="A TMA connector from models/editctrl, or 'fresh': a newly initialised one "
                                       "sized for these models (untrained; for tests and wiring)."),
                io.Int.Input("k_frames", default=4, min=1, max=64, tooltip="Frames Qwen-VL looks at."),
                io.Int.Input("task", default=0, min=0, max=64, tooltip="Meta-query task id."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Initialisation of a fresh connector."),
            ],
            outputs=[EditConditioning.Output(display_name="conditioning",
                                             tooltip="The conditioning with the semantic tokens in front.")],
        )

    @classmethod
    def execute(cls, conditioning: TextConditioning, qwen: qwen_core.QwenVL, images: torch.Tensor, caption: str,
                tma_weights: str, k_frames: int, task: int, seed: int) -> io.NodeOutput:
        """Hidden states (content-hash cached), TMA pooling, prepend with the mask extended."""
        check_images(images, "EditCtrl TMA")
        text = caption.strip() or conditioning.prompt.strip()
        if not text:
            raise ValueError("EditCtrl TMA: the caption is empty and the conditioning has no prompt; write what the "
                             "edited video shows")
        text_dim = int(conditioning.embeds.shape[-1])
        connector, what = tma_connector(tma_weights, qwen.hidden_size, text_dim, qwen.name.startswith("tiny"), seed)
        if not 0 <= task < connector.config.num_tasks:
            raise ValueError(f"EditCtrl TMA: task {task} is out of range; {what} has {connector.config.num_tasks} "
                             "task(s)")
        cache = qwen_core.DEFAULT_HIDDEN_CACHE
        hits = cache.hits
        check_interrupt()
        try:
            states = qwen_core.hidden_states(qwen, images, text, k_frames=k_frames)
        finally:
            release(qwen)
        source = "cached" if cache.hits > hits else "computed"
        tokens = semantic_tokens(connector, states, None, task)
        out = with_semantic_tokens(conditioning, tokens)
        info = (f"{tokens.shape[1]} semantic tokens from {what}; Qwen hidden states {source} "
                f"({states.shape[1]} x {states.shape[2]}); conditioning {conditioning.embeds.shape[1]} -> "
                f"{out.embeds.shape[1]} tokens")
        return io.NodeOutput(out, ui=notice("EditCtrl TMA", [info]))


NODES = [EditCtrlTMATokens]
