"""A SIGMAS from a native ComfyUI scheduler node drives an EditCtrl edit on a real server, exactly.

- ComfyUI 0.8.0: UNETLoader (our tiny native-layout checkpoint) → BasicScheduler → the Edit Sampler's SIGMAS,
  the sampler running on the same native MODEL (EditCtrl Model From Native), to a decoded, saved video.
- Every version (0.3.75 has no native LTX-2, so no MODEL for BasicScheduler): LTXVScheduler with non-default
  shifts and terminal on the edit's own latent.

Each checks three things that could each fail on their own: the σ the node says it ran are the scheduler's (an
independent computation of that node's formula), they are not the default schedule, and the saved latents equal a
direct `sample_edit` call in this process with exactly those σ (while the default schedule gives another edit).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from comfy_server import ComfyServer
from test_native_interop import _saved_latent, _source_nodes, native_tiny

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.blend import BlendSettings
from editctrl_core.edit.context import prepare_edit
from editctrl_core.edit.sampler import SamplerSettings, sample_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.edit.schedules import ltx2_sigmas
from editctrl_core.loading.models import build_vae, load_models, load_preset, save_transformer_official
from editctrl_core.loading.native import our_latents

PRESET = load_preset("tiny")
SIGMAS_FILE = "editctrl-sigmas-native-tiny.safetensors"
STEPS = 3
SAMPLER = {"seed": 5, "cfg": 1.0, "shift": 1.0, "dilation": 1, "strength": 1.0, "window_frames": 0,
           "mode": "training_free"}


def _source_context():
    """In this process, the edit context and prompt `_source_nodes` build on the server (EmptyImage 96x64 x 9 in
    0x3366CC, the rectangle x 32..72, y 0..40, our tiny VAE and text encoder)."""
    frames = torch.empty(9, 64, 96, 3)
    for channel, value in enumerate((0x33, 0x66, 0xCC)):
        frames[..., channel] = value / 0xFF
    mask = torch.zeros(9, 64, 96)
    mask[:, 0:40, 32:72] = 1.0
    ctx = prepare_edit(build_vae(PRESET), frames, mask, geometry="pad")
    return ctx, build_tiny_text_encoder().encode(["a red ball"])


def _direct_edit(transformer: torch.nn.Module, sigmas: torch.Tensor | None, steps: int) -> torch.Tensor:
    """`sample_edit` as the node calls it (its defaults), on `transformer`, with `sigmas`."""
    ctx, text = _source_context()
    scd = SCDModel(transformer, SCDOptions(split_layer=PRESET.split_layer))
    settings = SamplerSettings(steps=steps, seed=SAMPLER["seed"], cfg=SAMPLER["cfg"], dilation=SAMPLER["dilation"],
                               blend=BlendSettings(), mode=SAMPLER["mode"], sigmas=sigmas)
    return sample_edit(scd, ctx, text, None, settings).latents


def _reported(history: dict, node: str) -> tuple[str, torch.Tensor]:
    """(the node's σ line, the σ values it lists) from the sampler's UI text."""
    text = "".join(history["outputs"][node]["text"])
    line = next((ln for ln in text.splitlines() if ln.startswith("σ ")), None)
    assert line is not None, text
    values = re.search(r": ([0-9., e+-]+)$", line)
    assert values is not None, line
    return line, torch.tensor([float(v) for v in values.group(1).split(", ")], dtype=torch.float32)


def _sampler_nodes(prefix: str, model: list, **inputs: object) -> dict:
    """Edit Sampler → Edit To Latent → SaveLatent, named <prefix>1..3."""
    return {
        f"{prefix}1": {"class_type": "EditCtrlSampler", "inputs": {
            "model": model, "edit_context": ["4", 0], "positive": ["6", 0], "steps": STEPS, **SAMPLER, **inputs}},
        f"{prefix}2": {"class_type": "EditCtrlEditToLatent", "inputs": {"latents": [f"{prefix}1", 0],
                                                                        "noise_mask": False}},
        f"{prefix}3": {"class_type": "SaveLatent", "inputs": {"samples": [f"{prefix}2", 0],
                                                              "filename_prefix": f"sigmas/{prefix}"}},
    }


def _video_nodes(sampler: str) -> dict:
    """Decode the edit, composite it into the source and save it as an mp4."""
    return {
        "v1": {"class_type": "EditCtrlVAEDecode", "inputs": {"vae": ["1", 1], "latents": [sampler, 0],
                                                             "region": "full", "halo_tokens": 2}},
        "v2": {"class_type": "EditCtrlComposite", "inputs": {"edited": ["v1", 0], "source": ["4", 1],
                                                             "mask": ["4", 2], "feather_px": 8.0}},
        "v3": {"class_type": "CreateVideo", "inputs": {"images": ["v2", 0], "fps": 24.0}},
        "v4": {"class_type": "SaveVideo", "inputs": {"video": ["v3", 0], "filename_prefix": "sigmas/edit",
                                                     "format": "mp4", "codec": "h264"}},
    }


def _saved_video(server: ComfyServer, history: dict) -> Path:
    items = [i for v in history["outputs"]["v4"].values() if isinstance(v, list) for i in v
             if isinstance(i, dict) and "filename" in i]
    assert items, history["outputs"]["v4"]
    return server.output_dir / items[0]["subfolder"] / items[0]["filename"]


def basic_scheduler_simple(steps: int, shift: float = 2.37, timesteps: int = 10000) -> torch.Tensor:
    """What ComfyUI 0.8.0's BasicScheduler ('simple', denoise 1) gives for its LTXAV model, computed here: the
    model's ModelSamplingFlux table (flux time shift with LTXV's shift 2.37 over 10000 timesteps), every
    timesteps/steps-th entry from the top, then 0."""
    t = torch.arange(1, timesteps + 1, 1) / timesteps
    table = math.exp(shift) / (math.exp(shift) + (1 / t - 1) ** 1.0)
    stride = timesteps / steps
    return torch.tensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0], dtype=torch.float32)


@pytest.fixture(scope="module")
def native_unet(comfy_server: ComfyServer) -> Path:
    if comfy_server.version_info < (0, 8):
        pytest.skip("ComfyUI 0.3.75 has no native LTX-2, so no MODEL for BasicScheduler (it arrived in 0.8.0); "
                    "test_ltxv_scheduler_sigmas_drive_the_edit_exactly covers SIGMAS there")
    path = comfy_server.models_dir / "diffusion_models" / SIGMAS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_transformer_official(native_tiny(seed=2, scale=0.05), path)
    return path


def test_basic_scheduler_sigmas_from_a_native_model_drive_the_edit_exactly(comfy_server: ComfyServer,
                                                                          native_unet: Path) -> None:
    wf = _source_nodes()
    wf.update({
        "30": {"class_type": "UNETLoader", "inputs": {"unet_name": SIGMAS_FILE, "weight_dtype": "default"}},
        "31": {"class_type": "BasicScheduler", "inputs": {"model": ["30", 0], "scheduler": "simple", "steps": STEPS,
                                                          "denoise": 1.0}},
        "32": {"class_type": "EditCtrlModelFromNative", "inputs": {"model": ["30", 0], "split_layer": 0}},
        **_sampler_nodes("s", ["32", 0], sigmas=["31", 0]),
        **_sampler_nodes("d", ["32", 0]),
        **_video_nodes("s1"),
    })
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    line, used = _reported(result.history, "s1")
    assert line.startswith("σ from the SIGMAS input (it overrides scheduler auto): "), line
    expected = basic_scheduler_simple(STEPS)
    torch.testing.assert_close(used, expected, rtol=0, atol=1e-7)
    ctx, _ = _source_context()
    default = ltx2_sigmas(STEPS, ctx.grid.num_tokens)
    assert float((used - default).abs().max()) > 0.05  # not the sampler's own schedule
    default_line, default_used = _reported(result.history, "d1")
    assert default_line.startswith("σ schedule ltx2: auto chose it because the checkpoint does not say"), default_line
    torch.testing.assert_close(default_used, default, rtol=0, atol=0)

    edited, edited_default = _saved_latent(comfy_server, result.history, "s3"), _saved_latent(comfy_server,
                                                                                             result.history, "d3")
    transformer = load_models(native_unet).transformer  # our loader on the very file UNETLoader read
    direct = _direct_edit(transformer, used, STEPS)
    torch.testing.assert_close(our_latents(edited), direct, rtol=0, atol=1e-5)
    assert float((edited - edited_default).abs().max()) > 1e-2  # the SIGMAS changed the edit
    torch.testing.assert_close(our_latents(edited_default), _direct_edit(transformer, None, STEPS), rtol=0, atol=1e-5)
    video = _saved_video(comfy_server, result.history)
    assert video.suffix == ".mp4" and video.stat().st_size > 0


def test_ltxv_scheduler_sigmas_drive_the_edit_exactly(comfy_server: ComfyServer) -> None:
    """Every version: LTXVScheduler (max_shift 3, base_shift 0.5, terminal 0.2 on the edit's own latent) → the
    Edit Sampler on our tiny preset model; its σ are LTX-2's schedule with those settings for the clip's 12
    tokens, and the edit equals the direct core call with them."""
    wf = _source_nodes()
    wf.update({
        "7": {"class_type": "EditCtrlContextToLatent", "inputs": {"edit_context": ["4", 0]}},
        "20": {"class_type": "LTXVScheduler", "inputs": {"steps": STEPS + 1, "max_shift": 3.0, "base_shift": 0.5,
                                                         "stretch": True, "terminal": 0.2, "latent": ["7", 0]}},
        **_sampler_nodes("s", ["1", 0], steps=STEPS + 1, sigmas=["20", 0], scheduler="distilled"),
        **_sampler_nodes("d", ["1", 0], steps=STEPS + 1),
        **_video_nodes("s1"),
    })
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    line, used = _reported(result.history, "s1")
    assert line.startswith("σ from the SIGMAS input (it overrides scheduler distilled): "), line
    ctx, _ = _source_context()
    assert ctx.grid.num_tokens == 12
    expected = ltx2_sigmas(STEPS + 1, 12, base_shift=0.5, max_shift=3.0, terminal=0.2)
    torch.testing.assert_close(used, expected, rtol=0, atol=1e-6)
    default = ltx2_sigmas(STEPS + 1, 12)
    assert float((used - default).abs().max()) > 0.05
    edited, edited_default = _saved_latent(comfy_server, result.history, "s3"), _saved_latent(comfy_server,
                                                                                             result.history, "d3")
    transformer = load_models(None, "tiny").transformer  # what the loader's 'tiny' preset weights are
    torch.testing.assert_close(our_latents(edited), _direct_edit(transformer, used, STEPS + 1), rtol=0, atol=1e-5)
    assert float((edited - edited_default).abs().max()) > 1e-2
    assert _saved_video(comfy_server, result.history).stat().st_size > 0


def test_bad_sigmas_and_an_empty_mask_with_sigmas(comfy_server: ComfyServer) -> None:
    """A SIGMAS whose length disagrees with steps, or combined with strength < 1, is refused before sampling with
    the fix named; with an empty mask the source latents come back, no σ ran and the node says the model never
    ran."""
    wf = _source_nodes()
    wf["20"] = {"class_type": "LTXVScheduler", "inputs": {"steps": STEPS, "max_shift": 2.05, "base_shift": 0.95,
                                                          "stretch": True, "terminal": 0.1}}
    wf.update(_sampler_nodes("s", ["1", 0], steps=STEPS + 2, sigmas=["20", 0]))
    wrong = comfy_server.run(wf, timeout=300, check=False)
    assert wrong.error is not None
    assert (f"SIGMAS has {STEPS + 1} values but {STEPS + 2} steps need {STEPS + 3} (steps + 1); set steps to "
            f"{STEPS}" in wrong.error["data"]["exception_message"]), wrong.error
    wf["s1"]["inputs"].update(steps=STEPS, strength=0.5)
    partial = comfy_server.run(wf, timeout=300, check=False)
    assert partial.error is not None
    assert "with SIGMAS, start the list at the σ to edit from" in partial.error["data"]["exception_message"]
    wf["s1"]["inputs"].update(strength=1.0)
    wf["21"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 96, "height": 64}}
    wf["4"]["inputs"]["mask"] = ["21", 0]
    wf["7"] = {"class_type": "EditCtrlContextToLatent", "inputs": {"edit_context": ["4", 0]}}
    wf["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "sigmas/source"}}
    empty = comfy_server.run(wf, timeout=300, check=False)
    assert empty.error is None, empty.error
    text = "".join(empty.history["outputs"]["s1"]["text"])
    assert "the model never ran" in text and "denoising passes" not in text and "σ " not in text, text
    assert torch.equal(_saved_latent(comfy_server, empty.history, "s3"),
                       _saved_latent(comfy_server, empty.history, "8"))
