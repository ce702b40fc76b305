"""Real-server tests of the harness itself, using ComfyUI core nodes only (no model weights)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import pytest
import torch
from comfy_server import ComfyServer, PromptRejected, output_entries
from PIL import Image
from safetensors.torch import save_file
from workflow_convert import convert

ORANGE = 0xFF8000  # EmptyImage colour → RGB (255, 128, 0)


def _types(events: list[dict[str, Any]]) -> list[str]:
    """The event types in order."""
    return [e["type"] for e in events]


def _png(data: bytes) -> Image.Image:
    """Decode PNG bytes (and check they are a PNG)."""
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img.convert("RGB")


def test_object_info_lists_core_nodes(comfy_server: ComfyServer) -> None:
    """/object_info has the core image/video nodes and the flags the converter relies on."""
    info = comfy_server.object_info()
    for name in ("LoadImage", "SaveImage", "CreateVideo", "LoadVideo", "SaveVideo", "EmptyImage"):
        assert name in info, name
    assert info["SaveImage"]["input"]["required"]["images"][0] == "IMAGE"
    assert info["KSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    assert set(comfy_server.object_info("SaveImage")) == {"SaveImage"}


def test_core_workflow_events_history_and_view(comfy_server: ComfyServer) -> None:
    """EmptyImage → SaveImage: ordered ws events, /history output, /view returns the right PNG."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": ORANGE}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness/solid"}},
    }
    with comfy_server.client() as c:
        pid = c.queue(prompt)
        events = c.wait(pid, timeout=60)
        assert c.end_reason == "executing"  # ended by the ws message, not the /history fallback
    types = _types(events)
    assert types[0] == "execution_start"
    assert types[-1] == "executing" and events[-1]["data"]["node"] is None
    assert types[-2] == "execution_success"
    executing = [e["data"]["node"] for e in events if e["type"] == "executing"]
    assert executing == ["1", "2", None]
    executed = [e for e in events if e["type"] == "executed"]
    assert [e["data"]["node"] for e in executed] == ["2"]
    assert all(e["data"]["prompt_id"] == pid for e in events)

    hist = comfy_server.history(pid)
    assert hist["status"]["status_str"] == "success" and hist["status"]["completed"] is True
    (item,) = output_entries(hist)
    assert item["type"] == "output" and item["subfolder"] == "harness" and item["filename"].endswith(".png")
    assert executed[0]["data"]["output"]["images"][0]["filename"] == item["filename"]

    data = comfy_server.view(item["filename"], item["subfolder"], item["type"])
    img = _png(data)
    assert img.size == (40, 24)
    assert img.getpixel((5, 5)) == (255, 128, 0)
    (path,) = comfy_server.output_files(pid)
    assert path.is_absolute() and path.read_bytes() == data
    assert path.parent == comfy_server.output_dir / "harness"
    assert comfy_server.output_files(pid, types=("output",)) == [path]
    assert comfy_server.output_files(pid, types=("temp",)) == []


def test_progress_events_from_model_node(comfy_server: ComfyServer) -> None:
    """A tiny upscale model in the extra model folder loads, and its node streams one progress per image."""
    folder = comfy_server.models_dir / "upscale_models"
    g = torch.Generator().manual_seed(0)
    shapes = {"body.0.weight": (4, 3, 3, 3), "body.0.bias": (4,), "body.1.weight": (4,),
              "body.2.weight": (4, 4, 3, 3), "body.2.bias": (4,), "body.3.weight": (4,),
              "body.4.weight": (12, 4, 3, 3), "body.4.bias": (12,)}  # fmt: skip
    save_file({k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}, str(folder / "tiny_x2.safetensors"))
    assert "tiny_x2.safetensors" in comfy_server.object_info("UpscaleModelLoader")["UpscaleModelLoader"]["input"][
        "required"]["model_name"][1]["options"]  # fmt: skip

    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 3, "color": 0x102030}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_x2.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "harness/upscaled"}},
    }
    seen: list[str] = []
    res = comfy_server.run(prompt, on_event=lambda e: seen.append(e["type"]), timeout=120)
    assert res.ok and seen == _types(res.events)
    progress = [e["data"] for e in res.events if e["type"] == "progress"]
    assert [(p["node"], p["value"], p["max"]) for p in progress] == [("3", 1, 3), ("3", 2, 3), ("3", 3, 3)]
    order = [(e["type"], e["data"].get("node")) for e in res.events]
    assert order.index(("executing", "3")) < order.index(("progress", "3")) < order.index(("executing", "4"))
    files = comfy_server.output_files(res.history)
    assert len(files) == 3
    assert all(Image.open(f).size == (64, 32) for f in files)


