"""Compute proof: the whole per-step edit path (decoder + both adapters) costs ∝ the mask; docs/flops.* are current."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flops import MASK_FRACTIONS, _setup, _t, blob_mask, step_flops  # noqa: E402

DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def tiny_rows():
    torch.set_num_threads(1)
    setup = _setup("tiny")
    assert setup["scd"].local is not None and setup["scd"].global_context is not None
    return {f: step_flops(setup, f, extras=False) for f in (0.10, 1.00)}


def test_blob_mask_covers_the_fraction_in_every_frame():
    mask = blob_mask((3, 16, 24), 0.10)
    assert mask.shape == (3, 16, 24)
    assert [int(m.sum()) for m in mask] == [38, 38, 38]
    assert bool(mask[:, 7:9, 11:13].all())  # centred
    assert int(blob_mask((2, 4, 4), 1.0).sum()) == 32


def test_per_step_flops_at_a_tenth_of_the_tokens_are_at_most_a_fifth(tiny_rows):
    tenth, full = tiny_rows[0.10], tiny_rows[1.00]
    assert tenth["tokens"] < full["tokens"] / 5
    assert tenth["step_flops"] > 0
    assert tenth["step_flops"] <= 0.2 * full["step_flops"]


def test_docs_exist_and_agree_with_a_fresh_tiny_run(tiny_rows):
    data = json.loads((DOCS / "flops.json").read_text())
    md = (DOCS / "flops.md").read_text()
    tiny = {r["mask_fraction"]: r for r in data["presets"]["tiny"]["masks"]}
    for f, fresh in tiny_rows.items():
        assert tiny[f]["tokens"] == fresh["tokens"]
        assert tiny[f]["step_flops"] == fresh["step_flops"]
    assert tiny[0.10]["ratio_to_full_mask"] == pytest.approx(tiny_rows[0.10]["step_flops"] / tiny_rows[1.00]["step_flops"])
    real = data["presets"]["ltx-2.0-19b"]
    assert real["device"] == "meta" and real["grid"] == [16, 16, 24] and real["tokens"] == 6144
    rows = real["masks"]
    assert [r["mask_fraction"] for r in rows] == list(MASK_FRACTIONS)
    steps = [r["step_flops"] for r in rows]
    assert steps == sorted(steps) and rows[-1]["ratio_to_full_mask"] == 1.0
    for r in rows:
        assert r["ratio_to_full_mask"] == pytest.approx(r["step_flops"] / steps[-1])
        assert r["adapter_flops"] > 0 and r["decoder_flops"] + r["adapter_flops"] == r["step_flops"]
        assert f"| {r['mask_fraction']:.0%} | {r['tokens']} | {_t(r['step_flops'])} |" in md
    assert rows[1]["ratio_to_full_mask"] <= 0.2
    assert real["encoder_flops"] > 0 and real["baseline_step_flops"] > steps[-1] / 2


def test_benchmark_docs_are_generated_from_their_json():
    from benchmarks.edit_speed import report

    doc = json.loads((DOCS / "benchmarks.json").read_text())
    assert (DOCS / "benchmarks.md").read_text() == report(doc)
    required = {"mask_fraction", "ms_per_step", "denoise_s", "whole_edit_s", "peak_gb", "floor_ms", "denoise_speedup",
                "whole_edit_speedup", "card"}
    records = doc["records"]
    assert records and all(required <= set(r) for r in records)
    assert {r["card"] for r in records} == {doc["environment"]["card"]}
    paths = {r["path"] for r in records}
    assert {"baseline-diffusers", "fast"} <= paths
    assert sorted(r["mask_fraction"] for r in records if r["path"] == "fast") == list(MASK_FRACTIONS)
    for r in records:
        assert r["floor_ms"] > 0 and r["ms_per_step"] >= r["floor_ms"]  # nothing beats its FLOP floor
