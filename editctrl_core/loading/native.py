"""Conversions between ComfyUI-native LTX-2 formats and ours (diffusers classes, EditContext, TextConditioning).

Nothing here imports ComfyUI: the functions take and return tensors, dicts and modules, so the bridge nodes
(`nodes/native_nodes.py`) stay thin and the conversions are testable in plain Python.

- **Checkpoint config.** ComfyUI (``comfy/model_detection.py``, ``comfy/sd.py``) and ltx-core read an LTX-2
  single file's architecture from ``metadata["config"]`` = ``{"transformer": {...}, "vae": {...}}`` in the
  official (ltx-core) key names; without it ComfyUI assumes the 19B defaults. `TRANSFORMER_CONFIG_MAP` is the one
  table between diffusers' `LTX2VideoTransformer3DModel` config and those names (the inverse is derived from it);
  `official_vae_config` writes the video VAE's block list (ComfyUI 0.8.0's `VideoVAE` additionally hard-codes 128
  base and latent channels, so the `tiny` preset's 16-channel VAE has no native form).
- **Weight names.** `editctrl_core.loading.lora.diffusers_to_native` / `native_to_diffusers` (one rename table, shared with
  the LoRA files and the single-file loader).
- **Latents.** Ours are ``(z − mean)·scaling_factor / std``; ComfyUI's LTX VAE normalises inside the VAE with the
  same per-channel statistics (``per_channel_statistics.mean-of-means`` / ``std-of-means`` are the weights our
  ``latents_mean`` / ``latents_std`` are loaded from) and no scaling factor, so ``native = ours / scaling_factor``
  (LTX-2's scaling factor is 1.0: the numbers are the same).
- **Masks.** A LATENT's ``noise_mask`` (latent-resolution ``[B,1,f,h,w]`` as LTXV nodes make it, or pixel-resolution
  ``[F,1,H,W]`` / ``[F,H,W]`` as SetLatentNoiseMask makes it) → our boolean token mask ``[f,h,w]``.
- **Text.** ComfyUI's LTX-2 text encoder (``comfy/text_encoders/lt.py``) runs Gemma, the feature projection *and*
  both connectors, and returns ``concat(video, audio)`` on the last axis (``[B, max(T,1024), 2·3840]``, no mask: the
  connectors pad with learned registers); ``LTXAVModel._prepare_context`` splits it in half and applies the
  caption projections. Ours keeps the halves apart (`TextConditioning.embeds` / ``.audio_embeds``).
- **Shared weights.** `diffusers_view` builds the diffusers transformer around the very ``nn.Parameter`` objects of
  a native ComfyUI LTX-2 module (renamed through the same table): no second copy of the weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import LTX2VideoTransformer3DModel

from ..edit.context import DEFAULT_FPS, EditContext, blank_background, fill_latents
from ..edit.geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR, LatentGrid, Padding
from ..edit.masks import pixel_mask_to_token_mask, token_mask_to_pixel_mask
from .lora import diffusers_to_native, native_to_diffusers

NATIVE_ONLY_ROOTS = ("video_embeddings_connector", "audio_embeddings_connector")
"""Official ``model.diffusion_model.*`` sub-modules that are not part of the transformer (the text connectors)."""

# ------------------------------------------------------------------------------------------------ config table

#: diffusers config ↔ official (ltx-core / ComfyUI ``LTXAVModel``) config, one row per official key:
#: (official key, diffusers key or keys, conversion). Conversion ``None``: same value; ``"list"``: the diffusers
#: values packed into one list; a dict: value map (diffusers value → official value; the inverse is derived).
TRANSFORMER_CONFIG_MAP: tuple[tuple[str, str | tuple[str, ...], Any], ...] = (
    ("num_attention_heads", "num_attention_heads", None),
    ("attention_head_dim", "attention_head_dim", None),
    ("in_channels", "in_channels", None),
    ("out_channels", "out_channels", None),
    ("num_layers", "num_layers", None),
    ("cross_attention_dim", "cross_attention_dim", None),
    ("caption_channels", "caption_channels", None),
    ("norm_eps", "norm_eps", None),
    ("positional_embedding_theta", "rope_theta", None),
    ("positional_embedding_max_pos", ("pos_embed_max_pos", "base_height", "base_width"), "list"),
    ("vae_scale_factors", "vae_scale_factors", None),
    ("timestep_scale_multiplier", "timestep_scale_multiplier", None),
    ("av_ca_timestep_scale_multiplier", "cross_attn_timestep_scale_multiplier", None),
    ("audio_num_attention_heads", "audio_num_attention_heads", None),
    ("audio_attention_head_dim", "audio_attention_head_dim", None),
    ("audio_in_channels", "audio_in_channels", None),
    ("audio_out_channels", "audio_out_channels", None),
    ("audio_cross_attention_dim", "audio_cross_attention_dim", None),
    ("audio_positional_embedding_max_pos", ("audio_pos_embed_max_pos",), "list"),
    ("rope_type", "rope_type", None),
    ("frequencies_precision", "rope_double_precision", {True: "float64", False: "float32"}),
    ("causal_temporal_positioning", "causal_offset", {1: True}),
    ("apply_gated_attention", "gated_attn", None),
    ("cross_attention_adaln", "cross_attn_mod", None),
    ("caption_proj_before_connector", "use_prompt_embeddings", {True: False, False: True}),
)

TRANSFORMER_CONFIG_MAP_BY_OFFICIAL = {official: (ours, conv) for official, ours, conv in TRANSFORMER_CONFIG_MAP}

#: Official keys with one fixed value in every LTX-2 checkpoint (ltx-core's configurator checks them; diffusers'
#: RoPE always takes the middle of each patch, ComfyUI's only with ``use_middle_indices_grid``).
OFFICIAL_TRANSFORMER_CONSTANTS: dict[str, Any] = {
    "dropout": 0.0, "attention_bias": True, "num_vector_embeds": None, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "use_linear_projection": False, "only_cross_attention": False,
    "cross_attention_norm": True, "double_self_attention": False, "upcast_attention": False,
    "standardization_norm": "rms_norm", "norm_elementwise_affine": False, "qk_norm": "rms_norm",
    "positional_embedding_type": "rope", "use_audio_video_cross_attention": True, "share_ff": False,
    "av_cross_ada_norm": True, "use_middle_indices_grid": True,
}

#: diffusers config values the official architecture hard-codes (anything else has no official expression).
#: A string value names another diffusers key that must hold the same value.
FIXED_DIFFUSERS_VALUES: dict[str, Any] = {
    "patch_size": 1, "patch_size_t": 1, "audio_patch_size": 1, "audio_patch_size_t": 1,
    "activation_fn": "gelu-approximate", "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": False,
    "attention_bias": True, "attention_out_bias": True, "audio_scale_factor": 4, "audio_sampling_rate": 16000,
    "audio_hop_length": 160, "ff_bias": True, "audio_ff_bias": True, "use_keyframes_abs_pos_embedding": False,
    "audio_gated_attn": "=gated_attn", "audio_cross_attn_mod": "=cross_attn_mod",
}

#: What ComfyUI 0.8.0's `LTXAVModel` hard-codes beyond the official config (it builds LTX-2.0 blocks only, and
#: unpatchifies audio latents as 8 channels x 16 mel bins).
COMFY_080_FIXED: dict[str, Any] = {
    "apply_gated_attention": False, "cross_attention_adaln": False, "caption_proj_before_connector": False,
    "audio_in_channels": 128, "audio_out_channels": 128, "causal_temporal_positioning": True,
}


class NativeFormatError(ValueError):
    """A value that has no expression in the native (official / ComfyUI) format, or a native value we cannot read."""


def _our_keys(ours: str | tuple[str, ...]) -> tuple[str, ...]:
    return (ours,) if isinstance(ours, str) else ours


def official_config_problems(config: Mapping[str, Any]) -> list[str]:
    """Why a diffusers transformer config cannot be written as an official LTX-2 config (empty when it can)."""
    cfg = dict(config)
    problems = []
    for key, want in FIXED_DIFFUSERS_VALUES.items():
        if key not in cfg:
            continue
        if isinstance(want, str) and want.startswith("="):
            other = want[1:]
            if other in cfg and cfg[key] != cfg[other]:
                problems.append(f"{key}={cfg[key]!r} differs from {other}={cfg[other]!r} (one switch officially)")
        elif cfg[key] != want:
            problems.append(f"{key}={cfg[key]!r} (the official architecture has {want!r})")
    if cfg.get("cross_attn_mod") and not cfg.get("use_prompt_adaln_single", True):
        problems.append("cross_attn_mod without use_prompt_adaln_single (LTX-2.5 blocks) has no official key")
    for official, ours, conv in TRANSFORMER_CONFIG_MAP:
        if isinstance(conv, dict) and _our_keys(ours)[0] in cfg and cfg[_our_keys(ours)[0]] not in conv:
            problems.append(f"{_our_keys(ours)[0]}={cfg[_our_keys(ours)[0]]!r} has no {official} value "
                            f"(expressible: {sorted(conv, key=str)})")
    return problems


def official_transformer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The official (ltx-core / ComfyUI) transformer config of a diffusers `LTX2VideoTransformer3DModel` config.

    Raises NativeFormatError naming every value the official format cannot express.
    """
    cfg = dict(config)
    problems = official_config_problems(cfg)
    if problems:
        raise NativeFormatError("this transformer has no official LTX-2 config: " + "; ".join(problems))
    out: dict[str, Any] = dict(OFFICIAL_TRANSFORMER_CONSTANTS)
    for official, ours, conv in TRANSFORMER_CONFIG_MAP:
        keys = _our_keys(ours)
        if not all(k in cfg for k in keys):
            continue
        values = [cfg[k] for k in keys]
        if conv == "list":
            out[official] = [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]
        elif isinstance(conv, dict):
            out[official] = conv[values[0]]
        else:
            out[official] = list(values[0]) if isinstance(values[0], tuple) else values[0]
    return out


