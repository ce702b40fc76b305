"""End-to-end: detect → select → SAM → edit (+ TMA tokens) on a real ComfyUI server, with the tiny models."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from comfy_server import ComfyServer, PromptRejected
from PIL import Image

from editctrl_core.edit.blend import feather_mask
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import read_video, write_video
from editctrl_core.perception.detection import Detection, Detections
from editctrl_core.perception.object_masks import dilate_mask, objects_to_masks
from editctrl_core.perception.qwen import tiny_qwen_vl
from editctrl_core.perception.sam import tiny_sam

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "graphs" / "detect_sam_edit.api.json"
CLIP_NAME = "editctrl_demo.mp4"
BOXES = {0: (49.0, 39.0, 95.0, 85.0), 24: (81.0, 67.0, 127.0, 113.0)}  # the disc on keyframes 0 and 24 (node 7)
NODE_IDS = ["EditCtrlQwenVLLoader", "EditCtrlDetectObjects", "EditCtrlDetectionsFromJSON", "EditCtrlSelectObjects",
            "EditCtrlSAMLoader", "EditCtrlSAMRefine", "EditCtrlMaskOps", "EditCtrlTMATokens"]


@pytest.fixture(scope="module")
def demo_clip(comfy_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo clip (moving disc over a texture, with audio) uploaded to the server's input folder."""
    path = tmp_path_factory.mktemp("detect_clip") / CLIP_NAME
    clip = make_clip(25, 128, 192, seed=3)
    t = np.arange(44100) / 44100
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_video(path, clip.frames, fps=24, audio=(np.stack([tone, tone]), 44100))
    comfy_server.upload_image(path)
    return path


def _workflow() -> dict[str, Any]:
    """A fresh copy of the detect → SAM → edit workflow."""
    return json.loads(WORKFLOW.read_text())


