"""Loader nodes for trained weights: LoRAs (stackable, with strength) and EditCtrl local/global adapters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..editctrl_core.edit.adapters import AdapterLoadError, load_adapter, read_adapter_metadata
from ..editctrl_core.editmodel import EditModel
from ..editctrl_core.loading.lora import LoraError, apply_loras, read_lora
from .common import CATEGORY, EditModelType, notice

NONE = "(none)"


def _safetensors(folder: str) -> list[str]:
    """`.safetensors` files of a ComfyUI model folder."""
    return [n for n in folder_paths.get_filename_list(folder) if n.endswith(".safetensors")]


class EditCtrlLoraLoader(io.ComfyNode):
    """Apply a LoRA from models/loras to the EditCtrl model while sampling (chain several to stack them)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditCtrlLoraLoader",
            display_name="EditCtrl Load LoRA",
            category=CATEGORY,
            description="Stackable LoRA (ComfyUI-native, diffusers or peft keys). The base model is never modified: "
                        "the stack is applied only while the sampler runs.",
            inputs=[
                EditModelType.Input("model", tooltip="The EditCtrl model (from the loader or another LoRA/adapter node)."),
                io.Combo.Input("lora_name", options=_safetensors("loras"),
                               tooltip="A LoRA trained for this base model (e.g. by python -m training.train)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplier of the LoRA's effect; 0 leaves the model unchanged."),
            ],
            outputs=[EditModelType.Output(display_name="model", tooltip="The same model with this attached.")],
        )

    @classmethod
    def execute(cls, model: EditModel, lora_name: str, strength: float) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
        try:
            lora = read_lora(path)
        except (LoraError, FileNotFoundError) as exc:
            raise ValueError(f"EditCtrl Load LoRA: {lora_name}: {exc}") from exc
        base = lora.metadata.get("base_model")
        if base and base != model.preset.model_id:
            raise ValueError(f"EditCtrl Load LoRA: {lora_name} was trained for base model {base!r}, but the loaded "
                             f"model is {model.preset.model_id!r} ({model.preset.name}); use a LoRA trained for this "
                             "model or load the matching model")
        notes = []
        split = lora.metadata.get("split_layer")
        if split is not None and str(split) != str(model.scd.split_layer):
            notes.append(f"{lora_name} was trained with the SCD split at layer {split}; the model is split at "
                         f"{model.scd.split_layer} (set split_layer on the loader to {split} to match)")
        try:
            with apply_loras(model.scd.transformer, [(lora, strength)]):
                pass
        except LoraError as exc:
            raise ValueError(f"EditCtrl Load LoRA: {exc}") from exc
        lora.path = path  # EditModel.with_lora names the LoRA by `lora.path.name` (read_lora stores a str)
        try:
            out = model.with_lora(lora, strength)
        except ValueError as exc:
            raise ValueError(f"EditCtrl Load LoRA: {lora_name}: {exc}") from exc
        notes.append(out.describe())
        return io.NodeOutput(out, ui=notice("EditCtrl Load LoRA", notes))


class EditCtrlAdapterLoader(io.ComfyNode):
    """Attach trained EditCtrl adapters (local context module, global context embedder) from models/editctrl."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        options = [NONE, *_safetensors("editctrl")]
        return io.Schema(
            node_id="EditCtrlAdapterLoader",
            display_name="EditCtrl Load Adapters",
            category=CATEGORY,
            description="Loads adapter files strictly (their metadata must name this base model and SCD split layer) "
                        "and attaches them to a copy of the model; the input model is left as it was.",
            inputs=[
                EditModelType.Input("model", tooltip="The EditCtrl model (from the loader or another LoRA/adapter node)."),
                io.Combo.Input("local_adapter", options=options, default=NONE,
                               tooltip="LocalContextModule file (runs on the masked tokens only)."),
                io.Combo.Input("global_adapter", options=options, default=NONE,
                               tooltip="GlobalContextEmbedder file (summary of the whole masked video)."),
            ],
            outputs=[EditModelType.Output(display_name="model", tooltip="The same model with this attached.")],
        )

    @classmethod
    def execute(cls, model: EditModel, local_adapter: str, global_adapter: str) -> io.NodeOutput:
        if local_adapter == NONE and global_adapter == NONE:
            raise ValueError("EditCtrl Load Adapters: choose a local and/or a global adapter file from models/editctrl")
        old = model.scd
        local, glob = old.local, old.global_context
        names, options = [], {}
        for choice, kind in ((local_adapter, "local_context"), (global_adapter, "global_context")):
            if choice == NONE:
                continue
            path = folder_paths.get_full_path_or_raise("editctrl", choice)
            try:
                module = load_adapter(path, model.preset.model_id, old.split_layer, expected_kind=kind,
                                      device=model.device).eval()
                options.update(read_adapter_metadata(path).scd_options)
            except AdapterLoadError as exc:
                raise ValueError(f"EditCtrl Load Adapters: {exc}") from exc
            if kind == "local_context":
                local = module
            else:
                glob = module
            names.append(f"{kind.replace('_', ' ')} {choice}")
        scd = old.variant(**options)
        try:
            scd.attach(local=local, global_context=glob)
        except ValueError as exc:
            raise ValueError(f"EditCtrl Load Adapters: {exc}") from exc
        out = replace(model, scd=scd, attachments=[*model.attachments, *names])
        return io.NodeOutput(out, ui=notice("EditCtrl Load Adapters", [out.describe()]))


NODES = [EditCtrlLoraLoader, EditCtrlAdapterLoader]
