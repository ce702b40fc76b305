"""Build and load LTX-2 transformers and video VAEs (diffusers classes) from presets, safetensors files and folders.

Configs ship with the pack (``presets/*.json``) so nothing ever queries a model hub. Every load is strict: a file
that does not match the architecture raises :class:`ModelLoadError` naming the missing, unexpected or misshapen keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers
from safetensors import SafetensorError, safe_open

from .fp8 import strict_load_fp8
from .native import (
    NativeFormatError,
    checkpoint_metadata,
    diffusers_state_to_official,
    official_state_to_diffusers,
    vae_metadata,
)
from .weights_file import save_safetensors

PRESET_DIR = Path(__file__).parents[1] / "presets"
OFFICIAL_TRANSFORMER_PREFIX = "model.diffusion_model."
OFFICIAL_VAE_PREFIX = "vae."


class ModelLoadError(ValueError):
    """A weights file or folder that cannot be loaded into the requested architecture."""


@dataclass
class Preset:
    """A named model configuration shipped with the pack."""

    name: str
    model_id: str
    family: str
    split_layer: int
    transformer: dict[str, Any]
    vae: dict[str, Any]
    seed: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def preset_names(folder: Path) -> list[str]:
    """Names of the JSON presets shipped in `folder`."""
    return sorted(p.stem for p in folder.glob("*.json"))


def read_preset_json(folder: Path, name: str, what: str = "preset") -> dict[str, Any]:
    """The JSON preset `name` in `folder`, or a ModelLoadError listing the available ones."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ModelLoadError(f"unknown {what} {name!r}; available: {', '.join(preset_names(folder))}")
    return json.loads(path.read_text())


def list_presets() -> list[str]:
    """Names of the presets shipped with the pack."""
    return preset_names(PRESET_DIR)


def load_preset(name: str) -> Preset:
    """Read a shipped preset by name."""
    data = read_preset_json(PRESET_DIR, name)
    known = {k: data.pop(k) for k in list(data) if k in Preset.__dataclass_fields__}
    return Preset(name=name, extra=data, **known)


def _seeded(seed: int):
    """Context in which module initialisation draws from a fixed seed without touching the global RNG."""
    ctx = torch.random.fork_rng(devices=[])
    ctx.__enter__()
    torch.manual_seed(seed)
    return ctx


