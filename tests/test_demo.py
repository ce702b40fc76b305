"""scripts/demo.py as `bash scripts/demo.sh` runs it: its own headless ComfyUI server, the shipped tiny weights laid
out as model folders (here in a tmp folder), the demo clip or the user's clip with a box or a mask file.

The default demo edits a minority of the tokens and says so; --input keeps the clip's frame count, size, fps and
audio; bad arguments exit 2 with the usage and bad input exits 1 with the reason, before any server starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import read_video, write_video

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo.py"
#: the model folders scripts/demo.sh makes under out/demo-models: folder → shipped file in weights/
LAYOUT = {"checkpoints": ["editctrl_tiny.safetensors"], "loras": ["editctrl_tiny_lora.safetensors"],
          "editctrl": ["editctrl_tiny_local.safetensors", "editctrl_tiny_global.safetensors"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-models")
    for folder, names in LAYOUT.items():
        (root / folder).mkdir()
        for name in names:
            (root / folder / name).symlink_to(REPO / "weights" / name)
    return root


def run_demo(tmp_path: Path, models: Path | None, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(DEMO), "--out", str(tmp_path / "out"), "--server-dir", str(tmp_path / "server")]
    if models is not None:
        cmd += ["--models", str(models)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def printed(out: str, key: str) -> str:
    """The value of the summary line `key: value` (the last one)."""
    found = re.findall(rf"^{re.escape(key)}: (.*)$", out, flags=re.M)
    assert found, f"no '{key}:' line in:\n{out[-3000:]}"
    return found[-1]


def summary_files(out: str) -> dict[str, Path]:
    files = {key: Path(printed(out, key)) for key in ("edited video", "overlay", "frame sheet")}
    for key, path in files.items():
        assert path.is_absolute() and path.is_file(), (key, path)
    return files


def test_default_demo_edits_a_minority_of_tokens_and_writes_three_files(tmp_path: Path, models: Path) -> None:
    done = run_demo(tmp_path, models)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert printed(done.stdout, "mode").startswith("scd ")
    share = float(re.match(r"([\d.]+)% \((\d+) of (\d+) tokens", printed(done.stdout, "tokens computed")).group(1))
    assert 0 < share < 60, share
    assert re.match(r"[\d.]+ s for the run", printed(done.stdout, "time"))
    files = summary_files(done.stdout)
    edited, fps = read_video(files["edited video"])
    assert edited.shape == (25, 128, 192, 3) and fps == 24
    assert read_video(files["overlay"])[0].shape == edited.shape
    with Image.open(files["frame sheet"]) as sheet:
        assert sheet.format == "PNG" and sheet.width > 4 * 192 and 2 * 128 < sheet.height < 3 * 128


def test_input_clip_with_a_box_keeps_frames_size_fps_and_audio(tmp_path: Path, models: Path) -> None:
    clip = tmp_path / "mine.mp4"
    t = np.arange(22050 * 9 // 12) / 22050
    tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    write_video(clip, make_clip(9, 64, 96, seed=5).frames, fps=12, audio=(np.stack([tone, tone]), 22050))
    done = run_demo(tmp_path, models, "--input", str(clip), "--mask-box", "20,10,30,30", "--prompt", "a lawn")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"uploaded: {clip} -> input/mine.mp4" in done.stdout
    assert (tmp_path / "server" / "input" / "mine.mp4").is_file()
    assert float(printed(done.stdout, "tokens computed").split("%")[0]) < 100
    files = summary_files(done.stdout)
    frames, fps = read_video(files["edited video"])
    assert frames.shape == (9, 64, 96, 3) and fps == 12
    import av

    with av.open(str(files["edited video"])) as container:
        assert container.streams.audio, "the clip's audio must be kept"
    source, _ = read_video(clip)
    outside = np.ones((64, 96), dtype=bool)
    outside[:56, :72] = False  # the box (x 20..49, y 10..39), the composite's 8 px feather and a margin
    # beyond the box the source comes back (up to the two h264 encodes: about 0.02 on these tiny textured frames)
    assert float((frames[:, outside] - source[:, outside]).abs().mean()) < 0.05


def test_unknown_argument_exits_2_with_the_usage(tmp_path: Path) -> None:
    done = run_demo(tmp_path, None, "--no-such-option", timeout=60)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "unrecognized arguments: --no-such-option" in done.stderr


def test_bad_input_is_refused_before_the_server_starts(tmp_path: Path) -> None:
    clip = tmp_path / "small.mp4"
    write_video(clip, make_clip(9, 64, 96, seed=1).frames, fps=24)
    done = run_demo(tmp_path, None, "--input", str(clip), "--mask-box", "90,10,20,20", timeout=60)
    assert done.returncode == 1
    assert "--mask-box 90,10,20,20 is outside the 96x64 frame of small.mp4" in done.stderr
    assert "starting ComfyUI" not in done.stdout
    missing = run_demo(tmp_path, None, "--input", str(tmp_path / "nope.mp4"), timeout=60)
    assert missing.returncode == 1 and "nope.mp4: no such file" in missing.stderr
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    junk = run_demo(tmp_path, None, "--input", str(tmp_path / "junk.mp4"), timeout=60)
    assert junk.returncode == 1 and "cannot read it as a video" in junk.stderr
    Image.fromarray(np.zeros((64, 96), dtype=np.uint8)).save(tmp_path / "empty.png")
    empty = run_demo(tmp_path, None, "--input", str(clip), "--mask", str(tmp_path / "empty.png"), timeout=60)
    assert empty.returncode == 1 and "the mask is empty" in empty.stderr
    both = run_demo(tmp_path, None, "--mask-box", "1,1,8,8", "--mask", str(tmp_path / "empty.png"), timeout=60)
    assert both.returncode == 2 and "not allowed with" in both.stderr