def diffusers_transformer_config(official: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Inverse of `official_transformer_config`: the diffusers config keys the official config sets, over `base`."""
    out = dict(base or {})
    for key, want in OFFICIAL_TRANSFORMER_CONSTANTS.items():
        if key in official and official[key] != want:
            raise NativeFormatError(f"official config {key}={official[key]!r} is not supported (only {want!r})")
    for key, conv in TRANSFORMER_CONFIG_MAP_BY_OFFICIAL.items():
        if key not in official:
            continue
        ours, how = conv
        keys = _our_keys(ours)
        value = official[key]
        if how == "list":
            values = list(value)
            if len(values) != len(keys):
                raise NativeFormatError(f"official config {key}={value!r} needs {len(keys)} values")
            out.update(dict(zip(keys, values)))
        elif isinstance(how, dict):
            inverse = {v: k for k, v in how.items()}
            if value not in inverse:
                raise NativeFormatError(f"official config {key}={value!r} has no diffusers value "
                                        f"(known: {sorted(inverse, key=str)})")
            out[keys[0]] = inverse[value]
        else:
            out[keys[0]] = value
    return out


def comfy_080_problems(official: Mapping[str, Any]) -> list[str]:
    """Why ComfyUI 0.8.0's native LTXAVModel cannot run a model with this official config (empty when it can)."""
    problems = []
    for key, want in COMFY_080_FIXED.items():
        if official.get(key, want) != want:
            problems.append(f"{key}={official[key]!r} (ComfyUI 0.8.0 hard-codes {want!r})")
    return problems


# ------------------------------------------------------------------------------------------------- VAE config

#: diffusers `AutoencoderKLLTX2Video` encoder downsampler kinds → the official encoder block names.
ENCODER_DOWNSAMPLE_BLOCKS = {"spatial": "compress_space_res", "temporal": "compress_time_res",
                             "spatiotemporal": "compress_all_res"}
#: Official VAE keys with one value for every LTX-2 VAE the diffusers class builds.
OFFICIAL_VAE_CONSTANTS: dict[str, Any] = {"_class_name": "CausalVideoAutoencoder", "dims": 3, "norm_layer": "pixel_norm",
                                          "latent_log_var": "uniform", "use_quant_conv": False}
#: diffusers VAE config → official VAE config, one row per official key (as `TRANSFORMER_CONFIG_MAP`).
VAE_CONFIG_MAP: tuple[tuple[str, str, Any], ...] = (
    ("in_channels", "in_channels", None),
    ("out_channels", "out_channels", None),
    ("latent_channels", "latent_channels", None),
    ("patch_size", "patch_size", None),
    ("causal_decoder", "decoder_causal", None),
    ("timestep_conditioning", "timestep_conditioning", None),
    ("scaling_factor", "scaling_factor", None),
)
#: diffusers VAE values the official VAE hard-codes.
FIXED_VAE_VALUES: dict[str, Any] = {"patch_size_t": 1, "encoder_causal": True, "resnet_norm_eps": 1e-6}


def _per_block(value: Any, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def official_vae_config(config: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """(official VAE config, problems) for a diffusers `AutoencoderKLLTX2Video` config; the config is None when the
    layout has no official expression (the problems say why).

    The official config lists blocks: the encoder's ``res_x`` (layers) and ``compress_*_res`` (channel multiplier)
    in order, the decoder's from the output side (ComfyUI and ltx-core walk it reversed: mid block first, then
    ``compress_all`` (residual, channel divisor) + ``res_x`` per up block) — the block order diffusers' key converter
    maps (`down_blocks.{0..8}`, `up_blocks.{0..6}`)."""
    cfg = dict(config)
    problems = [f"{k}={cfg[k]!r} (the official VAE has {v!r})" for k, v in FIXED_VAE_VALUES.items()
                if k in cfg and cfg[k] != v]
    channels, layers = list(cfg.get("block_out_channels", ())), list(cfg.get("layers_per_block", ()))
    down = list(cfg.get("downsample_type", ()))
    scaling = _per_block(cfg.get("spatio_temporal_scaling", True), len(channels))
    if not (len(layers) == len(channels) + 1 == len(down) + 1 == len(scaling) + 1):
        problems.append(f"layers_per_block {layers}, block_out_channels {channels} and downsample_type {down} do "
                        "not describe down blocks + a mid block")
        return None, problems
    encoder: list[list[Any]] = []
    previous = cfg.get("latent_channels", 128)  # the encoder's conv_in gives latent_channels (official: base)
    for i, (width, kind) in enumerate(zip(channels, down)):
        encoder.append(["res_x", {"num_layers": layers[i]}])
        if not scaling[i] or kind not in ENCODER_DOWNSAMPLE_BLOCKS:
            problems.append(f"down block {i} ({kind!r}, scaling {scaling[i]}) has no official block")
        elif width % previous:
            problems.append(f"down block {i}: {previous} → {width} channels is not an integer multiplier")
        else:
            encoder.append([ENCODER_DOWNSAMPLE_BLOCKS.get(kind, kind), {"multiplier": width // previous}])
        previous = width
    encoder.append(["res_x", {"num_layers": layers[-1]}])
    widths, dlayers = list(cfg.get("decoder_block_out_channels", ())), list(cfg.get("decoder_layers_per_block", ()))
    n = len(widths)
    if len(dlayers) != n + 1:
        problems.append(f"decoder_layers_per_block {dlayers} and decoder_block_out_channels {widths} do not describe "
                        "a mid block + up blocks")
        return None, problems
    up = _per_block(cfg.get("upsample_type", "spatiotemporal"), n)
    rev = {"width": widths[::-1], "layers": dlayers[::-1],
           "noise": _per_block(cfg.get("decoder_inject_noise", False), n + 1)[::-1],
           "residual": _per_block(cfg.get("upsample_residual", True), n)[::-1],
           "factor": _per_block(cfg.get("upsample_factor", 1), n)[::-1],
           "scaling": _per_block(cfg.get("decoder_spatio_temporal_scaling", True), n)[::-1]}
    walk: list[list[Any]] = [["res_x", {"num_layers": rev["layers"][0], "inject_noise": bool(rev["noise"][0])}]]
    width = rev["width"][0]
    for i in range(n):
        factor = rev["factor"][i]
        if rev["width"][i] != width:
            problems.append(f"up block {i} changes width {width} → {rev['width'][i]} before upsampling (diffusers' "
                            "conv_in resnet), which has no official block")
        if not rev["scaling"][i] or up[i] != "spatiotemporal":
            problems.append(f"up block {i} ({up[i]!r}, scaling {rev['scaling'][i]}): only spatiotemporal upsampling "
                            "has an official block with residual and channel divisor")
        walk.append(["compress_all", {"residual": bool(rev["residual"][i]), "multiplier": factor}])
        walk.append(["res_x", {"num_layers": rev["layers"][i + 1], "inject_noise": bool(rev["noise"][i + 1])}])
        width = rev["width"][i] // factor
    padding = (cfg.get("encoder_spatial_padding_mode", "zeros"), cfg.get("decoder_spatial_padding_mode", "reflect"))
    if padding[0] != padding[1] and padding != ("zeros", "reflect"):
        problems.append(f"spatial padding {padding[0]!r} (encoder) / {padding[1]!r} (decoder): the official config "
                        "has one spatial_padding_mode for both, or the defaults zeros / reflect")
    if problems:
        return None, problems
    out: dict[str, Any] = dict(OFFICIAL_VAE_CONSTANTS)
    for official, ours, _ in VAE_CONFIG_MAP:
        if ours in cfg:
            out[official] = cfg[ours]
    if padding[0] == padding[1]:
        out["spatial_padding_mode"] = padding[0]
    out["encoder_blocks"] = encoder
    out["decoder_blocks"] = walk[::-1]
    out["decoder_base_channels"] = width
    return out, []


def comfy_080_vae_problems(official: Mapping[str, Any]) -> list[str]:
    """Why ComfyUI 0.8.0's `VideoVAE` cannot build this official VAE config: it has no base-channel setting (128)
    and its latent statistics buffers are 128 wide."""
    return [f"{key}={official[key]} (ComfyUI 0.8.0 hard-codes 128)"
            for key in ("latent_channels", "decoder_base_channels") if official.get(key, 128) != 128]


def checkpoint_metadata(transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any] | None = None
                        ) -> dict[str, str]:
    """safetensors metadata for an official-layout single file: ``config`` = ``{"transformer": ...}`` as ComfyUI and
    ltx-core read it (``{"transformer": ..., "vae": ...}``; the VAE's only when its layout has an official
    expression), plus our own diffusers configs (``editctrl.*``)."""
    config: dict[str, Any] = {"transformer": official_transformer_config(transformer_config)}
    meta = {"editctrl.transformer_config": json.dumps(_jsonable(transformer_config), sort_keys=True)}
    if vae_config is not None:
        meta.update(vae_metadata(vae_config, config))
    meta["config"] = json.dumps(config, sort_keys=True)
    return meta


def vae_metadata(vae_config: Mapping[str, Any], config: dict[str, Any] | None = None) -> dict[str, str]:
    """Metadata entries for a VAE: ``config["vae"]`` (added to `config`, or a ``config`` entry of its own) when the
    layout has an official expression, else the reasons in ``editctrl.vae_config_problems``; our diffusers config
    in ``editctrl.vae_config`` either way."""
    meta = {"editctrl.vae_config": json.dumps(_jsonable(vae_config), sort_keys=True)}
    official, problems = official_vae_config(vae_config)
    if official is None:
        meta["editctrl.vae_config_problems"] = "; ".join(problems)
    elif config is not None:
        config["vae"] = official
    else:
        meta["config"] = json.dumps({"vae": official}, sort_keys=True)
    return meta


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------- weight names

def official_state_to_diffusers(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Transformer weights in the official layout (keys under `prefix`, e.g. ``model.diffusion_model.``) renamed to
    diffusers' keys through the one rename table; the text connectors stored there are left out."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.split(".", 1)[0] in NATIVE_ONLY_ROOTS:
            continue
        out[native_to_diffusers(name)] = value
    return out


def diffusers_state_to_official(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of `official_state_to_diffusers` (diffusers keys → official keys under `prefix`)."""
    return {prefix + diffusers_to_native(k): v for k, v in state.items()}


# ------------------------------------------------------------------------------------------------------ latents

def native_latents(latents: torch.Tensor, scaling_factor: float = 1.0) -> torch.Tensor:
    """Our normalised latents [B,C,f,h,w] → ComfyUI's LTX latents (its VAE divides by the std, no scaling factor)."""
    if latents.ndim != 5:
        raise NativeFormatError(f"LTX-2 latents are [batch, channels, frames, height, width]; got {tuple(latents.shape)}")
    return (latents.float() / float(scaling_factor)).contiguous()


def our_latents(samples: torch.Tensor, scaling_factor: float = 1.0) -> torch.Tensor:
    """ComfyUI's LTX latents (a LATENT's ``samples``) → ours; a NestedTensor (video + audio) gives its video part."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        tensors = getattr(samples, "tensors", None)
        if tensors:
            samples = tensors[0]
        else:
            shape = tuple(getattr(samples, "shape", ()))
            raise NativeFormatError(f"a LATENT for LTX-2 holds video latents [batch, channels, frames, height, "
                                    f"width]; got {type(samples).__name__} {shape}")
    return samples.float() * float(scaling_factor)


def latent_grid(latents: torch.Tensor, temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR) -> LatentGrid:
    """The token grid of latents [B,C,f,h,w] and the pixel clip shape it decodes to."""
    f, h, w = latents.shape[-3:]
    return LatentGrid(f, h, w, (f - 1) * temporal + 1, h * spatial, w * spatial)


def token_mask_from_noise_mask(noise_mask: torch.Tensor, grid: LatentGrid, threshold: float = 0.5) -> torch.Tensor:
    """A LATENT's ``noise_mask`` → boolean token mask [f,h,w] (a token is edited where the mask is >= threshold).

    Accepted: latent resolution ``[B,1,f,h,w]`` / ``[B,C,f,h,w]`` / ``[f,h,w]`` (LTXV nodes), pixel resolution
    ``[F,1,H,W]`` / ``[F,H,W]`` with F = 8n+1 (SetLatentNoiseMask on a video mask, max-pooled the way the causal VAE
    groups frames), one frame for all, or any other size (resized bilinearly to the token grid, as ComfyUI's
    samplers resize masks).
    """
    m = noise_mask.detach().float().cpu()
    f, h, w = grid.shape
    if m.ndim == 5:
        m = m.amax(dim=(0, 1))
    elif m.ndim == 4:
        m = m.amax(dim=1)
    elif m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3:
        raise NativeFormatError(f"noise_mask must be [B,1,f,h,w], [F,1,H,W] or [F,H,W]; got {tuple(noise_mask.shape)}")
    frames, mh, mw = m.shape
    if (mh, mw) == (grid.pixel_height, grid.pixel_width) and frames in (grid.pixel_frames, 1) and (mh, mw) != (h, w):
        m = m.expand(grid.pixel_frames, -1, -1) if frames == 1 else m
        return pixel_mask_to_token_mask(m, threshold=threshold)
    if frames == grid.pixel_frames and frames != f:
        m = torch.cat([m[:1], m[1:].reshape(-1, TEMPORAL_FACTOR, mh, mw).amax(dim=1)]) if frames > 1 else m
    elif frames not in (f, 1):
        raise NativeFormatError(f"noise_mask has {frames} frames; the latents have {f} latent frames "
                                f"({grid.pixel_frames} pixel frames)")
    if (mh, mw) != (h, w):
        m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
    return (m >= threshold).expand(f, -1, -1).clone()


def pixel_mask_for(noise_mask: torch.Tensor | None, token_mask: torch.Tensor, grid: LatentGrid) -> torch.Tensor:
    """The pixel mask [F,H,W] of a context built from a LATENT: the noise_mask itself when it is at pixel
    resolution, else the token mask upsampled (nearest)."""
    if noise_mask is not None:
        m = noise_mask.detach().float().cpu()
        m = m.squeeze(1) if m.ndim == 4 else m
        if m.ndim == 3 and tuple(m.shape[-2:]) == (grid.pixel_height, grid.pixel_width) \
                and m.shape[0] in (grid.pixel_frames, 1):
            return m.expand(grid.pixel_frames, -1, -1).clamp(0, 1).contiguous()
    return token_mask_to_pixel_mask(token_mask, grid.pixel_frames)


def conform_frames(frames: torch.Tensor | None, grid: LatentGrid) -> tuple[torch.Tensor | None, Padding | None]:
    """Pixel frames to go with latents of `grid`: as they are when they have the grid's pixel shape, padded (and
    a `Padding` to crop back) when padding them gives it, else a NativeFormatError naming both shapes."""
    if frames is None:
        return None, None
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise NativeFormatError(f"frames must be an IMAGE batch [frames, height, width, 3]; got {tuple(frames.shape)}")
    shape = tuple(frames.shape[:3])
    want = (grid.pixel_frames, grid.pixel_height, grid.pixel_width)
    if shape == want:
        return frames.float(), None
    padding = Padding.for_shape(*shape)
    if padding.padded_shape == want:
        return padding.pad(frames.float()), padding
    raise NativeFormatError(f"the frames ({shape[0]} at {shape[1]}x{shape[2]}) do not belong to these latents, "
                            f"which decode to {want[0]} frames at {want[1]}x{want[2]}")


def conform_mask(mask: torch.Tensor, grid: LatentGrid) -> torch.Tensor:
    """A pixel mask [F,H,W] at the clip's own size → the latents' padded pixel grid (padded the way `Padding` pads
    the frames: edges and the last frame replicated); masks of other sizes are returned as they are (then resized
    onto the token grid by `token_mask_from_noise_mask`)."""
    m = mask.detach().float().cpu()
    m = m.unsqueeze(0) if m.ndim == 2 else m
    if m.ndim != 3:
        raise NativeFormatError(f"mask must be a MASK [frames, height, width]; got {tuple(mask.shape)}")
    frames, height, width = m.shape
    padding = Padding.for_shape(frames, height, width)
    if padding.padded_shape[1:] != (grid.pixel_height, grid.pixel_width):
        return m
    if frames == 1:
        return Padding(1, height, width, 0, padding.top, padding.bottom, padding.left, padding.right).pad(m)
    return padding.pad(m) if padding.padded_shape[0] == grid.pixel_frames else m


def edit_context_from_latents(vae, samples: torch.Tensor, region: torch.Tensor, frames: torch.Tensor | None = None,
                              fps: float = DEFAULT_FPS):
    """An EditContext from native LTX-2 latents (a LATENT's ``samples``), the edit region (its ``noise_mask`` or a
    pixel MASK, any form `token_mask_from_noise_mask` reads) and optionally the source frames: the same context
    `context.prepare_edit` builds from the frames (background = source with the region blanked to our VAE's
    grey-clip latents)."""
    source = our_latents(samples, float(vae.config.scaling_factor))
    if source.shape[0] != 1:
        raise NativeFormatError(f"the LATENT holds a batch of {source.shape[0]}; edit one clip at a time")
    if source.shape[1] != vae.config.latent_channels:
        raise NativeFormatError(f"the LATENT has {source.shape[1]} channels but this VAE's latents have "
                                f"{vae.config.latent_channels}: use latents of the same LTX-2 model")
    grid = latent_grid(source)
    frames, padding = conform_frames(frames, grid)
    if region.ndim == 4 and region.shape[1] == 1:  # SetLatentNoiseMask's [F,1,H,W]
        region = region[:, 0]
    if region.ndim in (2, 3):
        region = conform_mask(region, grid)
    tokens = token_mask_from_noise_mask(region, grid)
    pixel_mask = pixel_mask_for(region, tokens, grid)
    fill = fill_latents(vae, (grid.pixel_frames, grid.pixel_height, grid.pixel_width))
    background = blank_background(source, tokens, fill) if bool(tokens.any()) else source.clone()
    return EditContext(frames, pixel_mask, source, background, tokens, grid,
                       padding, fill=fill, fps=fps, vae=vae)


# ------------------------------------------------------------------------------------------------ conditioning

def split_native_context(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's LTX-2 (audio-video) context [B,T,2C] → (video [B,T,C], audio [B,T,C]), as LTXAVModel splits it."""
    if context.ndim != 3 or context.shape[-1] % 2:
        raise NativeFormatError(f"an LTX-2 CONDITIONING tensor is [batch, tokens, 2 x width] (video and audio "
                                f"halves); got {tuple(context.shape)}")
    half = context.shape[-1] // 2
    return context[..., :half], context[..., half:]


def join_native_context(video: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
    """(video, audio) prompt embeddings → ComfyUI's LTX-2 context (audio = video when there is no audio stream)."""
    audio = video if audio is None else audio
    if audio.shape != video.shape:
        raise NativeFormatError(f"ComfyUI's LTX-2 context needs video and audio embeddings of one shape; got "
                                f"{tuple(video.shape)} and {tuple(audio.shape)}")
    return torch.cat([video, audio], dim=-1)


def text_conditioning_from_native(context: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                  prompt: str = ""):
    """One CONDITIONING entry (tensor + its ``attention_mask``, if any) → our TextConditioning."""
    from ..conditioning.text import TextConditioning

    video, audio = split_native_context(context.float())
    b, t = video.shape[:2]
    if attention_mask is None:
        mask = torch.ones(b, t, dtype=torch.long)
    else:
        mask = attention_mask.reshape(attention_mask.shape[0], -1).long().cpu()
        if mask.shape[-1] != t:
            raise NativeFormatError(f"the CONDITIONING attention_mask covers {mask.shape[-1]} tokens, the tensor {t}")
        mask = mask.expand(b, -1).clone()
    return TextConditioning(video.cpu().contiguous(), mask, prompt, audio.cpu().contiguous())


def native_context_from_text(cond) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Our TextConditioning → (ComfyUI LTX-2 context [B,T,2C], attention mask [B,T] or None when all tokens count)."""
    context = join_native_context(cond.embeds.float(), None if cond.audio_embeds is None else cond.audio_embeds.float())
    mask = cond.mask.long()
    return context.cpu(), (None if bool((mask == 1).all()) else mask.cpu())


# ------------------------------------------------------------------------------------------------ shared weights

def native_parameters(native: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters of a native (official-layout) LTX-2 module under diffusers' names; connectors left out."""
    out: dict[str, torch.nn.Parameter] = {}
    for name, param in native.named_parameters():
        if name.split(".", 1)[0] in NATIVE_ONLY_ROOTS:
            continue
        out[native_to_diffusers(name)] = param
    return out


VIEW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def bind_parameters(model: torch.nn.Module, native: torch.nn.Module) -> int:
    """Point `model`'s (diffusers) parameters at the native module's current ``nn.Parameter`` objects; returns how
    many were bound. Call it again after ComfyUI re-patches the native model (a LoRA patch or unpatch replaces
    Parameter objects); moves and casts done through ``param.data`` need no rebinding."""
    from .models import check_state_matches

    params = native_parameters(native)
    check_state_matches(model, params, "the native LTX-2 model")
    odd = sorted({str(p.dtype) for p in params.values() if p.dtype not in VIEW_DTYPES})
    if odd:
        raise NativeFormatError(f"the native model holds {', '.join(odd)} weights; our sampler computes with the "
                                "weights as they are, so share a float32/bfloat16/float16 model (load it without "
                                "an fp8 weight_dtype) or load the file with EditCtrl Load LTX-2")
    devices = sorted({str(p.device) for p in params.values()})
    if len(devices) > 1:
        raise NativeFormatError(f"the native model is split over {', '.join(devices)} (partially loaded); load it "
                                "fully before sharing its weights")
    for name, param in params.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if leaf not in module._parameters:
            raise NativeFormatError(f"{name} is a buffer in diffusers' model but a parameter in the native one")
        module._parameters[leaf] = param
    return len(params)


def diffusers_view(native: torch.nn.Module, config: Mapping[str, Any]):
    """A diffusers `LTX2VideoTransformer3DModel` whose parameters ARE the native module's ``nn.Parameter`` objects
    (renamed through the one table): no weight is copied, and moving or casting the native module in place (what
    ComfyUI's model management does with ``param.data``) is seen by both. Built on the meta device, then every
    parameter bound (`bind_parameters`); refuses a native module whose names, shapes or dtypes do not fit."""
    with torch.device("meta"):
        model = LTX2VideoTransformer3DModel(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
    bind_parameters(model, native)
    leftover = [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:
        raise NativeFormatError(f"diffusers' model has buffers the native model does not hold: {leftover[:5]}")
    return model.eval()


def shares_storage(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when every parameter of `a` lives in storage that some parameter of `b` uses (no copy between them)."""
    ptrs = {p.untyped_storage().data_ptr() for p in b.parameters()}
    return all(p.untyped_storage().data_ptr() in ptrs for p in a.parameters())