def _place(module: torch.nn.Module, dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    """Move a float32 CPU-built module only when another dtype/device is asked for."""
    if dtype != torch.float32:
        module = module.to(dtype=dtype)
    return module.to(device)


def build_transformer(preset: Preset, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                      empty: bool = False) -> LTX2VideoTransformer3DModel:
    """Instantiate the preset's transformer: seeded random weights, or uninitialised (`empty`) to load into."""
    if empty:
        with torch.device("meta"):
            model = LTX2VideoTransformer3DModel(**preset.transformer)
        return model.eval()
    ctx = _seeded(preset.seed)
    try:
        model = LTX2VideoTransformer3DModel(**preset.transformer)
    finally:
        ctx.__exit__(None, None, None)
    return _place(model, dtype, device).eval()


def build_vae(preset: Preset, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              empty: bool = False) -> AutoencoderKLLTX2Video:
    """Instantiate the preset's video VAE (explicit compression ratios 32/8; the class defaults are wrong)."""
    config = dict(preset.vae)
    config.setdefault("spatial_compression_ratio", 32)
    config.setdefault("temporal_compression_ratio", 8)
    if empty:
        with torch.device("meta"):
            vae = AutoencoderKLLTX2Video(**config)
        return vae.eval()
    ctx = _seeded(preset.seed + 1)
    try:
        vae = AutoencoderKLLTX2Video(**config)
    finally:
        ctx.__exit__(None, None, None)
    return _place(vae, dtype, device).eval()


def read_safetensors(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read the tensors of a safetensors file (optionally only keys under `prefix`), with a clear error if corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file ({exc}); re-download or re-export it") from exc


def read_safetensors_header(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key → (shape, dtype) of a safetensors file without loading tensors (cheap for 40 GB checkpoints)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file ({exc})") from exc


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{Path(path).name} is not a readable safetensors file ({exc})") from exc


def source_metadata(source: str | Path | None) -> dict[str, str]:
    """The safetensors metadata of where a model was loaded from (`LoadedModels.source`): a file's header; for a
    diffusers folder, its transformer weights' first file; {} for presets, native models, or a source that is no
    longer readable (the model is already loaded: a schedule choice then falls back, it never fails the edit)."""
    path = Path(str(source)) if source else None
    if path is None or str(source).startswith("preset:"):
        return {}
    if path.is_dir():
        root = path / "transformer" if (path / "transformer").is_dir() else path
        files = sorted(root.glob("*.safetensors"))
        path = files[0] if files else None
    if path is None or not path.is_file():
        return {}
    try:
        return read_safetensors_metadata(path)
    except ModelLoadError:
        return {}


def recorded_transformer_config(metadata: dict[str, str]) -> dict[str, Any]:
    """The diffusers transformer config a file written by `save_transformer_official` records
    (``editctrl.transformer_config``), or {}."""
    raw = metadata.get("editctrl.transformer_config")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"editctrl.transformer_config metadata is not valid JSON ({exc})") from exc
    return config if isinstance(config, dict) else {}


def transformer_state_from_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers-layout transformer weights from an official single-file checkpoint or a diffusers state dict.

    Official keys are renamed through the pack's one LTX-2 rename table (`lora.native_to_diffusers`, shared with the
    LoRA files): diffusers 0.42.1's `convert_ltx2_transformer_to_diffusers` leaves LTX-2.3's `prompt_adaln_single`
    unrenamed, so strict loading of 2.3 files failed through it. The text connectors stored under the same prefix
    are left out, as diffusers' converter does.
    """
    if any(k.startswith(OFFICIAL_TRANSFORMER_PREFIX) for k in state):
        return official_state_to_diffusers(state, OFFICIAL_TRANSFORMER_PREFIX)
    if any(k.startswith("transformer.") for k in state):
        return {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    return dict(state)


def vae_state_from_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers-layout VAE weights from an official single-file checkpoint or a diffusers VAE state dict."""
    if any(k.startswith(OFFICIAL_VAE_PREFIX) for k in state):
        official = {k: v for k, v in state.items() if k.startswith(OFFICIAL_VAE_PREFIX)}
        return convert_ltx2_vae_to_diffusers(official)
    return dict(state)


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return shown + more


def check_state_matches(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ModelLoadError naming missing, unexpected and misshapen keys unless `state` fits `module` exactly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [f"{k} (file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
                 for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
        if misshapen:
            parts.append(f"{len(misshapen)} shape mismatches: {_describe(misshapen, 4)}")
        raise ModelLoadError(
            f"{what} does not match the selected architecture — " + "; ".join(parts)
            + ". Pick the preset that matches the file (or 'auto'), or use a file made for this model."
        )


def strict_load(module: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str,
                dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load `state` into `module` only if keys and shapes match exactly; otherwise name the differences."""
    check_state_matches(module, state, what)
    cast = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    return module.to(device)


def detect_preset(keys: dict[str, tuple[tuple[int, ...], str]] | dict[str, torch.Tensor]) -> str:
    """Name of the preset whose architecture matches a transformer state dict's keys and shapes."""
    shapes = {k: tuple(v[0]) if isinstance(v, tuple) else tuple(v.shape) for k, v in keys.items()}
    if any(k.startswith(OFFICIAL_TRANSFORMER_PREFIX) for k in shapes):
        shapes = official_state_to_diffusers(shapes, OFFICIAL_TRANSFORMER_PREFIX)
    elif any(k.startswith("transformer.") for k in shapes):
        shapes = {k[len("transformer."):]: v for k, v in shapes.items() if k.startswith("transformer.")}
    proj = shapes.get("proj_in.weight")
    if proj is None:
        raise ModelLoadError("no LTX-2 transformer found: the file has no proj_in/patchify_proj weight")
    inner, in_ch = proj
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks.")}
    gated = any(".attn1.to_gate_logits." in k for k in shapes)
    ff_bias = any(k.endswith(".ff.net.0.proj.bias") for k in shapes)
    for name in list_presets():
        cfg = load_preset(name).transformer
        same_size = (cfg["num_attention_heads"] * cfg["attention_head_dim"] == inner and cfg["in_channels"] == in_ch
                     and cfg["num_layers"] == len(blocks))
        if same_size and cfg.get("gated_attn", False) == gated and cfg.get("ff_bias", True) == ff_bias:
            return name
    raise ModelLoadError(
        f"unrecognised LTX-2 variant (inner dim {inner}, {in_ch} latent channels, {len(blocks)} blocks, "
        f"gated attention {gated}, FF bias {ff_bias}); known presets: {', '.join(list_presets())}"
    )


def _folder_component(folder: Path, sub: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and weights of one component of a diffusers-format folder (sharded files included)."""
    root = folder / sub if (folder / sub).is_dir() else folder
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{root} has no config.json: not a diffusers-format {sub} folder")
    config = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{root} has no .safetensors weights (.bin pickles are not loaded for safety)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    return config, state


@dataclass
class LoadedModels:
    """A transformer and VAE ready to use, and the preset that describes them."""

    preset: Preset
    transformer: LTX2VideoTransformer3DModel
    vae: AutoencoderKLLTX2Video | None
    source: str


def load_models(source: str | Path | None, preset_name: str = "auto", *, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", vae_path: str | Path | None = None) -> LoadedModels:
    """Load an LTX-2 transformer (+ VAE when present) from a preset, a safetensors file or a diffusers folder.

    `source=None` builds the preset with seeded random weights (the `tiny` preset's deterministic weights).
    For files the preset is detected from keys and shapes when `preset_name` is ``"auto"``, and checked otherwise.
    """
    if source is None:
        if preset_name == "auto":
            raise ModelLoadError("choose a preset (e.g. 'tiny') or a weights file")
        preset = load_preset(preset_name)
        return LoadedModels(preset, build_transformer(preset, dtype=dtype, device=device),
                            build_vae(preset, dtype=dtype, device=device), f"preset:{preset_name}")
    path = Path(source)
    if path.is_dir():
        t_config, t_state = _folder_component(path, "transformer")
        detected = detect_preset(t_state)
        preset = _check_preset(preset_name, detected, str(path))
        preset.transformer = {**preset.transformer, **{k: v for k, v in t_config.items()
                                                       if k in preset.transformer}}
        transformer = strict_load_fp8(build_transformer(preset, empty=True), t_state, what=f"{path.name}/transformer",
                                  dtype=dtype, device=device)
        vae = None
        if (path / "vae").is_dir():
            v_config, v_state = _folder_component(path, "vae")
            preset.vae = {**preset.vae, **{k: v for k, v in v_config.items() if k in preset.vae}}
            vae = strict_load(build_vae(preset, empty=True), v_state, what=f"{path.name}/vae", dtype=dtype,
                              device=device)
        return LoadedModels(preset, transformer, vae, str(path))
    header = read_safetensors_header(path)
    detected = detect_preset(header)
    preset = _check_preset(preset_name, detected, path.name)
    recorded = recorded_transformer_config(read_safetensors_metadata(path))
    # a file we wrote names its exact config (e.g. a preset variant with other audio channels): the strict load
    # below still checks every key and shape against it
    preset.transformer = {**preset.transformer, **{k: v for k, v in recorded.items() if k in preset.transformer}}
    state = read_safetensors(path)
    t_state = transformer_state_from_checkpoint({k: v for k, v in state.items() if not k.startswith(
        (OFFICIAL_VAE_PREFIX, "audio_vae.", "vocoder.", "text_embedding_projection."))})
    transformer = strict_load_fp8(build_transformer(preset, empty=True), t_state, what=path.name, dtype=dtype,
                              device=device)
    vae = None
    vae_state = {k: v for k, v in state.items() if k.startswith(OFFICIAL_VAE_PREFIX)}
    if vae_path is not None:
        vae_state = read_safetensors(vae_path)
    if vae_state:
        vae = strict_load(build_vae(preset, empty=True), vae_state_from_checkpoint(vae_state),
                          what=f"{path.name} (VAE)", dtype=dtype, device=device)
    return LoadedModels(preset, transformer, vae, str(path))


def _check_preset(requested: str, detected: str, what: str) -> Preset:
    """The preset to use for a file: the detected one, or the requested one if they agree."""
    if requested not in ("auto", detected):
        raise ModelLoadError(
            f"{what} is an {detected} checkpoint (detected from its keys and shapes) but preset {requested!r} was "
            f"selected; choose {detected!r} or 'auto'"
        )
    return load_preset(detected)


def save_transformer_official(model: LTX2VideoTransformer3DModel, path: str | Path,
                              vae: AutoencoderKLLTX2Video | None = None) -> None:
    """Write weights in the official single-file layout (`model.diffusion_model.*`, `vae.*`), as ComfyUI and
    ltx-core load them: keys through the one rename table, and the architecture in ``metadata["config"]`` (without
    it ComfyUI 0.8.0 assumes the 19B model). A transformer the official config cannot describe is still written,
    without ``config`` and with the reasons in ``editctrl.config_problems``. Used to make test and demo files."""
    out = diffusers_state_to_official({k: v.contiguous() for k, v in model.state_dict().items()},
                                      OFFICIAL_TRANSFORMER_PREFIX)
    try:
        metadata = checkpoint_metadata(model.config, None if vae is None else vae.config)
    except NativeFormatError as exc:
        metadata = {"editctrl.config_problems": str(exc), **({} if vae is None else vae_metadata(vae.config))}
    if vae is not None:
        out.update(_vae_official_state(vae))
    save_safetensors(path, out, metadata)


def save_vae_official(vae: AutoencoderKLLTX2Video, path: str | Path) -> None:
    """Write a video VAE as models/vae files hold it: official keys without the ``vae.`` prefix and, when the layout
    has one, its official config in ``metadata["config"]["vae"]``. (ComfyUI 0.8.0 reads that config for a VAE inside
    a checkpoint, CheckpointLoaderSimple; its VAELoader ignores metadata and guesses the 19B-size layout.)"""
    state = {k[len(OFFICIAL_VAE_PREFIX):]: v for k, v in _vae_official_state(vae).items()}
    save_safetensors(path, state, vae_metadata(vae.config))


def _vae_official_state(vae: AutoencoderKLLTX2Video) -> dict[str, torch.Tensor]:
    """VAE weights in the official key layout (inverse of diffusers' converter, for the block layout it maps)."""
    diffusers_to_official = {}
    probe = {f"vae.{k}": torch.empty(0) for k in _official_vae_key_candidates(vae)}
    converted = convert_ltx2_vae_to_diffusers(dict(probe))
    for official_key, diffusers_key in zip(probe, converted):
        diffusers_to_official[diffusers_key] = official_key
    state = vae.state_dict()
    missing = [k for k in state if k not in diffusers_to_official]
    if missing:
        raise ModelLoadError(f"cannot express VAE keys in the official layout: {_describe(missing)}")
    return {diffusers_to_official[k]: v.contiguous() for k, v in state.items()}


def _official_vae_key_candidates(vae: AutoencoderKLLTX2Video) -> list[str]:
    """Official-layout names for each diffusers VAE key, by inverting the converter's block renames."""
    pairs = [
        ("down_blocks.0.downsamplers.0", "down_blocks.1"), ("down_blocks.1.downsamplers.0", "down_blocks.3"),
        ("down_blocks.2.downsamplers.0", "down_blocks.5"), ("down_blocks.3.downsamplers.0", "down_blocks.7"),
        ("down_blocks.1", "down_blocks.2"), ("down_blocks.2", "down_blocks.4"), ("down_blocks.3", "down_blocks.6"),
        ("encoder.mid_block", "encoder.down_blocks.8"), ("decoder.mid_block", "decoder.up_blocks.0"),
        ("up_blocks.0.upsamplers.0", "up_blocks.1"), ("up_blocks.1.upsamplers.0", "up_blocks.3"),
        ("up_blocks.2.upsamplers.0", "up_blocks.5"), ("up_blocks.0", "up_blocks.2"), ("up_blocks.1", "up_blocks.4"),
        ("up_blocks.2", "up_blocks.6"), ("resnets", "res_blocks"), ("latents_mean", "per_channel_statistics.mean-of-means"),
        ("latents_std", "per_channel_statistics.std-of-means"),
    ]
    names = []
    for key in vae.state_dict():
        new = key
        for src, dst in pairs:
            if src in new:
                new = new.replace(src, "\0" + dst.replace(".", "\1") + "\0", 1)
        names.append(new.replace("\0", "").replace("\1", "."))
    return names
