"""Headless use as the README shows it: `comfy run --workflow` against a running server, and scripts/batch_edit.py
editing a folder of clips over the HTTP API of two real servers on this machine (progress, summary, failures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from comfy_server import ComfyServer

from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import read_video, write_video

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "graphs" / "editctrl_demo.api.json"


def _small_workflow(tmp_path: Path) -> Path:
    """The demo workflow at one step with a rectangle inside a 64×96 clip."""
    wf = json.loads(WORKFLOW.read_text())
    wf["7"]["inputs"].update({"x": 16, "y": 16, "width": 32, "height": 32})
    wf["9"]["inputs"]["steps"] = 1
    path = tmp_path / "small.api.json"
    path.write_text(json.dumps(wf))
    return path


def _clips(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"clip{i}.mp4"
        t = np.arange(22050) / 22050
        tone = (0.2 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32)
        write_video(path, make_clip(9, 64, 96, seed=i).frames, fps=24, audio=(np.stack([tone, tone]), 22050))
        paths.append(path)
    return paths


def _home(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def test_comfy_run_queues_a_workflow_and_waits(comfy_server: ComfyServer, tmp_path: Path) -> None:
    clip = _clips(tmp_path / "clips", 1)[0]
    comfy_server.upload_image(clip)
    wf = json.loads(_small_workflow(tmp_path).read_text())
    wf["1"]["inputs"]["file"] = clip.name
    wf["13"]["inputs"]["filename_prefix"] = "comfy_run/edit"
    path = tmp_path / "run.api.json"
    path.write_text(json.dumps(wf))
    comfy = Path(sys.executable).with_name("comfy")
    done = subprocess.run([str(comfy), "--skip-prompt", "--no-enable-telemetry", "run", "--workflow", str(path),
                           "--wait", "--host", "127.0.0.1", "--port", str(comfy_server.port), "--timeout", "300"],
                          env=_home(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    made = list((comfy_server.output_dir / "comfy_run").glob("edit*.mp4"))
    assert made and read_video(made[0])[0].shape == (9, 64, 96, 3)


def test_batch_script_edits_a_folder_on_two_servers(comfy_server: ComfyServer, tmp_path: Path) -> None:
    clips = _clips(tmp_path / "clips", 3)
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "edited"
    with ComfyServer(tmp_path / "second", comfy_server.comfy_dir, python=comfy_server.python) as second:
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "batch_edit.py"), "--workflow", str(_small_workflow(tmp_path)),
             "--clips", str(tmp_path / "clips"), "--out", str(out), "--server", f"127.0.0.1:{comfy_server.port}",
             "--server", f"127.0.0.1:{second.port}", "--prompt", "an empty lawn", "--prompt-node", "5"],
            capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log  # one clip is broken
    assert "summary: 3 of 4 edited" in log
    assert "FAILED broken.mp4" in log and "broken.mp4" in log.split("summary:")[1]
    assert f"127.0.0.1:{comfy_server.port}" in log and f"127.0.0.1:{second.port}" in log
    assert "node 9 1/1" in log  # progress from the sampler node
    for clip in clips:
        edited = [p for p in out.glob(f"{clip.stem}__edit*.mp4")]
        assert edited, f"no edited video for {clip.name}: {sorted(p.name for p in out.iterdir())}"
        frames, fps = read_video(edited[0])
        assert frames.shape == (9, 64, 96, 3) and fps == 24


def test_batch_script_refuses_bad_arguments(tmp_path: Path) -> None:
    ui = REPO / "graphs" / "editctrl_demo.ui.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "batch_edit.py"), "--workflow", str(ui),
                           "--clips", str(tmp_path), "--out", str(tmp_path / "o"), "--server", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not an API-format workflow" in done.stderr
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "batch_edit.py"), "--workflow", str(WORKFLOW),
                           "--clips", str(tmp_path), "--out", str(tmp_path / "o"), "--server", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no clips" in done.stderr
