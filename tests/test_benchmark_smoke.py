"""The speed benchmark runs end to end on the tiny preset (so it cannot rot), and the cross-edit caches it measures
(prepared steps, CUDA-graph buffers, the encoder output) give exactly the results of preparing every edit afresh."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.edit_speed import (  # noqa: E402
    comfy_tree,
    edit_context,
    load_product,
    parse_args,
    random_conditioning,
    report,
    sized_mask,
)
from editctrl_core.edit.blend import BlendSettings  # noqa: E402
from editctrl_core.edit.fast_decode import ENCODER_CACHE, STEP_CACHE  # noqa: E402
from editctrl_core.edit.sampler import SamplerSettings, sample_edit  # noqa: E402
from editctrl_core.edit.scd import SCDModel, SCDOptions  # noqa: E402
from editctrl_core.loading.models import build_transformer, load_preset  # noqa: E402

RECORD_NUMBERS = ("mask_fraction", "ms_per_step", "setup_s", "denoise_s", "whole_edit_s")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_benchmark_runs_on_the_tiny_preset(tmp_path):
    out = tmp_path / "docs"
    argv = ["--preset", "tiny", "--device", "cpu", "--steps", "2", "--frames", "9", "--height", "128",
            "--width", "192", "--long-frames", "17", "--masks", "0.1", "--cfg-masks", "0.1",
            "--native-repeat", "1", "--budget-s", "600", "--out", str(out)]
    parse_args(argv)
    # as a user runs it: its own process, which forks a fresh child per job. Forking a process whose OpenMP team
    # already ran (this pytest process, with OMP_NUM_THREADS > 1) can deadlock the child in libgomp, so the
    # benchmark's parent starts clean with one thread, as on the GPU machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "edit_speed.py"), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((out / "benchmarks.json").read_text())
    assert (out / "benchmarks.md").read_text() == report(doc)
    assert not [line for line in doc["log"] if "JOB FAILED" in line], doc["log"]
    records = doc["records"]
    seen = {(r["mode"], r["kind"], r["cfg"]) for r in records}
    assert seen >= {(m, k, c) for m in ("scd", "training_free", "full") for k in ("cold", "warm") for c in (False, True)}
    for r in records:
        for key in RECORD_NUMBERS:
            assert _finite(r[key]), (key, r)
        assert isinstance(r["cold"], bool) and isinstance(r["cfg"], bool) and r["card"]
        assert r["finite"] and r["edit_tokens"] > 0
        assert r["setup_s"] <= r["denoise_s"] and r["whole_edit_s"] > r["denoise_s"]
        assert "peak_gb" in r  # None on the CPU
    assert {r["kind"] for r in records if r["mode"] != "full"} == {"cold", "warm", "refill"}
    long_clip = doc["long_clip"]
    assert {c["mode"] for c in long_clip} == {"scd", "training_free"}
    for c in long_clip:
        assert c["frames"] == 17 and _finite(c["denoise_s"]) and "peak_gb" in c
    assert {t["target"] for t in doc["targets"]}
    native = doc["comfy_native"]
    if comfy_tree(None) is None:
        pytest.skip("ComfyUI 0.8.0 tree absent: native baseline not checked")
    assert native["version"] == "0.8.0"
    for key in ("ms_per_step_video_only", "ms_per_step_audio_5s"):
        assert _finite(native[key]) and native[key] > 0
    for r in records:
        assert _finite(r["denoise_speedup_vs_comfy_native"]) and _finite(r["whole_edit_speedup_vs_comfy_native"])


@pytest.fixture()
def cached_on_cpu():
    STEP_CACHE.clear()
    ENCODER_CACHE.clear()
    STEP_CACHE.on_cpu = True
    yield
    STEP_CACHE.on_cpu = False
    STEP_CACHE.clear()
    ENCODER_CACHE.clear()


@pytest.mark.parametrize("mode, refresh", [("scd", 0), ("training_free", 0), ("training_free", 2)])
def test_cross_edit_caches_are_exact(cached_on_cpu, mode, refresh):
    """A cached step serves the same edit, another seed and another clip exactly as a fresh one; after background
    refreshes (which rewrite the cached prefix) the same edit recomputes the prefix instead of reusing it."""
    product = load_product(None)
    model = build_transformer(load_preset("tiny"))
    scd = SCDModel(model, SCDOptions(split_layer=load_preset("tiny").split_layer))
    frames, height, width = 17, 128, 192
    cells = sized_mask((3, 4, 6), 0.3)["cells"]
    ctx_a = edit_context(product, "tiny", frames, height, width, cells, seed=1)
    ctx_b = edit_context(product, "tiny", frames, height, width, cells, seed=2)
    text_a, text_b = random_conditioning(product, "tiny", 5), random_conditioning(product, "tiny", 6)
    negative = random_conditioning(product, "tiny", 7)

    def edit(ctx, text, seed, cached):
        STEP_CACHE.enabled = cached
        try:
            settings = SamplerSettings(steps=3, seed=seed, cfg=3.0, mode=mode, blend=BlendSettings(),
                                       background_refresh=refresh)
            return sample_edit(scd, ctx, text, negative, settings).latents
        finally:
            STEP_CACHE.enabled = True

    with torch.no_grad():
        fresh_a = edit(ctx_a, text_a, 0, cached=False)
        first = edit(ctx_a, text_a, 0, cached=True)
        assert STEP_CACHE.last == "built"
        reused = "same edit, prefix recomputed" if refresh else "same edit"
        again = edit(ctx_a, text_a, 0, cached=True)
        assert STEP_CACHE.last == reused
        other_seed = edit(ctx_a, text_a, 1, cached=True)
        assert STEP_CACHE.last == reused
        refilled = edit(ctx_b, text_b, 0, cached=True)
        assert STEP_CACHE.last == "refilled"
        fresh_b = edit(ctx_b, text_b, 0, cached=False)
        fresh_seed = edit(ctx_a, text_a, 1, cached=False)
    assert torch.equal(first, fresh_a) and torch.equal(again, fresh_a)
    assert torch.equal(other_seed, fresh_seed) and not torch.equal(other_seed, fresh_a)
    assert torch.equal(refilled, fresh_b) and not torch.equal(fresh_b, fresh_a)
    if mode == "scd":
        assert ENCODER_CACHE.hits >= 2


def test_a_changed_weight_or_hook_is_never_served_from_the_cache(cached_on_cpu):
    product = load_product(None)
    model = build_transformer(load_preset("tiny"))
    scd = SCDModel(model, SCDOptions(split_layer=load_preset("tiny").split_layer))
    ctx = edit_context(product, "tiny", 17, 128, 192, 4, seed=1)
    text = random_conditioning(product, "tiny", 5)
    settings = SamplerSettings(steps=2, mode="training_free", blend=BlendSettings())
    with torch.no_grad():
        before = sample_edit(scd, ctx, text, None, settings).latents
        model.transformer_blocks[1].attn1.to_v.weight.mul_(1.5)  # in place: the version counter moves
        changed = sample_edit(scd, ctx, text, None, settings).latents
        assert STEP_CACHE.last == "built" and not torch.equal(before, changed)
        handle = model.transformer_blocks[0].ff.register_forward_hook(lambda m, a, o: o * 0.5)
        hooked = sample_edit(scd, ctx, text, None, settings).latents
        assert STEP_CACHE.last == "built" and not torch.equal(hooked, changed)
        handle.remove()
