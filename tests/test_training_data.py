"""Training data: clips + captions → shape rule → cached latents/text embeddings keyed by content hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.loading.models import build_vae, load_preset
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import write_video
from training.data import CachedDataset, DataError, Encoders, ShapeRule, discover_clips, precompute


def _clip(path: Path, frames: int, h: int, w: int, seed: int = 0) -> Path:
    write_video(path, make_clip(frames, h, w, seed=seed).frames)
    return path


def test_captions_from_sidecar_json_and_csv(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.txt").write_text("a red car\n")
    (tmp_path / "b.target.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="no caption for b.mp4"):
        discover_clips(tmp_path)
    (tmp_path / "captions.json").write_text(json.dumps([{"file": "b.mp4", "caption": "a dog"}]))
    specs = discover_clips(tmp_path)
    assert [(s.sample_id, s.caption, s.target is not None) for s in specs] == [("a", "a red car", False),
                                                                             ("b", "a dog", True)]
    csv = tmp_path / "other.csv"
    csv.write_text("video,text\na.mp4,first\nb.mp4,second\n")
    assert [s.caption for s in discover_clips(tmp_path, csv)] == ["first", "second"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,words\na.mp4,x\n")
    with pytest.raises(DataError, match="needs a file/video column"):
        discover_clips(tmp_path, bad)


def test_shape_rule_produces_valid_ltx_shapes() -> None:
    frames = torch.rand(30, 100, 150, 3)
    out, note = ShapeRule(frames=25, height=64, width=96).apply(frames)
    assert tuple(out.shape) == (25, 64, 96, 3)
    assert "30 frames 100x150 -> 25 frames 64x96" in note
    out, note = ShapeRule(frames=121).apply(frames)
    assert tuple(out.shape) == (25, 96, 128, 3) and "crop top=2 left=11" in note
    out, _ = ShapeRule(frames=121, frame_stride=2).apply(frames)
    assert out.shape[0] == 9 and torch.equal(out[1], frames[2, 2:98, 11:139])
    assert "8n+1" in ShapeRule().describe()


def test_precompute_caches_by_content_and_skips_finished(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    clips = tmp_path / "clips"
    clips.mkdir()
    _clip(clips / "one.mp4", 20, 70, 100)
    _clip(clips / "two.mp4", 17, 64, 96, seed=1)
    (clips / "one.txt").write_text("a disc")
    (clips / "two.txt").write_text("a square")
    preset = load_preset("tiny")
    enc = Encoders(build_vae(preset), build_tiny_text_encoder(), "tiny-test")
    rule = ShapeRule(frames=17, height=64, width=96)
    files, stats = precompute(discover_clips(clips), rule, enc, tmp_path / "cache")
    assert stats == {"encoded": 2, "skipped": 0}
    data = CachedDataset(files)
    assert [s.sample_id for s in data.samples] == ["one", "two"]
    s = data[0]
    assert tuple(s.latents.shape) == (16, 3, 2, 3) and torch.equal(s.latents, s.target)
    assert s.fill is not None and s.fill.shape == s.latents.shape
    caption = enc.text.encode(["a disc"])
    assert torch.equal(s.text_embeds, caption.embeds[0]) and torch.equal(s.text_mask, caption.mask[0])
    again, stats = precompute(discover_clips(clips), rule, enc, tmp_path / "cache")
    assert stats == {"encoded": 0, "skipped": 2} and again == files
    (clips / "two.txt").write_text("a blue square")
    changed, stats = precompute(discover_clips(clips), rule, enc, tmp_path / "cache")
    assert stats == {"encoded": 1, "skipped": 1} and changed[0] == files[0] and changed[1] != files[1]
    _, stats = precompute(discover_clips(clips), ShapeRule(frames=9, height=64, width=96), enc, tmp_path / "cache")
    assert stats["encoded"] == 2
    assert not list((tmp_path / "cache").glob(".*tmp*"))
