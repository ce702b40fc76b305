"""Windowed edits on the trained tiny model (weights/): does a window boundary leave a seam inside the mask?

`SamplerSettings(window_frames=K)` edits the latent frames K at a time, each window conditioned (through the
frame-causal SCD encoder) on the earlier windows as edited and, with `window_overlap` (default 2), denoising the last
frames before it jointly with its own, those held to their edit re-noised to each step's σ. The claim under test:
there is no seam at a window boundary, i.e. the frame-to-frame change inside the mask is no larger where two windows
meet than inside a window; without overlap there is one.
(That a single window is the one-pass edit, and that a later window's encoder context is built from the edited
earlier frames, is tested in tests/test_regions_windows.py.)

What is measured, and why this way:

* Latent space, not pixels. The shipped tiny VAE's decoder barely depends on its latents (decoding random latents
  instead of an edit moves the pixels by at most ~0.004, mean ~0.0004, on 0..1 frames, which is also why the
  training report's pixel error is the same trained and untrained), so a pixel-space frame difference measures the
  VAE, not the edit. In latent space the step is the mean |z[j+1] - z[j]| over the tokens edited in both latent frames j and
  j+1 (the dilated edit mask; outside it every run is the source, identical, so it would only dilute the signal).
* Against the one-pass edit, not raw. Boundary pairs and within-window pairs are different frame pairs of a clip
  whose object moves, and in the one-pass edit (no windows, so no seam by construction) those pairs already differ
  by a few hundredths either way, about as much as any seam: a raw "boundary <= within" is decided by where the
  boundaries fall. Every run here uses the same clip, prompt and noise (the sampler draws the noise for the whole
  clip from the seed), so the one-pass edit is the seam-free reference of the same edit, and the seam of a seed is
  the difference in differences:
      seam = mean over boundary pairs of (step_windowed - step_one_pass)
           - mean over within-window pairs of (step_windowed - step_one_pass).
  No seam means seam <= 0 in expectation over seeds.
* Tolerance from the spread over seeds, not chosen: the per-seed seams are noisy, so the mean over SEEDS seeds is
  compared with T_CRIT standard errors (one-sided 95 % Student t with len(SEEDS) - 1 degrees of freedom). The test
  fails only when the seam is significantly positive.
* Instrument check: the same windows edited *without* carrying the edit (each window's tokens edited in one pass of
  their own, the encoder context taken from the blanked background of every frame as in the one-pass edit — built
  with public API: an EditContext whose token mask is that window's, with the full mask's global-adapter input) must
  show a significant seam, or a passing seam test would mean nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.adapters import load_adapter
from editctrl_core.edit.context import EditContext, prepare_edit
from editctrl_core.edit.masks import pixel_mask_to_token_mask, token_mask_to_pixel_mask
from editctrl_core.edit.sampler import DEFAULT_WINDOW_OVERLAP, SamplerSettings, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.lora import apply_loras, read_lora
from editctrl_core.loading.models import load_models
from editctrl_core.loading.scd_metadata import options_from_metadata
from editctrl_core.media.synthetic import make_clip
from training.recipes.tiny_synthetic import CAPTION, EVAL_SEED, FILES, HEIGHT, WIDTH

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
#: 49 pixel frames = 7 latent frames; windows of 3 latent frames: [0,3) [3,6) [6,7), so the frame pairs (2,3) and
#: (5,6) straddle a boundary and (0,1) (1,2) (3,4) (4,5) lie inside a window.
FRAMES = 49
WINDOW = 3
OVERLAP = DEFAULT_WINDOW_OVERLAP
STEPS = 8  # the recipe's evaluation setting
SEEDS = range(8)
T_CRIT = 1.895  # one-sided 95 % Student t quantile, 7 degrees of freedom (8 seeds)


@pytest.fixture(scope="module")
def trained():
    """(SCD model with the shipped LoRA active and both adapters attached, VAE, prompt), loaded as the recipe does."""
    loaded = load_models(WEIGHTS / FILES["checkpoint"], "auto")
    preset = loaded.preset
    lora = read_lora(WEIGHTS / FILES["lora"])
    scd = SCDModel(loaded.transformer, SCDOptions(split_layer=preset.split_layer,
                                                  **options_from_metadata(lora.metadata)))
    scd.attach(load_adapter(WEIGHTS / FILES["local"], preset.model_id, preset.split_layer),
               load_adapter(WEIGHTS / FILES["global"], preset.model_id, preset.split_layer))
    prompt = build_tiny_text_encoder().encode([CAPTION])
    with apply_loras(loaded.transformer, [(lora, 1.0)]):
        yield scd, loaded.vae, prompt


def frame_steps(latents: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """[f-1]: mean |z[j+1] - z[j]| over the tokens edited in both latent frames j and j+1."""
    steps = []
    for j in range(latents.shape[2] - 1):
        both = edited[j] & edited[j + 1]
        assert bool(both.any()), f"no token is edited in both latent frames {j} and {j + 1}"
        steps.append((latents[0, :, j + 1] - latents[0, :, j]).abs()[:, both].mean())
    return torch.stack(steps)


def unconditioned_windows(scd: SCDModel, ctx: EditContext, prompt, settings: SamplerSettings) -> torch.Tensor:
    """The seam baseline: each window edited in a one-pass edit of its own tokens only, so its encoder context is the
    blanked background of every frame (the earlier windows' edit is not carried); same noise as the windowed edit."""
    frames = ctx.grid.shape[0]
    full_global = ctx.global_input()
    out = ctx.source_latents.clone()
    for start in range(0, frames, WINDOW):
        window = torch.zeros_like(ctx.token_mask)
        window[start:start + WINDOW] = True
        alone = dataclasses.replace(ctx, token_mask=ctx.token_mask & window)
        alone.global_input = lambda: full_global  # the adapter sees the whole mask, as in the windowed edit
        edit = sample_edit(scd, alone, prompt, None, settings).latents
        out[:, :, start:start + WINDOW] = edit[:, :, start:start + WINDOW]
    return out


@pytest.fixture(scope="module")
def measured(trained) -> dict[str, torch.Tensor]:
    """Per seed and frame pair [seeds, f-1], the step of the one-pass, windowed and unconditioned-window edits."""
    scd, vae, prompt = trained
    rows: dict[str, list[torch.Tensor]] = {"one_pass": [], "windowed": [], "overlapped": [], "unconditioned": []}
    for seed in SEEDS:
        clip = make_clip(FRAMES, HEIGHT, WIDTH, seed=EVAL_SEED + seed, shape="disc" if seed % 2 == 0 else "square")
        mask = token_mask_to_pixel_mask(pixel_mask_to_token_mask(clip.mask), FRAMES)
        ctx = prepare_edit(vae, clip.frames, mask)
        settings = SamplerSettings(steps=STEPS, seed=seed, cfg=1.0)
        one_pass = sample_edit(scd, ctx, prompt, None, settings)
        windowed = sample_edit(scd, ctx, prompt, None, dataclasses.replace(settings, window_frames=WINDOW,
                                                                           window_overlap=0))
        overlapped = sample_edit(scd, ctx, prompt, None, dataclasses.replace(settings, window_frames=WINDOW,
                                                                             window_overlap=OVERLAP))
        assert windowed.encoder_calls == -(-ctx.grid.shape[0] // WINDOW) >= 3
        assert torch.equal(windowed.edit_tokens, one_pass.edit_tokens)
        edited = one_pass.edit_tokens
        rows["one_pass"].append(frame_steps(one_pass.latents, edited))
        rows["windowed"].append(frame_steps(windowed.latents, edited))
        rows["overlapped"].append(frame_steps(overlapped.latents, edited))
        rows["unconditioned"].append(frame_steps(unconditioned_windows(scd, ctx, prompt, settings), edited))
    return {name: torch.stack(values) for name, values in rows.items()}


def boundary_pairs(pairs: int) -> torch.Tensor:
    """[pairs] bool: frame pair (j, j+1) straddles a window boundary (j+1 starts a window)."""
    return torch.tensor([(j + 1) % WINDOW == 0 for j in range(pairs)])


def seams(measured: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, str]:
    """Per-seed seam of run `name` (difference in differences against the one-pass edit) and a readable table."""
    steps, reference = measured[name], measured["one_pass"]
    boundary = boundary_pairs(steps.shape[1])
    excess = steps - reference
    at_boundary, inside = excess[:, boundary].mean(1), excess[:, ~boundary].mean(1)
    table = "\n".join(
        f"  seed {seed}: raw step boundary {steps[i, boundary].mean():.4f} / within {steps[i, ~boundary].mean():.4f}"
        f" (one pass {reference[i, boundary].mean():.4f} / {reference[i, ~boundary].mean():.4f}); excess over one "
        f"pass boundary {at_boundary[i]:+.4f} / within {inside[i]:+.4f}; seam {at_boundary[i] - inside[i]:+.4f}"
        for i, seed in enumerate(SEEDS))
    return at_boundary - inside, table


def summary(seam: torch.Tensor) -> tuple[float, float]:
    """(mean seam over seeds, its standard error)."""
    return float(seam.mean()), float(seam.std() / len(seam) ** 0.5)


def test_the_measurement_sees_the_seam_of_windows_that_do_not_carry_the_edit(measured):
    """Instrument check: windows edited without the earlier windows' edit as context do seam, and this sees it."""
    seam, table = seams(measured, "unconditioned")
    mean, se = summary(seam)
    assert mean > T_CRIT * se, f"unconditioned windows: seam {mean:+.4f} ± {se:.4f} (SE)\n{table}"


def test_windows_that_do_not_overlap_seam(measured):
    """Carrying the edit through the causal encoder alone is not enough: without overlap the windows seam (measured
    +0.012 ± 0.002 latent units over 8 seeds, about what windows that do not carry the edit show), because a later
    window's decoder sees the earlier edit only through the encoder's background."""
    seam, table = seams(measured, "windowed")
    mean, se = summary(seam)
    assert mean > T_CRIT * se, f"windows without overlap: seam {mean:+.4f} ± {se:.4f} (SE)\n{table}"


def test_overlapping_windows_add_no_more_frame_to_frame_change_at_a_boundary_than_inside_a_window(measured):
    """Windowed edit with the default overlap on the trained tiny model: the change the windows add to the
    frame-to-frame step inside the mask is no larger at a window boundary than inside a window (mean seam over
    seeds <= T_CRIT standard errors), and at most half the seam of the same windows without overlap."""
    seam, table = seams(measured, "overlapped")
    mean, se = summary(seam)
    without, without_se = summary(seams(measured, "windowed")[0])
    assert mean <= T_CRIT * se, (
        f"windowed edit (window_frames={WINDOW}, window_overlap={OVERLAP}) seams: mean seam {mean:+.4f} ± {se:.4f} "
        f"(SE) > {T_CRIT} SE; without overlap: {without:+.4f} ± {without_se:.4f}\n{table}")
    assert mean <= 0.5 * without, (mean, without)