def test_invalid_prompts_give_http_400_with_node_errors(comfy_server: ComfyServer) -> None:
    """A wrongly typed link and a missing required input are rejected with node_errors."""
    wrong_type = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness/bad"}},
    }
    with pytest.raises(PromptRejected) as exc:
        comfy_server.queue(wrong_type)
    assert exc.value.status == 400
    errs = exc.value.node_errors["2"]["errors"]
    assert errs[0]["type"] == "return_type_mismatch" and errs[0]["extra_info"]["input_name"] == "images"
    assert "node 2 (SaveImage)" in str(exc.value)

    missing = {
        "1": {"class_type": "EmptyImage", "inputs": {"height": 24, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness/bad"}},
    }
    with pytest.raises(PromptRejected) as exc:
        comfy_server.queue(missing)
    assert exc.value.status == 400
    found = [(nid, e["type"], e["extra_info"].get("input_name"))
             for nid, ne in exc.value.node_errors.items() for e in ne["errors"]]  # fmt: skip
    assert ("1", "required_input_missing", "width") in found

    with pytest.raises(PromptRejected) as exc:
        comfy_server.queue({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert exc.value.status == 400 and exc.value.error.get("type") == "invalid_prompt"


def test_video_out_upload_and_back_in(comfy_server: ComfyServer, tmp_path: Path) -> None:
    """CreateVideo → SaveVideo writes an mp4; uploading it and LoadVideo → frames round-trips."""
    make = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 6, "color": ORANGE}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 6.0}},
        "3": {"class_type": "SaveVideo",
              "inputs": {"video": ["2", 0], "filename_prefix": "harness/clip", "format": "mp4", "codec": "h264"}},
    }  # fmt: skip
    res = comfy_server.run(make, timeout=120)
    (mp4,) = comfy_server.output_files(res.history)
    assert mp4.suffix == ".mp4" and mp4.parent == comfy_server.output_dir / "harness"
    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6

    local = tmp_path / "harness_upload.mp4"
    local.write_bytes(mp4.read_bytes())
    up = comfy_server.upload_image(local)
    assert up == {"name": "harness_upload.mp4", "subfolder": "", "type": "input"}
    assert (comfy_server.input_dir / "harness_upload.mp4").read_bytes() == local.read_bytes()

    back = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": up["name"]}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "harness/frames"}},
    }
    frames = comfy_server.output_files(comfy_server.run(back, timeout=120).history)
    assert len(frames) == 6
    r, g, b = Image.open(frames[0]).convert("RGB").getpixel((16, 16))
    assert abs(r - 255) < 12 and abs(g - 128) < 12 and b < 12


def test_interrupt_and_free_leave_server_usable(comfy_server: ComfyServer) -> None:
    """POST /interrupt and /free answer, and the next prompt still succeeds."""
    comfy_server.interrupt()
    comfy_server.free()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness/after_free"}},
    }
    assert comfy_server.run(prompt, timeout=60).ok


