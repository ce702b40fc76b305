"""End-to-end: the demo edit workflow queued on a real ComfyUI server over HTTP/WebSocket, as pipelines do."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_server import ComfyServer, PromptRejected
from PIL import Image

from editctrl_core.edit.blend import feather_mask
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import read_video, write_video

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "graphs" / "editctrl_demo.api.json"
NODE_IDS = ["EditCtrlModelLoader", "EditCtrlLTXTextEncoderLoader", "EditCtrlTextEncode", "EditCtrlVAEEncode",
            "EditCtrlSampler", "EditCtrlBlendSettings", "EditCtrlRegion", "EditCtrlVAEDecode", "EditCtrlComposite", "EditCtrlRectMask", "EditCtrlMaskOverlay"]


@pytest.fixture(scope="module")
def demo_clip(comfy_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo clip (moving disc, textured background, audio) uploaded to the server's input folder."""
    path = tmp_path_factory.mktemp("clip") / "editctrl_demo.mp4"
    clip = make_clip(25, 128, 192, seed=3)
    t = np.arange(44100) / 44100
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_video(path, clip.frames, fps=24, audio=(np.stack([tone, tone]), 44100))
    comfy_server.upload_image(path)
    return path


def _workflow(**changes: dict) -> dict:
    wf = json.loads(WORKFLOW.read_text())
    for node, inputs in changes.items():
        wf[node]["inputs"].update(inputs)
    return wf


def _demo_mask() -> torch.Tensor:
    """The pixel mask [25,128,192] of the workflows' rectangle (x 40, y 32, 96×88) on the demo clip."""
    mask = torch.zeros(25, 128, 192)
    mask[:, 32:32 + 88, 40:40 + 96] = 1
    return mask


def _outside(wf: dict) -> np.ndarray:
    """Pixels beyond the workflow's composite feather (node 11), where the output must be the source."""
    return (feather_mask(_demo_mask(), wf["11"]["inputs"]["feather_px"]) == 0).numpy()


def _assert_source_outside(frames: np.ndarray, wf: dict, demo_clip: Path) -> None:
    """Edited frames equal the source clip bit-exactly beyond the feather."""
    source, _ = read_video(demo_clip)
    expected = np.clip(255.0 * source.numpy(), 0, 255).astype(np.uint8)
    outside = _outside(wf)
    assert np.array_equal(frames[outside], expected[outside]), "pixels outside the feathered mask must be the input"


def _png_frames(server: ComfyServer, history: dict, node: str) -> np.ndarray:
    images = history["outputs"][node]["images"]
    frames = [np.array(Image.open(io.BytesIO(server.view(i["filename"], i["subfolder"], i["type"]))).convert("RGB"))
              for i in images]
    return np.stack(frames)


def test_object_info_lists_every_node(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    for node in NODE_IDS:
        assert node in info, node
        assert info[node]["category"].startswith("EditCtrl")
    sampler = info["EditCtrlSampler"]["input"]
    assert {"model", "edit_context", "positive", "seed", "steps", "cfg", "shift", "dilation"} <= set(
        sampler["required"])
    assert "negative" in sampler["optional"]
    assert "(preset weights)" in info["EditCtrlModelLoader"]["input"]["required"]["weights"][1]["options"]
    prefix = info["EditCtrlModelLoader"]["input"]["optional"]["scd_prefix"]
    assert prefix[1]["options"] == ["one_way", "bidirectional"] and prefix[1]["default"] == "one_way"


def test_loader_prefix_mode_changes_the_edit_inside_the_mask_only(comfy_server: ComfyServer, demo_clip: Path) -> None:
    """The loader's scd_prefix switches the decoder: a different edit inside the mask, the source outside."""
    frames = {}
    for mode in ("one_way", "bidirectional"):
        wf = _workflow()
        wf["3"]["inputs"]["scd_prefix"] = mode
        wf["9"]["inputs"]["mode"] = "scd"
        wf["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": f"e2e/{mode}"}}
        result = comfy_server.run(wf, timeout=600)
        frames[mode] = _png_frames(comfy_server, result.history, "17")
    outside = _outside(_workflow())
    assert np.array_equal(frames["one_way"][outside], frames["bidirectional"][outside])
    assert not np.array_equal(frames["one_way"], frames["bidirectional"])


