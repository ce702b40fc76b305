"""Tiny Qwen-VL end to end: real generate() + parser + mapping, forced answers, hidden-state cache, local loading."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from editctrl_core.perception.detection import DetectionParseError, DetectionTruncatedWarning, parse_grounding_answer
from editctrl_core.perception.qwen import (
    HiddenStateCache,
    QwenLoadError,
    QwenVL,
    batch_hidden_states,
    detect,
    evenly_spaced,
    hidden_states,
    load_qwen_vl,
    tiny_qwen_vl,
)


class ForceText(LogitsProcessor):
    """Forces generate() to emit the token ids of a fixed answer, then end-of-turn."""

    def __init__(self, token_ids: list[int], eos_id: int) -> None:
        """Remember the answer's token ids and the id to emit after them."""
        self.token_ids = token_ids
        self.eos_id = eos_id
        self.prompt_length: int | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Put all probability on the next answer token."""
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_length
        self.steps += 1
        target = self.token_ids[step] if step < len(self.token_ids) else self.eos_id
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target] = 0.0
        return forced


def _forcer(qwen: QwenVL, answer: str) -> ForceText:
    """A ForceText for `answer` in this model's tokenizer."""
    tok = qwen.processor.tokenizer
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == answer
    return ForceText(ids, qwen.model.generation_config.eos_token_id)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread (no thread hand-off on a busy 2-core CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qwen25() -> QwenVL:
    """The tiny Qwen2.5-VL preset (seeded)."""
    return tiny_qwen_vl("qwen2_5_vl", seed=0)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """A 9-frame 60x90 ComfyUI IMAGE batch."""
    return torch.rand(9, 60, 90, 3, generator=torch.Generator().manual_seed(0))


def test_random_weights_generate_and_parse_consistently(qwen25: QwenVL, frames: torch.Tensor) -> None:
    """generate() runs on the tiny model; whatever it says is parsed (or reported) exactly as the parser would."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = detect(qwen25, frames, keyframes=[0, 8], max_new_tokens=6, on_error="skip")
    print(f"\ntiny Qwen2.5-VL detect, 2 keyframes x 6 new tokens: {time.perf_counter() - start:.2f}s")
    assert result.keyframes == [0, 8] and (result.width, result.height, result.num_frames) == (90, 60, 9)
    for k in (0, 8):
        assert result.raw[k]
        try:
            parse_grounding_answer(result.raw[k])
        except DetectionParseError:
            assert result.frames[k] == []
            assert any(f"keyframe {k}" in str(w.message) for w in caught)
    if any(result.frames[k] == [] for k in (0, 8)):
        with pytest.raises(DetectionParseError, match="keyframe"):
            detect(qwen25, frames, keyframes=[0, 8], max_new_tokens=6)


def test_forced_answer_through_generate_maps_with_image_grid(qwen25: QwenVL, frames: torch.Tensor) -> None:
    """A forced Qwen2.5-VL answer goes through generate(), the parser and the grid mapping for each keyframe."""
    answer = '```json\n[{"bbox_2d": [14, 28, 70, 56], "label": "cat"}, {"bbox_2d": [0, 0, 200, 7], "label": "sky"}]\n```'
    forcer = _forcer(qwen25, answer)
    start = time.perf_counter()
    result = detect(qwen25, frames, keyframes=[8, 0], max_new_tokens=len(forcer.token_ids) + 4,
                    logits_processor=forcer)
    print(f"\ntiny Qwen2.5-VL forced detect, 2 keyframes x {forcer.steps} steps: {time.perf_counter() - start:.2f}s")
    assert forcer.steps == len(forcer.token_ids) + 1
    assert result.raw == {0: answer, 8: answer}
    sx, sy = 90 / (6 * 14), 60 / (4 * 14)
    for k in (0, 8):
        got = [(d.label, d.box) for d in result.frames[k]]
        assert [g[0] for g in got] == ["cat", "sky"]
        assert got[0][1] == pytest.approx((14 * sx, 28 * sy, 70 * sx, 56 * sy))
        assert got[1][1] == pytest.approx((0.0, 0.0, 90.0, 7 * sy))


def test_qwen3_forced_truncated_answer_keeps_complete_items() -> None:
    """Qwen3-VL relative coordinates; an answer cut by max_new_tokens keeps its complete items and warns."""
    qwen3 = tiny_qwen_vl("qwen3_vl", seed=0)
    image = torch.rand(1, 50, 100, 3, generator=torch.Generator().manual_seed(1))
    answer = '[{"bbox_2d": [100, 200, 500, 1000], "label": "dog"}, {"bbox_2d": [1, 2, 3, 4], "label": "x"}]'
    forcer = _forcer(qwen3, answer)
    cut = answer.index(', {"bbox_2d": [1') + 12
    with pytest.warns(DetectionTruncatedWarning):
        result = detect(qwen3, image, keyframes=[0], max_new_tokens=cut, logits_processor=forcer)
    assert result.raw[0] == answer[:cut]
    assert [(d.label, d.box) for d in result.frames[0]] == [("dog", pytest.approx((10.0, 10.0, 50.0, 50.0)))]


def test_hidden_states_cache_avoids_second_forward(qwen25: QwenVL, frames: torch.Tensor, tmp_path: Path) -> None:
    """Same frames + caption hit the cache (no forward); a new caption runs again; the disk cache survives."""
    calls: list[int] = []
    handle = qwen25.model.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        cache = HiddenStateCache(max_items=4, cache_dir=tmp_path)
        start = time.perf_counter()
        first = hidden_states(qwen25, frames, "a red car", k_frames=4, cache=cache)
        print(f"\ntiny Qwen2.5-VL hidden states over 4 frames: {time.perf_counter() - start:.2f}s")
        assert first.shape[0] == 1 and first.shape[2] == qwen25.hidden_size and first.shape[1] > 4 * 6
        again = hidden_states(qwen25, frames, "a red car", k_frames=4, cache=cache)
        assert len(calls) == 1 and torch.equal(again, first)
        other = hidden_states(qwen25, frames, "a blue car", k_frames=4, cache=cache)
        assert len(calls) == 2 and not torch.equal(other, first)
        fresh = HiddenStateCache(cache_dir=tmp_path)
        from_disk = hidden_states(qwen25, frames, "a red car", k_frames=4, cache=fresh)
        assert len(calls) == 2 and torch.equal(from_disk, first) and fresh.hits == 1
        recomputed = hidden_states(qwen25, frames, "a red car", k_frames=4, use_cache=False)
        assert len(calls) == 3 and torch.allclose(recomputed, first, atol=1e-6)
        changed = frames.clone()
        changed[8] = 1.0 - changed[8]
        hidden_states(qwen25, changed, "a red car", k_frames=4, cache=cache)
        assert len(calls) == 4
        batch, mask = batch_hidden_states(qwen25, [frames, frames[:1]], ["a red car", "a red car"], cache=cache)
        assert batch.shape[0] == 2 and mask[0].all() and mask[1].sum() < mask[0].sum()
        assert torch.equal(batch[0], first[0])
    finally:
        handle.remove()
    assert evenly_spaced(9, 4) == [0, 3, 5, 8] and evenly_spaced(2, 4) == [0, 1] and evenly_spaced(5, 1) == [0]


def test_load_from_local_folder_matches_and_unload(qwen25: QwenVL, frames: torch.Tensor, tmp_path: Path) -> None:
    """A saved tiny model loads back from its folder offline and computes the same states; unload frees it."""
    folder = tmp_path / "Qwen2.5-VL-tiny"
    qwen25.model.save_pretrained(folder)
    qwen25.processor.save_pretrained(folder)
    loaded = load_qwen_vl(folder, device="cpu", dtype="float32")
    assert loaded.family == "qwen2_5_vl" and loaded.name == "Qwen2.5-VL-tiny" and loaded.patch_size == 14
    ours = hidden_states(qwen25, frames, "x", use_cache=False)
    theirs = hidden_states(loaded, frames, "x", use_cache=False)
    assert torch.allclose(ours, theirs, atol=1e-5)
    loaded.offload()
    assert torch.allclose(hidden_states(loaded, frames, "x", use_cache=False), ours, atol=1e-5)
    loaded.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        hidden_states(loaded, frames, "x", use_cache=False)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(RuntimeError, match="llama"):
        load_qwen_vl(folder)


def test_pickle_only_folder_is_refused_with_the_conversion(qwen25: QwenVL, frames: torch.Tensor,
                                                           tmp_path: Path) -> None:
    """A Qwen folder with only pytorch_model.bin is refused unread; the command in the message makes it loadable."""
    folder = tmp_path / "Qwen2.5-VL-pickled"
    folder.mkdir()
    qwen25.model.config.save_pretrained(folder)
    qwen25.model.generation_config.save_pretrained(folder)
    qwen25.processor.save_pretrained(folder)
    torch.save(qwen25.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(QwenLoadError) as info:
        load_qwen_vl(folder, dtype="float32")
    message = str(info.value)
    assert "only pickle weights (pytorch_model.bin)" in message and "unpickling a file can run code" in message
    command = re.search(r'python -c "(.*?)"', message).group(1)
    assert "Qwen2_5_VLForConditionalGeneration.from_pretrained" in command
    subprocess.run([sys.executable, "-c", command], check=True, capture_output=True, timeout=300)
    loaded = load_qwen_vl(folder, dtype="float32")
    ours = hidden_states(qwen25, frames, "x", use_cache=False)
    assert torch.allclose(hidden_states(loaded, frames, "x", use_cache=False), ours, atol=1e-5)

    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 a broken pickle that torch.load would choke on")
    again = load_qwen_vl(folder, dtype="float32")
    assert torch.allclose(hidden_states(again, frames, "x", use_cache=False), ours, atol=1e-5)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").rename(folder / "weights.pt")
    with pytest.raises(QwenLoadError, match=r"only pickle weights \(weights\.pt\)"):
        load_qwen_vl(folder)