# A frontend-style workflow: reroute, bypassed and muted nodes, a PrimitiveNode feeding a widget, a Note,
# control_after_generate values (INT seed in the middle of the widgets) and an upload-button value.
UI_WORKFLOW: dict[str, Any] = {
    "last_node_id": 11,
    "last_link_id": 6,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [40, 24, 1, ORANGE]},
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "IMAGE", "links": [2]}], "properties": {"showOutputText": False}},
        {"id": 3, "type": "ImageInvert", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}], "widgets_values": []},
        {"id": 4, "type": "ImageScale", "mode": 0, "title": "Resize",
         "inputs": [{"name": "image", "type": "IMAGE", "link": 3},
                    {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 4}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [5, 6]}],
         "widgets_values": ["nearest-exact", 64, 48, "disabled"]},
        {"id": 5, "type": "PrimitiveNode", "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [4], "widget": {"name": "width"}}],
         "widgets_values": [80, "fixed"]},
        {"id": 6, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 5}],
         "outputs": [], "widgets_values": ["harness/converted"]},
        {"id": 7, "type": "SaveImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 6}],
         "outputs": [], "widgets_values": ["harness/muted"]},
        {"id": 8, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["just a note"]},
        {"id": 9, "type": "RandomNoise", "mode": 0, "inputs": [],
         "outputs": [{"name": "NOISE", "type": "NOISE", "links": None}], "widgets_values": [1234, "fixed"]},
        {"id": 10, "type": "KSamplerAdvanced", "mode": 0,
         "inputs": [{"name": "model", "type": "MODEL", "link": None},
                    {"name": "positive", "type": "CONDITIONING", "link": None},
                    {"name": "negative", "type": "CONDITIONING", "link": None},
                    {"name": "latent_image", "type": "LATENT", "link": None}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": None}],
         "widgets_values": ["enable", 42, "randomize", 20, 8.0, "euler", "normal", 0, 10000, "disable"]},
        {"id": 11, "type": "LoadImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}, {"name": "MASK", "type": "MASK", "links": None}],
         "widgets_values": ["example.png", "image"]},
    ],
    "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
              [4, 5, 0, 4, 1, "INT"], [5, 4, 0, 6, 0, "IMAGE"], [6, 4, 0, 7, 0, "IMAGE"]],
    "groups": [], "config": {}, "extra": {}, "version": 0.4,
}  # fmt: skip

EXPECTED_API: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": ORANGE}},
    "4": {"class_type": "ImageScale",
          "inputs": {"upscale_method": "nearest-exact", "width": 80, "height": 48, "crop": "disabled",
                     "image": ["1", 0]}},
    "6": {"class_type": "SaveImage", "inputs": {"filename_prefix": "harness/converted", "images": ["4", 0]}},
    "9": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1234}},
    "10": {"class_type": "KSamplerAdvanced",
           "inputs": {"add_noise": "enable", "noise_seed": 42, "steps": 20, "cfg": 8.0, "sampler_name": "euler",
                      "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000,
                      "return_with_leftover_noise": "disable"}},
    "11": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
}  # fmt: skip


def test_ui_to_api_conversion_matches_hand_written(comfy_server: ComfyServer) -> None:
    """The converter gives exactly the hand-written API prompt, with value types kept."""
    info = comfy_server.object_info()
    api = convert(UI_WORKFLOW, info, include_meta=False)
    assert api == EXPECTED_API
    assert isinstance(api["10"]["inputs"]["cfg"], float) and isinstance(api["10"]["inputs"]["steps"], int)
    meta = convert(UI_WORKFLOW, info)
    assert meta["4"]["_meta"] == {"title": "Resize"}
    assert meta["6"]["_meta"] == {"title": info["SaveImage"]["display_name"]}


def test_converted_workflow_runs_and_cli_agrees(comfy_server: ComfyServer, tmp_path: Path) -> None:
    """The converted prompt runs (bypassed invert skipped, primitive width used); the CLI prints the same."""
    api = convert(UI_WORKFLOW, comfy_server.object_info())
    res = comfy_server.run(api, timeout=60)
    (png,) = comfy_server.output_files(res.history)
    img = Image.open(png).convert("RGB")
    assert img.size == (80, 48)
    assert img.getpixel((10, 10)) == (255, 128, 0)  # not inverted: node 3 was bypassed

    ui_file = tmp_path / "ui.json"
    ui_file.write_text(json.dumps(UI_WORKFLOW))
    cli = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("workflow_convert.py")), str(ui_file), "--server", comfy_server.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == api
