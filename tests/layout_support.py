"""Tiny transformers with the LTX-2.3 / 2.5 block layouts (gated attention, prompt AdaLN) for the decoder tests."""

from __future__ import annotations

import torch
from diffusers import LTX2VideoTransformer3DModel

from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.loading.models import build_transformer, load_preset

PRESET = load_preset("tiny")
LAYOUTS = {
    "ltx-2.3": dict(gated_attn=True, cross_attn_mod=True, perturbed_attn=True, use_prompt_adaln_single=True,
                    use_prompt_embeddings=False),
    "ltx-2.5": dict(gated_attn=True, cross_attn_mod=True, perturbed_attn=True, use_prompt_adaln_single=False,
                    use_prompt_embeddings=False),
}


def layout_transformer(layout: str, seed: int = 11) -> LTX2VideoTransformer3DModel:
    """The tiny preset's transformer with a block layout ("ltx-2.0" is the preset itself), with non-trivial
    modulation tables and attention gates (their default initialisation is near the identity)."""
    if layout == "ltx-2.0":
        return build_transformer(PRESET)
    torch.manual_seed(seed)
    model = LTX2VideoTransformer3DModel(**{**PRESET.transformer, **LAYOUTS[layout]}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_shift_table" in name or "to_gate_logits" in name:
                p.normal_(0, 0.5)
    return model


def with_audio_embeds(cond: TextConditioning, gen: torch.Generator) -> TextConditioning:
    """No caption projection on 2.3/2.5: the connectors give the audio stream its own prompt embeddings."""
    cond.audio_embeds = torch.randn(*cond.embeds.shape[:2], PRESET.transformer["audio_cross_attention_dim"],
                                    generator=gen)
    return cond


NUM_TRAIN_TIMESTEPS = 1000  # LTX-2's scheduler config: the pipeline's timesteps are σ · num_train_timesteps


def pipeline_forward(model: LTX2VideoTransformer3DModel, x: torch.Tensor, sigma: torch.Tensor,
                     text: TextConditioning, coords: torch.Tensor, token_sigma: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Video output of diffusers' forward called as ``LTX2Pipeline`` calls it (``timestep = sigma = σ·1000``, the
    cross-modality timestep), video-only: one silent audio token, modalities isolated. ``token_sigma`` [B,N] gives
    per-token video timesteps (as the condition pipeline does), ``sigma`` [B] the per-sample ones."""
    scaled = sigma * NUM_TRAIN_TIMESTEPS
    timestep = scaled if token_sigma is None else token_sigma * NUM_TRAIN_TIMESTEPS
    audio = torch.zeros(x.shape[0], 1, model.config.audio_in_channels)
    audio_text = text.embeds if text.audio_embeds is None else text.audio_embeds
    return model(hidden_states=x, audio_hidden_states=audio, encoder_hidden_states=text.embeds,
                 audio_encoder_hidden_states=audio_text, timestep=timestep, audio_timestep=scaled, sigma=scaled,
                 encoder_attention_mask=text.mask, audio_encoder_attention_mask=text.mask, video_coords=coords,
                 audio_num_frames=1, isolate_modalities=True, use_cross_timestep=True, return_dict=False)[0]