def test_demo_workflow_edits_only_the_masked_region(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _workflow()
    wf["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/frames"}}
    steps = wf["9"]["inputs"]["steps"]
    with comfy_server.client() as client:
        pid = client.queue(wf)
        events = client.wait(pid, timeout=600)
    types = [e["type"] for e in events]
    assert "execution_error" not in types, events[-1]
    assert "execution_success" in types
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == "9"]
    assert [p["value"] for p in progress] == list(range(1, steps + 1))
    assert all(p["max"] == steps for p in progress)
    history = comfy_server.history(pid)
    outputs = comfy_server.output_files(history)
    videos = [p for p in outputs if p.suffix == ".mp4"]
    assert {p.name.split("_0")[0] for p in videos} == {"edit", "mask_overlay"}
    edited_video, fps = read_video(next(p for p in videos if p.name.startswith("edit")))
    assert edited_video.shape == (25, 128, 192, 3) and fps == 24
    import av

    with av.open(str(next(p for p in videos if p.name.startswith("edit")))) as container:
        assert len(container.streams.audio) == 1, "source audio must be carried into the edited video"

    frames = _png_frames(comfy_server, history, "17")
    assert frames.shape == (25, 128, 192, 3)
    _assert_source_outside(frames, wf, demo_clip)
    source, _ = read_video(demo_clip)
    expected = np.clip(255.0 * source.numpy(), 0, 255).astype(np.uint8)
    inside = (_demo_mask() > 0).numpy()
    assert np.abs(frames[inside].astype(int) - expected[inside].astype(int)).mean() > 1.0


def test_invalid_prompt_is_rejected_with_node_errors(comfy_server: ComfyServer) -> None:
    wf = _workflow()
    wf["9"]["inputs"]["steps"] = 0
    del wf["9"]["inputs"]["positive"]
    wf["8"]["inputs"]["images"] = ["3", 0]
    with pytest.raises(PromptRejected) as err:
        comfy_server.queue(wf, client_id="bad")
    assert err.value.status == 400
    errors = err.value.body["node_errors"]
    assert "9" in errors or "8" in errors
    text = json.dumps(errors)
    assert "steps" in text and "positive" in text and "images" in text