def _subset(wf: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    """Only the listed nodes of a workflow."""
    return {k: wf[k] for k in keep}


def _save_mask(wf: dict[str, Any], node_id: str, source: list[Any], prefix: str) -> None:
    """Add MaskToImage + SaveImage nodes that write a MASK output as PNG frames."""
    wf[f"{node_id}m"] = {"class_type": "MaskToImage", "inputs": {"mask": source}}
    wf[node_id] = {"class_type": "SaveImage", "inputs": {"images": [f"{node_id}m", 0], "filename_prefix": prefix}}


def _png_frames(server: ComfyServer, history: dict[str, Any], node: str) -> np.ndarray:
    """The PNGs a node wrote, as uint8 [N,H,W,3]."""
    images = history["outputs"][node]["images"]
    return np.stack([np.array(Image.open(io.BytesIO(server.view(i["filename"], i["subfolder"], i["type"])))
                              .convert("RGB")) for i in images])


def _mask_frames(server: ComfyServer, history: dict[str, Any], node: str) -> torch.Tensor:
    """A saved MASK as float [F,H,W] in 0..1."""
    return torch.from_numpy(_png_frames(server, history, node)[..., 0].astype(np.float32) / 255.0)


def _box_masks() -> torch.Tensor:
    """The disc's box masks over the clip (interpolated between the keyframes, as the nodes do)."""
    det = Detections(192, 128, {k: [Detection("disc", box)] for k, box in BOXES.items()}, num_frames=25)
    return objects_to_masks(det, 25, 128, 192)["disc"]


def _error_message(result: Any) -> str:
    """The exception message of a failed run (fails the test when the run succeeded)."""
    assert result.error is not None, "the run was expected to fail"
    assert result.error["type"] == "execution_error"
    return str(result.error["data"]["exception_message"])


def _ui_text(history: dict[str, Any], node: str) -> str:
    """The text a node showed in its UI."""
    return "\n".join(history["outputs"][node]["text"])


def test_object_info_lists_the_detection_nodes(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    for node in NODE_IDS:
        assert node in info, node
        assert info[node]["category"].startswith("EditCtrl")
    refine = info["EditCtrlSAMRefine"]["input"]
    assert "sam" in refine["optional"] and "detections" in refine["required"]
    assert info["EditCtrlDetectObjects"]["output"] == ["EDITCTRL_DETECTIONS", "IMAGE", "STRING"]
    assert info["EditCtrlTMATokens"]["output"] == ["EDITCTRL_CONDITIONING"]
    models = info["EditCtrlSAMLoader"]["input"]["required"]["model"][1]["options"]
    assert {"tiny-sam", "tiny-sam2", "tiny-sam2_video", "tiny-sam3", "tiny-sam3_video"} <= set(models)


def test_detect_sam_edit_workflow(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _workflow()
    wf["30"] = {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "detect/frames"}}
    _save_mask(wf, "31", ["10", 0], "detect/sam")
    _save_mask(wf, "32", ["14", 2], "detect/edit_mask")
    steps = wf["15"]["inputs"]["steps"]
    result = comfy_server.run(wf, timeout=600, check=False)
    assert result.error is None, result.error
    history = result.history

    progress = [e["data"] for e in result.events if e["type"] == "progress" and e["data"].get("node") == "15"]
    assert [p["value"] for p in progress] == list(range(1, steps + 1))
    videos = [p for p in comfy_server.output_files(history) if p.suffix == ".mp4"]
    assert {p.name.split("_0")[0] for p in videos} == {"detect_edit", "detect_mask_overlay"}
    edited_path = next(p for p in videos if p.name.startswith("detect_edit"))
    edited, fps = read_video(edited_path)
    assert edited.shape == (25, 128, 192, 3) and fps == 24
    import av

    with av.open(str(edited_path)) as container:
        assert len(container.streams.audio) == 1, "the source audio must be carried into the edited video"

    # detection preview: one labelled image per keyframe, and the summary names the object and its boxes
    assert len(history["outputs"]["7"]["images"]) == 2
    assert "objects: disc" in _ui_text(history, "7") and "[81, 67, 127, 113]" in _ui_text(history, "7")
    assert _ui_text(history, "8") == "selected 1 object(s): disc"
    assert "sam2_video" in _ui_text(history, "10") and "25 frames" in _ui_text(history, "10")
    assert "64 -> 72 tokens" in _ui_text(history, "13")

    # SAM: one silhouette per frame, each inside the box grown by the clipping margin
    sam = _mask_frames(comfy_server, history, "31")
    assert sam.shape == (25, 128, 192)
    assert bool((sam.flatten(1).amax(dim=1) > 0.5).all()), "the propagated mask must cover every frame"
    margin = max(4, round(0.1 * 46)) + 1
    grown = dilate_mask(_box_masks(), margin)
    assert float((sam * (1 - grown)).max()) == 0.0, "the SAM silhouette left its dilated box"

    # the edit mask is the silhouette ∩ box, grown by 4 px; beyond its feathered edge the output is the input
    edit_mask = _mask_frames(comfy_server, history, "32")
    assert float((edit_mask * (1 - dilate_mask(_box_masks(), 4))).max()) == 0.0
    frames = _png_frames(comfy_server, history, "30")
    assert frames.shape == (25, 128, 192, 3)
    source, _ = read_video(demo_clip)
    expected = np.clip(255.0 * source.numpy(), 0, 255).astype(np.uint8)
    outside = (feather_mask(edit_mask, wf["17"]["inputs"]["feather_px"]) == 0).numpy()
    assert outside.any() and np.array_equal(frames[outside], expected[outside]), \
        "pixels outside the feathered mask must equal the input"
    inside = (edit_mask > 0.5).numpy()
    assert np.abs(frames[inside].astype(int) - expected[inside].astype(int)).mean() > 1.0, "the region was not edited"


def test_without_sam_the_box_masks_are_used_and_said(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _subset(_workflow(), ["1", "2", "7", "8", "10"])
    del wf["10"]["inputs"]["sam"]
    _save_mask(wf, "31", ["10", 0], "detect/nosam")
    _save_mask(wf, "32", ["8", 0], "detect/boxes")
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    text = _ui_text(result.history, "10")
    assert "no SAM model connected" in text and "box" in text and "disc" in text
    assert "no SAM model connected" in comfy_server.log_text()
    refined = _mask_frames(comfy_server, result.history, "31")
    boxes = _mask_frames(comfy_server, result.history, "32")
    assert torch.equal(refined, boxes)
    assert torch.equal(boxes, _box_masks())


def test_sam_and_qwen_load_from_model_folders(comfy_server: ComfyServer, demo_clip: Path) -> None:
    qwen_dir = comfy_server.models_dir / "LLM" / "tiny-qwen-folder"
    qwen = tiny_qwen_vl("qwen2_5_vl")
    qwen.model.save_pretrained(qwen_dir)
    qwen.processor.save_pretrained(qwen_dir)
    sam_dir = comfy_server.models_dir / "sams" / "tiny-sam2-folder"
    sam = tiny_sam("sam2_video")
    sam.model.save_pretrained(sam_dir)
    sam.processor.save_pretrained(sam_dir)
    info = comfy_server.object_info()
    assert "tiny-qwen-folder" in info["EditCtrlQwenVLLoader"]["input"]["required"]["model"][1]["options"]
    assert "tiny-sam2-folder" in info["EditCtrlSAMLoader"]["input"]["required"]["model"][1]["options"]

    wf = _subset(_workflow(), ["1", "2", "7", "9", "10"])
    wf["9"]["inputs"].update(model="tiny-sam2-folder", mode="image")
    _save_mask(wf, "31", ["10", 0], "detect/sam_image")
    wf["40"] = {"class_type": "EditCtrlQwenVLLoader",
                "inputs": {"model": "tiny-qwen-folder", "dtype": "float32", "device": "cpu", "offload_after_use": True}}
    wf["41"] = {"class_type": "EditCtrlDetectObjects",
                "inputs": {"qwen": ["40", 0], "images": ["2", 0], "prompt_mode": "categories", "categories": "disc",
                           "text": "", "keyframe_count": 2, "keyframe_indices": "", "max_new_tokens": 12,
                           "on_parse_error": "skip keyframe"}}
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    text = _ui_text(result.history, "10")
    assert "SAM sam2 (tiny-sam2-folder)" in text, text
    sam_mask = _mask_frames(comfy_server, result.history, "31")
    assert sam_mask.shape == (25, 128, 192)
    assert float((sam_mask * (1 - dilate_mask(_box_masks(), 6))).max()) == 0.0

    detect = _ui_text(result.history, "41")
    assert "keyframes [0, 24]" in detect and "warning: keyframe 0" in detect and "Model answer was" in detect
    assert len(result.history["outputs"]["41"]["images"]) == 2
    progress = [e["data"] for e in result.events if e["type"] == "progress" and e["data"].get("node") == "41"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 2), (2, 2)]

    bad = _subset(wf, ["1", "2", "40", "41"])
    bad["40"]["inputs"]["model"] = "../LLM/tiny-qwen-folder"
    if comfy_server.version_info >= (0, 8):  # ComfyUI 0.8 checks combo values when the prompt is queued
        with pytest.raises(PromptRejected, match="Value not in list: model: '../LLM/tiny-qwen-folder'"):
            comfy_server.run(bad, timeout=300, check=False)
    else:
        message = _error_message(comfy_server.run(bad, timeout=300, check=False))
        assert "not a folder name inside models/LLM" in message


def test_unparseable_model_answer_shows_the_text(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _subset(_workflow(), ["1", "2", "12"])
    wf["41"] = {"class_type": "EditCtrlDetectObjects",
                "inputs": {"qwen": ["12", 0], "images": ["2", 0], "prompt_mode": "text", "categories": "",
                           "text": "the disc", "keyframe_count": 1, "keyframe_indices": "12", "max_new_tokens": 10,
                           "on_parse_error": "error"}}
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "keyframe 12" in message and "Model answer was:" in message
    assert "max_new_tokens" in message and "Detections From JSON" in message

    typed = _subset(_workflow(), ["1", "2", "7"])
    typed["7"]["inputs"]["answer"] = "I think there is a round thing near the middle."
    message = _error_message(comfy_server.run(typed, timeout=300, check=False))
    assert "keyframe 0" in message and "round thing near the middle" in message and "bbox_2d" in message


def test_selection_errors_name_the_available_objects(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _subset(_workflow(), ["1", "2", "7", "8"])
    wf["8"]["inputs"]["selection"] = "cat"
    _save_mask(wf, "31", ["8", 0], "detect/sel")
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "'cat'" in message and "available" in message and "disc" in message

    wf["8"]["inputs"]["selection"] = " "
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "selection is empty" in message and "disc" in message

    wf["8"]["inputs"].update(select_by="index", selection="3")
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "index 3" in message and "disc" in message

    wf["7"]["inputs"]["answer"] = "[]"
    wf["8"]["inputs"].update(select_by="all", selection="")
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "no objects were detected" in message

    wf["7"]["inputs"].update(answer='```json\n[{"bbox_2d": [245, 305, 495, 664], "label": "disc"},]\n```',
                             coordinates="relative 0-1000 (Qwen3-VL)", keyframes="0")
    wf["8"]["inputs"].update(select_by="text", selection="the round disc")
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    mask = _mask_frames(comfy_server, result.history, "31")
    expected = objects_to_masks(Detections(192, 128, {0: [Detection("disc", (47.04, 39.04, 95.04, 84.992))]}),
                                25, 128, 192)["disc"]
    assert torch.equal(mask, expected)


def test_mask_ops_combine_and_grow(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _subset(_workflow(), ["1", "2", "7", "8"])
    wf["20"] = {"class_type": "EditCtrlRectMask", "inputs": {"images": ["2", 0], "x": 0, "y": 0, "width": 80,
                                                             "height": 128}}
    wf["21"] = {"class_type": "EditCtrlMaskOps", "inputs": {"mask_a": ["8", 0], "operation": "subtract",
                                                            "grow_px": -2, "mask_b": ["20", 0]}}
    _save_mask(wf, "31", ["21", 0], "detect/ops")
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    got = _mask_frames(comfy_server, result.history, "31")
    rect = torch.zeros(25, 128, 192)
    rect[:, :, :80] = 1
    expected = dilate_mask(_box_masks() * (1 - rect), -2)
    assert torch.equal(got, expected)

    del wf["21"]["inputs"]["mask_b"]
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "needs mask_b" in message


def test_tma_reuses_cached_qwen_hidden_states(comfy_server: ComfyServer, demo_clip: Path) -> None:
    wf = _subset(_workflow(), ["1", "2", "4", "5", "12", "13"])
    wf["13"]["inputs"]["caption"] = f"a caption only this test uses {uuid.uuid4().hex}"
    wf["40"] = {"class_type": "PreviewAny", "inputs": {"source": ["13", 0]}}
    first = comfy_server.run(wf, timeout=300, check=False)
    assert first.error is None, first.error
    assert "hidden states computed" in _ui_text(first.history, "13")
    wf["13"]["inputs"]["seed"] = 7
    second = comfy_server.run(wf, timeout=300, check=False)
    assert second.error is None, second.error
    text = _ui_text(second.history, "13")
    assert "hidden states cached" in text and "seed 7" in text and "64 -> 72 tokens" in text

    wf["13"]["inputs"]["task"] = 5
    message = _error_message(comfy_server.run(wf, timeout=300, check=False))
    assert "task 5" in message and "2 task(s)" in message


def _peak_rss_reset(pid: int) -> int | None:
    """Reset a process's peak RSS and return its current RSS in bytes (None where the kernel does not allow it)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return _status_bytes(pid, "VmRSS")
    except OSError:
        return None


def _status_bytes(pid: int, key: str) -> int:
    """One memory line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_ten_thousand_boxes_are_capped_and_said(comfy_server: ComfyServer, demo_clip: Path) -> None:
    """10,000 boxes: the JSON node keeps 256 objects and says so; the masks are their union; memory stays flat."""
    corners = [(x, y) for x in range(100) for y in range(100)]
    wf = _subset(_workflow(), ["1", "2", "7", "8", "10"])
    del wf["10"]["inputs"]["sam"]
    wf["7"]["inputs"].update(keyframes="0, 24", answer=json.dumps(
        [{"bbox_2d": [x, y, x + 4, y + 4], "label": "disc"} for x, y in corners]))
    _save_mask(wf, "31", ["10", 0], "detect/many_nosam")
    _save_mask(wf, "32", ["8", 0], "detect/many_select")
    pid = comfy_server.proc.pid
    before = _peak_rss_reset(pid)
    result = comfy_server.run(wf, timeout=600, check=False)
    assert result.error is None, result.error
    history = result.history

    text = _ui_text(history, "7")
    assert "warning: kept 256 of 10000 objects (at most 256" in text, text[:2000]
    assert "dropped 9744: disc#257, disc#258," in text and "prompt_mode" in text
    assert "20000 detection(s)" not in text and "2048 detection(s)" not in text and "512 detection(s)" in text
    assert _ui_text(history, "10").startswith("no SAM model connected: using the detection boxes as masks")
    assert "kept 256 of 10000 objects" in comfy_server.log_text()

    # the leftmost 256 boxes (by centre, then top to bottom): x = 0 and 1 for every y, x = 2 for y < 56
    expected = torch.zeros(25, 128, 192)
    for x, y in sorted(corners)[:256]:
        expected[:, y:y + 4, x:x + 4] = 1
    assert torch.equal(_mask_frames(comfy_server, history, "32"), expected)
    assert torch.equal(_mask_frames(comfy_server, history, "31"), expected)
    if before is None:
        print("\nserver peak RSS not measured: /proc/<pid>/clear_refs is not writable here")
        return
    growth = (_status_bytes(pid, "VmHWM") - before) / 2**20
    per_object = 25 * 128 * 192 * 4 / 2**20
    print(f"\nserver peak RSS grew {growth:.0f} MiB over the 10,000-box prompt (one mask: {per_object:.1f} MiB; "
          f"a mask per object before selection: {10000 * per_object / 1024:.0f} GiB)")
    assert growth < 512, "the server's memory must not grow with the number of boxes"


def _from_json(answer: str, keyframes: str = "0", sam: bool = False) -> dict[str, Any]:
    """Load Video → Detections From JSON (→ SAM Refine with the tiny SAM) with this answer."""
    wf = _subset(_workflow(), ["1", "2", "7", "9", "10"] if sam else ["1", "2", "7"])
    wf["7"]["inputs"].update(answer=answer, keyframes=keyframes)
    return wf


SAVED = {"width": 192, "height": 128, "num_frames": 25, "family": "qwen2_5_vl",
         "frames": {"0": [{"label": "disc", "box": [49.0, 39.0, 95.0, 85.0], "score": None}]}}


def _saved_text(frames: dict[str, Any] | None = None, **changes: Any) -> str:
    """A saved detections value as JSON text, with top-level keys (or the frames) replaced."""
    return json.dumps({**SAVED, **changes, "frames": SAVED["frames"] if frames is None else frames})


@pytest.mark.parametrize(("answer", "says"), [
    (_saved_text(width=0), "the saved detections are malformed: 'width' is 0; write a whole number >= 1"),
    (_saved_text(frames={"0": [{"label": "disc", "box": [49, 39, 95, float("nan")], "score": None}]}),
     "keyframe 0, detection 0 ('disc') has box [49, 39, 95, NaN] with a value that is not a finite number"),
    (_saved_text(frames={"0": [{"label": "disc", "box": [95, 39, 49, 85], "score": None}]}),
     "of size -46 x 46; boxes need x2 > x1 and y2 > y1"),
    (_saved_text(frames={"30": []}, num_frames=None), "keyframe 30 but the clip has only 25 frames"),
    ("[" * 5_000_000, "the text is 5,000,000 characters long; at most 1,000,000 are read"),
    ("[" * 20_000 + "]" * 20_000, "the JSON nests more than 32 levels deep"),
    ('[{"bbox_2d": [49, 39, 95, NaN], "label": "disc"}]',
     "keyframe 0: item 'disc': \"bbox_2d\" is [49, 39, 95, NaN], which holds a value that is not a finite number"),
])
def test_malformed_json_gets_the_nodes_message(comfy_server: ComfyServer, demo_clip: Path, answer: str,
                                               says: str) -> None:
    """Each malformed input stops at the JSON node with its message and an example of the right form."""
    result = comfy_server.run(_from_json(answer), timeout=300, check=False)
    message = _error_message(result)
    assert result.error["data"]["node_id"] == "7", result.error["data"]
    assert message.startswith("EditCtrl Detections From JSON: ") and says in message, message[:1000]
    assert '"bbox_2d": [120, 80, 260, 240]' in message or '"box": [120, 80, 260, 240]' in message
    assert "RecursionError" not in result.error["data"]["exception_type"]


def test_negative_keyframe_stops_at_the_json_node_and_the_server_goes_on(comfy_server: ComfyServer,
                                                                       demo_clip: Path) -> None:
    """Keyframe -3 used to pass and fail as an IndexError in SAM Refine; now the JSON node refuses it, and the next
    good prompt runs."""
    bad = _from_json(_saved_text(frames={"-3": SAVED["frames"]["0"]}), sam=True)
    _save_mask(bad, "31", ["10", 0], "detect/negative_keyframe")
    result = comfy_server.run(bad, timeout=300, check=False)
    message = _error_message(result)
    assert result.error["data"]["node_id"] == "7" and result.error["data"]["exception_type"].endswith("ValueError")
    assert "keyframe -3; keyframes count from 0 (the first frame)" in message and '"frames": {"0": [' in message

    good = _from_json(_saved_text(frames={"3": [{"label": "disc", "box": [50.0, 40.0, 96.0, 86.0], "score": None}]}),
                      sam=True)
    _save_mask(good, "31", ["10", 0], "detect/after_errors")
    result = comfy_server.run(good, timeout=300, check=False)
    assert result.error is None, result.error
    mask = _mask_frames(comfy_server, result.history, "31")
    assert mask.shape == (25, 128, 192) and float(mask[3].sum()) > 0
    box = objects_to_masks(Detections(192, 128, {3: [Detection("disc", (50.0, 40.0, 96.0, 86.0))]}), 25, 128,
                           192)["disc"]
    assert float((mask * (1 - dilate_mask(box, 6))).max()) == 0.0
