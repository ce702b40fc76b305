"""Training-side precompute CLIs on tiny models: semantic masks and Qwen features; resume, skip, redo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from editctrl_core.edit.masks import pixel_mask_to_token_mask
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import read_video, write_video
from editctrl_core.perception.detection import Detection, Detections
from editctrl_core.perception.object_masks import dilate_mask, objects_to_masks
from editctrl_core.perception.qwen import hidden_states, tiny_qwen_vl
from training import compute_qwen_features, compute_semantic_masks
from training.data import ShapeRule, load_qwen_features
from training.masks import MaskSampler, MaskStrategyConfig, load_object_masks

REPO = Path(__file__).resolve().parents[1]
CLIPS = {"a": (17, 1), "b": (9, 2), "c": (9, 3)}  # id: (frames, seed); 64x96 each


def _box(mask: torch.Tensor) -> list[int]:
    """Tight pixel box [x1, y1, x2, y2] of a [H,W] mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic clips with captions; 'a' and 'b' have box sidecars, 'c' is left to the tiny Qwen."""
    folder = tmp_path_factory.mktemp("clips")
    for sample_id, (frames, seed) in CLIPS.items():
        clip = make_clip(frames, 64, 96, seed=seed)
        write_video(folder / f"{sample_id}.mp4", clip.frames, fps=24)
        (folder / f"{sample_id}.txt").write_text(f"clip {sample_id}: a coloured disc over a texture\n")
        if sample_id != "c":
            last = frames - 1
            boxes = {"0": [{"bbox_2d": _box(clip.mask[0]), "label": "disc"}],
                     str(last): [{"bbox_2d": _box(clip.mask[last]), "label": "disc"}]}
            (folder / f"{sample_id}.boxes.json").write_text(json.dumps(boxes))
    return folder


def _copy_clips(clip_dir: Path, dest: Path, names: tuple[str, ...] | None = None) -> Path:
    """A private copy of (some of) the clip folder, so a test may edit captions and sidecars."""
    dest.mkdir()
    for path in sorted(clip_dir.iterdir()):
        if names is None or path.name in names:
            shutil.copy(path, dest / path.name)
    return dest


def _expected_tokens(clip_dir: Path, sample_id: str, grow_px: int = 0) -> torch.Tensor:
    """Token mask of the sidecar boxes (grown by `grow_px`), computed independently of the CLI."""
    frames = CLIPS[sample_id][0]
    boxes = json.loads((clip_dir / f"{sample_id}.boxes.json").read_text())
    det = Detections(96, 64, {int(k): [Detection("disc", tuple(float(v) for v in items[0]["bbox_2d"]))]
                              for k, items in boxes.items()})
    return pixel_mask_to_token_mask(dilate_mask(objects_to_masks(det, frames, 64, 96)["disc"], grow_px))


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the finished outputs."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}


def _run_masks(clip_dir: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """Run compute_semantic_masks in-process; (exit status, its summary line)."""
    rc = compute_semantic_masks.main(["--clips", str(clip_dir), "--out", str(out), "--qwen", "tiny", "--keyframes",
                                      "2", "--max-new-tokens", "8", *extra])
    return rc, capsys.readouterr().out.strip().splitlines()[-1]


def test_semantic_masks_are_written_in_the_training_format_and_resume(clip_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    clip_dir = _copy_clips(clip_dir, tmp_path / "clips")
    out = tmp_path / "masks"
    rc, line = _run_masks(clip_dir, out, capsys)
    assert rc == 0 and "3 computed, 0 skipped" in line, line

    a = load_object_masks(out / "a.safetensors")
    assert a.names == ["disc"] and tuple(a.masks.shape) == (1, 3, 2, 3)
    assert torch.equal(a.masks[0], _expected_tokens(clip_dir, "a"))
    truth = pixel_mask_to_token_mask(make_clip(17, 64, 96, seed=CLIPS["a"][1]).mask)
    assert bool((a.masks[0] | truth).eq(a.masks[0]).all()), "the object's token mask must cover the object"
    b = load_object_masks(out / "b.safetensors")
    assert b.names == ["disc"] and torch.equal(b.masks[0], _expected_tokens(clip_dir, "b"))
    c = load_object_masks(out / "c.safetensors")  # the tiny random Qwen answers garbage: no objects
    assert c.names == [] and tuple(c.masks.shape) == (0, 2, 2, 3)
    assert json.loads(c.metadata["detections"])["raw"], "the raw Qwen answers are kept for inspection"

    sampler = MaskSampler(MaskStrategyConfig(mode="semantic", semantic_mask_dir=str(out), object_max_area=1.0))
    draw = sampler.sample((3, 2, 3), sample_id="a")
    assert (draw.source, draw.kind) == ("object", "disc") and torch.equal(draw.mask, a.masks[0])

    before = _mtimes(out)
    rc, line = _run_masks(clip_dir, out, capsys)
    assert rc == 0 and "0 computed, 3 skipped" in line, line
    assert _mtimes(out) == before

    # a killed run: b's temp file is half-written and its output missing; a's output is truncated
    (out / "b.safetensors").unlink()
    stale = out / ".b.safetensors.tmp-999999"
    stale.write_bytes(b"\x00" * 100)
    data = (out / "a.safetensors").read_bytes()
    (out / "a.safetensors").write_bytes(data[: len(data) // 3])
    rc, line = _run_masks(clip_dir, out, capsys)
    assert rc == 0 and "2 computed, 1 skipped" in line, line
    assert not stale.exists() and not list(out.glob(".*tmp*"))
    assert torch.equal(load_object_masks(out / "a.safetensors").masks[0], _expected_tokens(clip_dir, "a"))
    assert load_object_masks(out / "b.safetensors").names == ["disc"]

    # other boxes for b only: only b is recomputed
    boxes = json.loads((clip_dir / "b.boxes.json").read_text())
    boxes["0"][0]["label"] = "plate"
    (clip_dir / "b.boxes.json").write_text(json.dumps(boxes))
    c_time = (out / "c.safetensors").stat().st_mtime_ns
    rc, line = _run_masks(clip_dir, out, capsys)
    assert rc == 0 and "1 computed, 2 skipped" in line, line
    assert sorted(load_object_masks(out / "b.safetensors").names) == ["disc", "plate"]
    assert (out / "c.safetensors").stat().st_mtime_ns == c_time


def test_semantic_masks_with_sam_stay_inside_the_boxes(clip_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sam_masks"
    rc, line = _run_masks(clip_dir, out, capsys, "--sam", "tiny-sam2_video", "--shard", "0/3")
    assert rc == 0 and "1 computed" in line, line  # shard 0/3 = clip a
    assert sorted(p.stem for p in out.glob("*.safetensors")) == ["a"]
    a = load_object_masks(out / "a.safetensors")
    assert a.names == ["disc"] and a.metadata["masks_from"] == "tiny-sam2_video"
    assert bool(a.masks[0].any())
    # silhouettes are clipped to the box grown by max(4 px, 10% of its longest side) = 4 px for this small disc
    assert not bool((a.masks[0] & ~_expected_tokens(clip_dir, "a", grow_px=5)).any()), "SAM left its grown box"


def test_semantic_masks_follow_the_training_shape_rule(clip_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shaped"
    rc, line = _run_masks(clip_dir, out, capsys, "--frames", "9", "--height", "32", "--width", "64", "--shard", "0/3")
    assert rc == 0 and "1 computed" in line, line
    a = load_object_masks(out / "a.safetensors")
    assert tuple(a.masks.shape) == (1, 2, 1, 2)
    frames, _ = read_video(clip_dir / "a.mp4")
    shaped, _ = ShapeRule(frames=9, height=32, width=64).apply(frames)
    assert tuple(shaped.shape[:3]) == (9, 32, 64)
    with pytest.raises(SystemExit, match="--categories|categories mode"):
        compute_semantic_masks.main(["--clips", str(clip_dir), "--out", str(out), "--qwen", "tiny",
                                     "--prompt-mode", "categories"])


def test_qwen_features_match_the_tma_path_and_resume(clip_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    clips = _copy_clips(clip_dir, tmp_path / "clips", ("a.mp4", "a.txt", "b.mp4", "b.txt", "c.mp4"))  # c: no caption
    out = tmp_path / "qwen"
    args = ["--clips", str(clips), "--out", str(out), "--qwen", "tiny", "--k-frames", "2"]
    rc = compute_qwen_features.main(args)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 1 and "2 computed, 0 skipped, 1 failed" in line, line
    assert sorted(p.stem for p in out.glob("*.safetensors")) == ["a", "b"]

    frames, _ = ShapeRule().apply(read_video(clips / "a.mp4")[0])
    caption = (clips / "a.txt").read_text().strip()
    expected = hidden_states(tiny_qwen_vl(), frames, caption, k_frames=2, use_cache=False)[0]
    with safe_open(str(out / "a.safetensors"), framework="pt") as f:
        saved = f.get_tensor("hidden_states")
        meta = f.metadata()
    assert saved.dtype == torch.bfloat16 and saved.shape == expected.shape and expected.shape[-1] == 32
    assert torch.equal(saved, expected.to(torch.bfloat16))
    assert meta["caption"] == caption and json.loads(meta["frames"]) == [0, 16]
    states, mask = load_qwen_features(out, "a")
    assert states.shape == expected.shape and bool(mask.all())

    (out / "b.safetensors").unlink()
    (out / ".b.safetensors.tmp-424242").write_bytes(b"partial")
    (clips / "a.txt").write_text("a new caption")
    before = (out / "a.safetensors").stat().st_mtime_ns
    rc = compute_qwen_features.main(args)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 1 and "2 computed, 0 skipped, 1 failed" in line, line
    assert (out / "a.safetensors").stat().st_mtime_ns != before
    with safe_open(str(out / "a.safetensors"), framework="pt") as f:
        assert f.metadata()["caption"] == "a new caption"
    assert not list(out.glob(".*tmp*"))

    (clips / "c.txt").write_text("clip c")
    rc = compute_qwen_features.main(args)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0 and "1 computed, 2 skipped, 0 failed" in line, line

    # the command line users run; everything is done, so it only checks the files
    cli = subprocess.run([sys.executable, "-m", "training.compute_qwen_features", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "0 computed, 3 skipped, 0 failed" in cli.stdout, cli.stdout
