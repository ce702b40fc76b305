"""ComfyUI model management of our models, on a real server: registration, POST /free, offload, interrupt.

The server runs with --cpu, so the "GPU" is the CPU: what is checked is the bookkeeping ComfyUI uses to free VRAM
(our models appear in `comfy.model_management.current_loaded_models` while loaded, and leave it on /free, on
offload-after-encode and after an interrupted run + /free), read through the pack's `GET /editctrl/vram`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from comfy_server import ComfyServer

from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import write_video

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "graphs" / "editctrl_demo.api.json"
CLIP = "editctrl_vram_clip.mp4"


@pytest.fixture(scope="module")
def vram_clip(comfy_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A short demo clip in the server's input folder."""
    path = tmp_path_factory.mktemp("vram") / CLIP
    write_video(path, make_clip(9, 64, 96, seed=5).frames, fps=24)
    comfy_server.upload_image(path)
    return CLIP


def _workflow(clip: str, *, offload: bool, positive: str, steps: int = 2, seed: int = 1) -> dict:
    """The demo workflow with the text encoder on the auto device and one encode node for both prompts."""
    wf = json.loads(WORKFLOW.read_text())
    wf["1"]["inputs"]["file"] = clip
    wf["4"] = {"class_type": "EditCtrlLTXTextEncoderLoader", "inputs": {
        "text_encoder": "(tiny preset)", "connectors": "(from text encoder)", "tokenizer": "(from text encoder)",
        "preset": "auto", "device": "auto", "dtype": "auto", "offload_after_encode": offload, "max_length": 0}}
    wf["5"] = {"class_type": "EditCtrlTextEncode", "inputs": {
        "text_encoder": ["4", 0], "text": positive, "negative": "a coloured disc"}}
    del wf["6"]
    wf["7"]["inputs"].update(x=16, y=16, width=48, height=32)
    wf["9"]["inputs"].update(positive=["5", 0], negative=["5", 1], steps=steps, seed=seed)
    return wf


def _ours(server: ComfyServer) -> list[dict]:
    return server.get("/editctrl/vram").json()["models"]


def _wait_empty(server: ComfyServer, timeout: float = 15.0) -> list[dict]:
    """Poll until none of our models is registered (the prompt worker handles /free between prompts)."""
    deadline = time.monotonic() + timeout
    models = _ours(server)
    while models and time.monotonic() < deadline:
        time.sleep(0.2)
        models = _ours(server)
    return models


def test_text_encoder_registered_then_released_by_free(comfy_server: ComfyServer, vram_clip: str) -> None:
    result = comfy_server.run(_workflow(vram_clip, offload=False, positive="textured background"), timeout=300,
                              check=False)
    assert result.error is None, result.error
    models = _ours(comfy_server)
    names = [m["name"] for m in models]
    assert any("text encoder" in n for n in names), models
    entry = next(m for m in models if "text encoder" in m["name"])
    assert entry["current_device"] == entry["load_device"] and entry["loaded_mb"] > 0
    comfy_server.free(unload_models=True, free_memory=False)
    assert _wait_empty(comfy_server) == []


def _free_before_next_prompt(server: ComfyServer) -> None:
    """POST /free, then make sure the prompt worker has acted on it before the next prompt: it handles /free flags
    after the prompt it is running (or when it wakes with none), so a trivial prompt run to completion ends with the
    flags handled — otherwise a prompt queued right away runs first and the unload lands after it."""
    server.free(unload_models=True, free_memory=True)
    server.run({"1": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 8, "height": 8}},
                "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}, timeout=60)
    assert _wait_empty(server) == []


def test_offload_after_encode_leaves_nothing_registered(comfy_server: ComfyServer, vram_clip: str) -> None:
    _free_before_next_prompt(comfy_server)
    result = comfy_server.run(_workflow(vram_clip, offload=True, positive="a grey wall"), timeout=300, check=False)
    assert result.error is None, result.error
    names = [m["name"] for m in _ours(comfy_server)]
    assert not any("text encoder" in n for n in names), names
    assert any("transformer" in n for n in names) and any("VAE" in n for n in names), names
    assert "text encoder" in comfy_server.log_text()
    comfy_server.free(unload_models=True, free_memory=False)
    assert _wait_empty(comfy_server) == []


def test_interrupted_run_leaves_models_tracked_and_free_releases_them(comfy_server: ComfyServer,
                                                                       vram_clip: str) -> None:
    long = _workflow(vram_clip, offload=False, positive="a wooden floor", steps=200, seed=7)
    with comfy_server.client() as client:
        pid = client.queue(long)
        seen = []
        for event in client.events(pid, timeout=300):
            seen.append(event["type"])
            if event["type"] == "progress" and event["data"].get("node") == "9" and event["data"]["value"] >= 2:
                comfy_server.interrupt()
    assert "execution_interrupted" in seen
    models = _ours(comfy_server)
    assert models and all(m["current_device"] == m["load_device"] for m in models), models
    comfy_server.free(unload_models=True, free_memory=False)
    assert _wait_empty(comfy_server) == []


def _comfy_vram() -> object:
    """`nodes/vram.py` imported in this process against ComfyUI's own modules, in --cpu mode."""
    import importlib.util
    import sys

    from conftest import comfy_dir

    if str(comfy_dir()) not in sys.path:
        sys.path.append(str(comfy_dir()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location("editctrl_vram_inproc", REPO / "nodes" / "vram.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transformer_vae_and_fp8_models_through_comfy_model_management() -> None:
    """In-process: our diffusers models (read-only `device` property) and an fp8 model under ComfyUI's bookkeeping."""
    import torch

    from editctrl_core.loading.fp8 import FP8Linear, quantize_fp8, strict_load_fp8
    from editctrl_core.loading.models import build_transformer, build_vae, load_preset

    vram = _comfy_vram()
    import comfy.model_management as mm

    preset = load_preset("tiny")
    transformer, vae = build_transformer(preset), build_vae(preset)
    fp8 = strict_load_fp8(build_transformer(preset, empty=True),
                          quantize_fp8(build_transformer(preset).state_dict(), lambda k, v: "transformer_blocks." in k),
                          what="fp8", dtype=torch.bfloat16)
    vram.load(transformer, vae, fp8)
    names = [m["name"] for m in vram.status()]
    assert names.count("LTX2VideoTransformer3DModel") == 2 and "AutoencoderKLLTX2Video" in names
    assert vram.is_registered(transformer) and vram.is_registered(vae)
    vram.load(transformer)  # loading again does not duplicate the entry
    assert len(vram.status()) == 3
    mm.unload_all_models()  # what POST /free runs
    assert vram.status() == [] and not vram.is_registered(vae)
    q = fp8.transformer_blocks[0].attn1.to_q
    assert isinstance(q, FP8Linear) and q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.dtype == torch.float32
    with pytest.raises(RuntimeError, match="interrupted"):
        with vram.on_device(transformer, offload_after=True):
            assert vram.is_registered(transformer)
            raise RuntimeError("interrupted")
    assert not vram.is_registered(transformer)
    with vram.on_device(vae):
        pass
    assert vram.is_registered(vae) and vram.unload(vae) == 1 and vram.status() == []
