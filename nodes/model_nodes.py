"""The node that loads the LTX-2 model (SCD split) and its VAE."""

from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io

from ..editctrl_core.edit.scd import PREFIX_MODES, SCDModel, SCDOptions, default_split_layer
from ..editctrl_core.editmodel import EditModel
from ..editctrl_core.loading.models import list_presets, load_models
from . import vram
from .common import (
    CATEGORY,
    NO_FILE,
    EditModelType,
    EditVAE,
    list_model_sources,
    pick_device,
    pick_dtype,
    resolve_model_source,
)

log = logging.getLogger("editctrl")
FROM_CHECKPOINT = "(from checkpoint)"


def list_vae_files() -> list[str]:
    """Safetensors files in ComfyUI's models/vae folder."""
    return [n for n in folder_paths.get_filename_list("vae") if n.endswith(".safetensors")]


class EditCtrlModelLoader(io.ComfyNode):
    """Load an LTX-2 transformer + VAE from a preset, an official single file or a diffusers folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        sources = list_model_sources()
        first_real = next((s for s in sources if s != NO_FILE), None)
        return io.Schema(
            node_id="EditCtrlModelLoader",
            display_name="EditCtrl Load LTX-2 (SCD)",
            category=CATEGORY,
            description="Loads LTX-2 and splits it into the SCD encoder (run once per edit) and decoder (every step).",
            inputs=[
                io.Combo.Input("preset", options=["auto", *list_presets()], default="auto" if first_real else "tiny",
                               tooltip="Architecture. 'auto' detects it from the file's keys and shapes; 'tiny' is "
                                       "the built-in CPU demo model."),
                io.Combo.Input("weights", options=sources, default=first_real or NO_FILE,
                               tooltip="A .safetensors file or diffusers folder from models/checkpoints or "
                                       "models/diffusion_models; '(preset weights)' builds the preset with seeded "
                                       "weights (the tiny demo model)."),
                io.Combo.Input("dtype", options=["auto", "float32", "bfloat16", "float16"], default="auto",
                               tooltip="auto: bfloat16 on a GPU that supports it, else float32 (fp8 files stay fp8)."),
                io.Combo.Input("device", options=["auto", "cpu", "cuda"], default="auto",
                               tooltip="auto: ComfyUI's device (the GPU when there is one)."),
                io.Int.Input("split_layer", default=0, min=0, max=256,
                             tooltip="SCD split layer k (encoder = blocks [0,k)). 0 = the default (32 of 48)."),
                io.Combo.Input("vae_weights", options=[FROM_CHECKPOINT, *list_vae_files()], default=FROM_CHECKPOINT,
                               optional=True,
                               tooltip="A separate VAE file from models/vae (for split transformer files such as "
                                       "LTX-2.5's); by default the VAE inside the checkpoint or folder is used."),
                io.Combo.Input("scd_prefix", options=list(PREFIX_MODES), default="one_way", optional=True,
                               tooltip="How the decoder sees the encoder context. one_way: the context never attends "
                                       "to the edited tokens, so it is cached once per edit (fast; what our trainer "
                                       "uses). bidirectional: the SCD paper's token concat. A LoRA that names its "
                                       "mode in its metadata switches to it."),
            ],
            outputs=[EditModelType.Output(display_name="model", tooltip="The LTX-2 transformer for the edit sampler."),
                     EditVAE.Output(display_name="vae", tooltip="LTX-2's video VAE (for Encode and Decode).")],
        )

    @classmethod
    def execute(cls, preset: str, weights: str, dtype: str, device: str, split_layer: int,
                vae_weights: str = FROM_CHECKPOINT, scd_prefix: str = "one_way") -> io.NodeOutput:
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        path = resolve_model_source(weights)
        if path is None and preset == "auto":
            raise ValueError("preset 'auto' needs a weights file; choose a preset such as 'tiny' or pick a file")
        vae_path = None if vae_weights == FROM_CHECKPOINT else folder_paths.get_full_path_or_raise("vae", vae_weights)
        if vae_path is not None and path is None:
            raise ValueError("a separate VAE file needs a transformer weights file too (preset weights include a VAE)")
        loaded = load_models(path, preset, dtype=dt, device=dev, vae_path=vae_path)
        if loaded.vae is None:
            raise ValueError(f"{weights} holds no VAE; pick the matching VAE file in 'vae_weights' (models/vae), or "
                             "use an official single-file checkpoint or a diffusers folder with a vae/ sub-folder")
        layers = loaded.preset.transformer["num_layers"]
        k = split_layer or (loaded.preset.split_layer if loaded.preset.transformer["num_layers"] == layers
                            else default_split_layer(layers))
        if not 0 < k < layers:
            raise ValueError(f"split_layer must be between 1 and {layers - 1} for this {layers}-block model; got {k}")
        vram.patcher_for(loaded.transformer, f"LTX-2 {loaded.preset.name} transformer", load_device=dev)
        vram.patcher_for(loaded.vae, f"LTX-2 {loaded.preset.name} VAE", load_device=dev)
        scd = SCDModel(loaded.transformer, SCDOptions(split_layer=k, prefix=scd_prefix))
        model = EditModel(scd, loaded.preset, loaded.source)
        log.info("EditCtrl: loaded %s", model.describe())
        return io.NodeOutput(model, loaded.vae)


NODES = [EditCtrlModelLoader]
