"""Pixels ↔ normalised LTX-2 latents through diffusers' ``AutoencoderKLLTX2Video``."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLLTX2Video

from ..edit.geometry import grid_for


def _stats(vae: AutoencoderKLLTX2Video, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(like.device, like.dtype)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(like.device, like.dtype)
    return mean, std, float(vae.config.scaling_factor)


@torch.no_grad()
def encode_frames(vae: AutoencoderKLLTX2Video, frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames [F,H,W,3] in 0..1 → normalised latents [1,C,f,h,w] (distribution mode, deterministic)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [frames, height, width, 3]; got {tuple(frames.shape)}")
    return encode_clips(vae, frames.unsqueeze(0))


@torch.no_grad()
def encode_clips(vae: AutoencoderKLLTX2Video, clips: torch.Tensor) -> torch.Tensor:
    """Clips of one geometry [B,F,H,W,3] in 0..1 → normalised latents [B,C,f,h,w], in one VAE call (training data)."""
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must be [clips, frames, height, width, 3]; got {tuple(clips.shape)}")
    grid_for(clips.shape[1], clips.shape[2], clips.shape[3])
    video = clips.permute(0, 4, 1, 2, 3).to(device=vae.device, dtype=vae.dtype) * 2 - 1
    latents = vae.encode(video).latent_dist.mode()
    mean, std, scale = _stats(vae, latents)
    return ((latents - mean) * scale / std).float()


@torch.no_grad()
def decode_latents(vae: AutoencoderKLLTX2Video, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [1,C,f,h,w] → IMAGE frames [F,H,W,3] clamped to 0..1 (float32, CPU)."""
    device, dtype = vae.device, vae.dtype
    z = latents.to(device=device, dtype=dtype)
    mean, std, scale = _stats(vae, z)
    z = z * std / scale + mean
    temb = None
    if vae.config.timestep_conditioning:
        temb = torch.zeros(z.shape[0], device=device, dtype=dtype)
    video = vae.decode(z, temb=temb).sample
    frames = (video[0].float().permute(1, 2, 3, 0) + 1) / 2
    return frames.clamp(0, 1).cpu()