def test_any_clip_geometry_round_trips_with_its_frames_size_fps_and_audio(comfy_server: ComfyServer,
                                                                          tmp_path: Path) -> None:
    """20 frames at 100x150 and 30 fps: strict mode names every problem at once; pad mode edits and gives back the
    same frame count, size, fps and audio, the source beyond the feather, and says on the node what it padded."""
    odd = tmp_path / "editctrl_odd_20f.mp4"
    clip = make_clip(20, 100, 150, seed=5)
    t = np.arange(44100) / 44100
    tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    write_video(odd, clip.frames, fps=30, audio=(np.stack([tone, tone]), 44100))
    comfy_server.upload_image(odd)
    rect = {"x": 100, "y": 60, "width": 50, "height": 40}
    strict = comfy_server.run(_workflow(**{"1": {"file": odd.name}, "7": rect, "8": {"geometry": "strict"}}),
                              timeout=300, check=False)
    assert strict.error is not None and strict.error["type"] == "execution_error"
    message = strict.error["data"]["exception_message"]
    assert "20 frames is not 8n+1" in message and "pad to 25 or trim to 17" in message
    assert "height 100 px" in message and "width 150 px" in message and "geometry 'pad'" in message
    wf = _workflow(**{"1": {"file": odd.name}, "7": rect, "9": {"steps": 2}})
    wf["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/odd"}}
    padded = comfy_server.run(wf, timeout=300, check=False)
    assert padded.error is None, padded.error
    note = "".join(padded.history["outputs"]["8"]["text"])
    assert "padded 20 frames at 100x150 to 25 frames at 128x160" in note
    assert "edited" in "".join(padded.history["outputs"]["9"]["text"])
    video = next(p for p in comfy_server.output_files(padded.history) if p.name.startswith("edit"))
    frames_out, fps = read_video(video)
    assert frames_out.shape == (20, 100, 150, 3) and fps == 30
    import av

    with av.open(str(video)) as container:
        assert len(container.streams.audio) == 1, "source audio must be carried into the edited video"
    frames = _png_frames(comfy_server, padded.history, "17")
    assert frames.shape == (20, 100, 150, 3)
    source, _ = read_video(odd)
    expected = np.clip(255.0 * source.numpy(), 0, 255).astype(np.uint8)
    mask = torch.zeros(20, 100, 150)
    mask[:, 60:, 100:] = 1
    beyond = (feather_mask(mask, wf["11"]["inputs"]["feather_px"]) == 0).numpy()
    assert np.array_equal(frames[beyond], expected[beyond])
    inside = (mask > 0).numpy()
    assert np.abs(frames[inside].astype(int) - expected[inside].astype(int)).mean() > 1.0


def _image_workflow(name: str, rect: dict) -> dict:
    """The demo graph fed by one still image (LoadImage) instead of a video, saving PNGs of the composite."""
    wf = _workflow(**{"7": rect, "9": {"steps": 2}})
    for node in ("12", "13", "14", "15", "16", "2"):
        del wf[node]
    wf["1"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    for node in wf.values():
        for key, value in node["inputs"].items():
            if value == ["2", 0]:
                node["inputs"][key] = ["1", 0]
    wf["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/still"}}
    return wf


