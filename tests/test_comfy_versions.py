"""Behaviour that differs (or does not) between the ComfyUI versions the e2e tests run on (0.3.75 and 0.8.0).

Each test runs once per version through the parametrized `comfy_server` fixture and asserts what that version
actually does, so a change in a new ComfyUI shows up here first:

- V3 combo values: 0.3.75 passes any value to the node; 0.8.0 refuses a value not in the list at validation
  (HTTP 400 `value_not_in_list`) unless the node's own `validate_inputs` takes that input.
- Core `LoadVideo` with a `file` outside the input folder ("../x.mp4" or an absolute path): both versions
  validate only that the file exists (their `LoadVideo.validate_inputs` is `os.path.exists(input_dir / file)`,
  and it takes `file`, so 0.8.0's combo check is skipped for it) and then open it; a missing file is refused
  at validation ("Invalid video file").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from comfy_server import ComfyServer, PromptRejected
from PIL import Image

from editctrl_core.media.video_io import write_video

#: Does core LoadVideo open a file outside the input folder?  (True: it opens it; False: refused at validation.)
LOAD_VIDEO_OPENS_OUTSIDE_INPUT = {"0.3.75": True, "0.8.0": True}
#: Does the server refuse a V3 combo value that is not in the list before the node runs?
VALIDATES_V3_COMBO_VALUES = {"0.3.75": False, "0.8.0": True}

COLOUR = (40, 200, 120)  # the clip's flat colour, to recognise its frames in the output


def _known(table: dict[str, bool], server: ComfyServer) -> bool:
    """The recorded behaviour for this server's version (fails, asking to record it, for a version not listed)."""
    if server.version not in table:
        pytest.fail(f"ComfyUI {server.version}: behaviour not recorded yet; run this test, then add it to the table")
    return table[server.version]


def _load_video_prompt(file: str, prefix: str) -> dict[str, Any]:
    """Core nodes only: LoadVideo(file) → GetVideoComponents → SaveImage."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": file}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def _errors(rejected: PromptRejected, node_id: str) -> list[dict[str, Any]]:
    """The validation errors reported for one node."""
    return rejected.node_errors.get(node_id, {}).get("errors", [])


def test_server_reports_the_version_it_was_started_as(comfy_server: ComfyServer) -> None:
    assert comfy_server.version in ("0.3.75", "0.8.0")
    assert comfy_server.system_stats()["system"]["comfyui_version"] == comfy_server.version
    assert comfy_server.version_info == tuple(int(p) for p in comfy_server.version.split("."))


def test_v3_combo_value_outside_its_list(comfy_server: ComfyServer) -> None:
    """An EditCtrl V3 combo (Mask Ops `operation`) given a value not in its options."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "EditCtrlRectMask", "inputs": {"images": ["1", 0], "x": 0, "y": 0, "width": 8, "height": 8}},
        "3": {"class_type": "EditCtrlMaskOps",
              "inputs": {"mask_a": ["2", 0], "mask_b": ["2", 0], "operation": "xor", "grow_px": 0}},
        "4": {"class_type": "EditCtrlMaskOverlay", "inputs": {"images": ["1", 0], "mask": ["3", 0], "opacity": 0.5}},
    }
    if _known(VALIDATES_V3_COMBO_VALUES, comfy_server):
        with pytest.raises(PromptRejected) as err:
            comfy_server.queue(prompt)
        assert err.value.status == 400
        (error,) = _errors(err.value, "3")
        assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "operation"
        assert "'xor' not in" in error["details"]
    else:
        result = comfy_server.run(prompt, timeout=120, check=False)
        assert result.error is not None and result.error["data"]["node_id"] == "3"
        assert "operation must be one of" in result.error["data"]["exception_message"]


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_load_video_file_outside_the_input_folder(comfy_server: ComfyServer, where: str) -> None:
    """Core LoadVideo given a real mp4 in the server's base dir (outside input/): opened, or refused at validation."""
    outside = comfy_server.base_dir / "outside_input"
    outside.mkdir(exist_ok=True)
    clip = outside / f"clip_{where}.mp4"
    frames = torch.tensor(COLOUR, dtype=torch.float32).div(255).expand(3, 32, 48, 3).contiguous()
    write_video(clip, frames, fps=8)
    assert comfy_server.input_dir not in clip.resolve().parents
    file = str(clip) if where == "absolute" else f"../{outside.name}/{clip.name}"
    assert file not in comfy_server.object_info("LoadVideo")["LoadVideo"]["input"]["required"]["file"][1]["options"]

    prompt = _load_video_prompt(file, f"versions/outside_{where}")
    if _known(LOAD_VIDEO_OPENS_OUTSIDE_INPUT, comfy_server):
        result = comfy_server.run(prompt, timeout=120, check=False)
        assert result.error is None, result.error
        pngs = [p for p in comfy_server.output_files(result.history) if p.suffix == ".png"]
        assert len(pngs) == 3  # every frame of our clip came back
        pixels = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=np.int16)
        assert np.abs(pixels - np.array(COLOUR)).max() <= 8  # h264 rounding, nothing else
    else:
        with pytest.raises(PromptRejected) as err:
            comfy_server.queue(prompt)
        assert _errors(err.value, "1"), err.value.body

    # a path outside input/ that does not exist is refused at validation on every version
    with pytest.raises(PromptRejected) as err:
        comfy_server.queue(_load_video_prompt(file.replace(clip.name, "missing.mp4"), "versions/missing"))
    (error,) = _errors(err.value, "1")
    assert "Invalid video file" in error["details"] or "Invalid video file" in error["message"], error