def test_a_single_odd_sized_frame_round_trips(comfy_server: ComfyServer, tmp_path: Path) -> None:
    still = tmp_path / "editctrl_still_35x37.png"
    pixels = (make_clip(1, 35, 37, seed=2).frames[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(still)
    comfy_server.upload_image(still)
    for rect in ({"x": 0, "y": 0, "width": 10, "height": 35}, {"x": 30, "y": 25, "width": 7, "height": 10}):
        wf = _image_workflow(still.name, rect)
        result = comfy_server.run(wf, timeout=300, check=False)
        assert result.error is None, result.error
        frames = _png_frames(comfy_server, result.history, "17")
        assert frames.shape == (1, 35, 37, 3)
        mask = torch.zeros(1, 35, 37)
        mask[:, rect["y"]:rect["y"] + rect["height"], rect["x"]:rect["x"] + rect["width"]] = 1
        beyond = (feather_mask(mask, wf["11"]["inputs"]["feather_px"]) == 0).numpy()
        assert np.array_equal(frames[beyond], pixels[None][beyond])
        assert "padded 1 frames at 35x37 to 1 frames at 64x64" in "".join(result.history["outputs"]["8"]["text"])


def test_non_finite_inputs_are_errors_naming_the_input(comfy_server: ComfyServer, demo_clip: Path) -> None:
    """NaN cfg/shift pass ComfyUI's min/max check; NaN pixels and masks come from core nodes. Each is refused."""
    cases = {
        "cfg is nan": _workflow(**{"9": {"cfg": float("nan"), "steps": 1}}),
        "shift is nan": _workflow(**{"9": {"shift": float("nan"), "steps": 1}}),
        "strength is nan": _workflow(**{"9": {"strength": float("nan"), "steps": 1}}),
        "feather_px is nan": _workflow(**{"9": {"steps": 1}, "11": {"feather_px": float("nan")}}),
    }
    nan_mask = _workflow(**{"8": {"mask": ["20", 0]}, "9": {"steps": 1}})
    nan_mask["20"] = {"class_type": "SolidMask", "inputs": {"value": float("nan"), "width": 192, "height": 128}}
    cases["mask holds"] = nan_mask
    nan_frames = _workflow(**{"8": {"images": ["20", 0]}, "9": {"steps": 1}})
    nan_frames["20"] = {"class_type": "ImageBlend", "inputs": {"image1": ["2", 0], "image2": ["2", 0],
                                                               "blend_factor": float("nan"), "blend_mode": "normal"}}
    cases["frames holds"] = nan_frames
    for expected, wf in cases.items():
        result = comfy_server.run(wf, timeout=300, check=False)
        assert result.error is not None, expected
        assert expected in result.error["data"]["exception_message"], (expected, result.error["data"])
    ok = comfy_server.run(_workflow(**{"9": {"steps": 1}}), timeout=300, check=False)
    assert ok.error is None, ok.error


def test_interrupt_mid_sampling_then_next_prompt_runs(comfy_server: ComfyServer, demo_clip: Path) -> None:
    long = _workflow(**{"9": {"steps": 200, "seed": 1234}})
    with comfy_server.client() as client:
        pid = client.queue(long)
        seen = []
        for event in client.events(pid, timeout=300):
            seen.append(event)
            if event["type"] == "progress" and event["data"].get("node") == "9" and event["data"]["value"] >= 2:
                comfy_server.interrupt()
        types = [e["type"] for e in seen]
    assert "execution_interrupted" in types
    last = max(e["data"]["value"] for e in seen if e["type"] == "progress" and e["data"].get("node") == "9")
    assert last < 200
    again = comfy_server.run(_workflow(**{"9": {"steps": 2, "seed": 99}}), timeout=300, check=False)
    assert again.error is None, again.error
    assert any(e["type"] == "execution_success" for e in again.events)


def test_demo_workflow_file_is_valid_json_for_every_node(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    wf = json.loads(WORKFLOW.read_text())
    for node_id, node in wf.items():
        assert node["class_type"] in info, (node_id, node["class_type"])
        spec = info[node["class_type"]]["input"]
        allowed = set(spec.get("required", {})) | set(spec.get("optional", {}))
        assert set(node["inputs"]) <= allowed, (node_id, set(node["inputs"]) - allowed)


@pytest.mark.parametrize("ui_file", sorted((REPO / "graphs").glob("*.ui.json")), ids=lambda p: p.name)
def test_ui_workflow_converts_to_its_api_twin(comfy_server: ComfyServer, ui_file: Path) -> None:
    from workflow_convert import convert

    api_file = ui_file.with_name(ui_file.name.replace(".ui.json", ".api.json"))
    assert api_file.is_file(), f"{ui_file.name} has no API-format twin"
    converted = convert(json.loads(ui_file.read_text()), comfy_server.object_info(), include_meta=False)
    assert converted == json.loads(api_file.read_text())


def test_multiregion_windowed_workflow(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = json.loads((REPO / "graphs" / "editctrl_multiregion.api.json").read_text())
    wf["30"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/multi"}}
    with comfy_server.client() as client:
        pid = client.queue(wf)
        events = client.wait(pid, timeout=600)
    assert "execution_success" in [e["type"] for e in events], events[-1]
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == "9"]
    windows = progress[-1]["max"] // wf["9"]["inputs"]["steps"]
    assert windows >= 2 and progress[-1]["value"] == progress[-1]["max"]
    history = comfy_server.history(pid)
    frames = _png_frames(comfy_server, history, "30")
    _assert_source_outside(frames, wf, demo_clip)


def test_region_mask_of_another_size_is_refused(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = json.loads((REPO / "graphs" / "editctrl_multiregion.api.json").read_text())
    wf["31"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 25, "color": 0}}
    wf["17"]["inputs"].update({"images": ["31", 0], "x": 0, "y": 0})
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is not None
    assert "region 1 mask" in result.error["data"]["exception_message"]


def test_loader_reads_checkpoint_files_from_model_folders(comfy_server: ComfyServer, demo_clip: Path) -> None:
    from safetensors.torch import save_file

    from editctrl_core.loading.models import build_transformer, build_vae, load_preset, save_transformer_official

    preset = load_preset("tiny")
    ckpt_dir = comfy_server.models_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_transformer_official(build_transformer(preset), ckpt_dir / "editctrl-tiny.safetensors", build_vae(preset))
    state = build_transformer(preset).state_dict()
    state["transformer_blocks.0.attn1.to_q.weight"] = torch.zeros(32, 8)
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt_dir / "editctrl-broken.safetensors"))
    choices = comfy_server.object_info("EditCtrlModelLoader")["EditCtrlModelLoader"]["input"]["required"]
    assert "checkpoints/editctrl-tiny.safetensors" in choices["weights"][1]["options"]
    ok = comfy_server.run(_workflow(**{"3": {"preset": "auto", "weights": "checkpoints/editctrl-tiny.safetensors"},
                                       "9": {"steps": 1}}), timeout=300, check=False)
    assert ok.error is None, ok.error
    bad = comfy_server.run(_workflow(**{"3": {"preset": "tiny", "weights": "checkpoints/editctrl-broken.safetensors"},
                                        "9": {"steps": 1}}), timeout=300, check=False)
    assert bad.error is not None
    message = bad.error["data"]["exception_message"]
    assert "transformer_blocks.0.attn1.to_q.weight" in message and "(32, 8)" in message


def test_split_transformer_file_with_separate_vae(comfy_server: ComfyServer, demo_clip: Path) -> None:
    from safetensors.torch import save_file

    from editctrl_core.loading.models import build_transformer, build_vae, load_preset, save_transformer_official

    preset = load_preset("tiny")
    (comfy_server.models_dir / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (comfy_server.models_dir / "vae").mkdir(parents=True, exist_ok=True)
    save_transformer_official(build_transformer(preset), comfy_server.models_dir / "diffusion_models" / "split.safetensors")
    save_file({k: v.contiguous() for k, v in build_vae(preset).state_dict().items()},
              str(comfy_server.models_dir / "vae" / "tiny-vae.safetensors"))
    no_vae = comfy_server.run(_workflow(**{"3": {"preset": "auto", "weights": "diffusion_models/split.safetensors"},
                                           "9": {"steps": 1}}), timeout=300, check=False)
    assert no_vae.error is not None and "vae_weights" in no_vae.error["data"]["exception_message"]
    ok = comfy_server.run(_workflow(**{"3": {"preset": "auto", "weights": "diffusion_models/split.safetensors",
                                             "vae_weights": "tiny-vae.safetensors"}, "9": {"steps": 1}}),
                          timeout=300, check=False)
    assert ok.error is None, ok.error


def test_demo_with_shipped_trained_weights(comfy_server: ComfyServer, demo_clip: Path) -> None:
    layout = {"checkpoints": "editctrl_tiny.safetensors", "loras": "editctrl_tiny_lora.safetensors",
              "editctrl": "editctrl_tiny_local.safetensors"}
    for folder, name in [*layout.items(), ("editctrl", "editctrl_tiny_global.safetensors")]:
        (comfy_server.models_dir / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "weights" / name, comfy_server.models_dir / folder / name)
    wf = json.loads((REPO / "graphs" / "editctrl_demo_trained.api.json").read_text())
    wf["30"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/trained"}}
    result = comfy_server.run(wf, timeout=600, check=False)
    assert result.error is None, result.error
    frames = _png_frames(comfy_server, result.history, "30")
    _assert_source_outside(frames, wf, demo_clip)


def test_edit_box_decode_keeps_source_outside_the_box(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _workflow(**{"9": {"steps": 2, "dilation": 0, "blend": ["31", 0]}, "10": {"region": "edit box",
                                                                                  "halo_tokens": 0}})
    wf["31"] = {"class_type": "EditCtrlBlendSettings",
                "inputs": {"mode": "pixel", "falloff_px": 0.0, "hard_fraction": 0.5, "falloff_tokens": 3}}
    wf["30"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "e2e/box"}}
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    frames = _png_frames(comfy_server, result.history, "30")
    source, _ = read_video(demo_clip)
    expected = np.clip(255.0 * source.numpy(), 0, 255).astype(np.uint8)
    # the rectangle x 40..135, y 32..119 covers token rows 1..3 and columns 1..4: the box is y 32..128, x 32..160
    box = np.zeros((128, 192), dtype=bool)
    box[32:128, 32:160] = True
    assert np.array_equal(frames[:, ~box], expected[:, ~box])
    assert not np.array_equal(frames[:, box], expected[:, box])


def test_native_scheduler_sigmas_drive_the_edit_and_the_node_reports_the_mode(comfy_server: ComfyServer,
                                                                            demo_clip: Path) -> None:
    """SIGMAS from ComfyUI's own LTXVScheduler drive an edit; a SIGMAS of the wrong length is refused; with no SCD
    weights loaded `auto` runs training_free and says so on the node."""
    wf = _workflow(**{"9": {"steps": 4, "sigmas": ["20", 0]}})
    wf["20"] = {"class_type": "LTXVScheduler", "inputs": {"steps": 4, "max_shift": 2.05, "base_shift": 0.95,
                                                          "stretch": True, "terminal": 0.1}}
    wf["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/sigmas"}}
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    report = "".join(result.history["outputs"]["9"]["text"])
    assert "mode training_free: auto chose training_free" in report and "4 denoising passes" in report
    _assert_source_outside(_png_frames(comfy_server, result.history, "17"), wf, demo_clip)
    wf["9"]["inputs"]["steps"] = 5
    bad = comfy_server.run(wf, timeout=300, check=False)
    assert bad.error is not None
    assert "SIGMAS has 5 values but 5 steps need 6" in bad.error["data"]["exception_message"]


def test_modes_that_cannot_run_and_empty_masks_are_said_on_the_node(comfy_server: ComfyServer,
                                                                   demo_clip: Path) -> None:
    empty = _workflow(**{"8": {"mask": ["20", 0]}, "9": {"steps": 2}})
    empty["20"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 192, "height": 128}}
    empty["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "e2e/empty"}}
    result = comfy_server.run(empty, timeout=300, check=False)
    assert result.error is None, result.error
    assert "the mask is empty" in "".join(result.history["outputs"]["8"]["text"])
    assert "the model never ran" in "".join(result.history["outputs"]["9"]["text"])
    source, _ = read_video(demo_clip)
    expected = np.clip(255.0 * source.numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(_png_frames(comfy_server, result.history, "17"), expected)
    layout = {"checkpoints": "editctrl_tiny.safetensors", "editctrl": "editctrl_tiny_local.safetensors"}
    for folder, name in layout.items():
        (comfy_server.models_dir / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "weights" / name, comfy_server.models_dir / folder / name)
    adapters = _workflow(**{"3": {"preset": "auto", "weights": "checkpoints/editctrl_tiny.safetensors"},
                            "9": {"steps": 1, "mode": "training_free", "model": ["21", 0]}})
    adapters["21"] = {"class_type": "EditCtrlAdapterLoader",
                      "inputs": {"model": ["3", 0], "local_adapter": "editctrl_tiny_local.safetensors",
                                 "global_adapter": "(none)"}}
    refused = comfy_server.run(adapters, timeout=300, check=False)
    assert refused.error is not None
    assert "EditCtrl adapters work with the SCD split only" in refused.error["data"]["exception_message"]
