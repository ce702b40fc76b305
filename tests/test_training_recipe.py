"""The tiny model shipped in weights/ (from `python -m training.recipes.tiny_synthetic --out weights/`) has learned."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from editctrl_core.edit.adapters import load_adapter
from editctrl_core.loading.lora import read_lora
from editctrl_core.loading.models import load_models
from training.recipes.tiny_synthetic import FILES, evaluate_removal

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def test_shipped_files_are_small_and_strictly_loadable() -> None:
    sizes = {k: (WEIGHTS / v).stat().st_size for k, v in FILES.items()}
    assert sum(sizes.values()) < 5 * 2**20, sizes
    models = load_models(WEIGHTS / FILES["checkpoint"], "auto")
    assert models.preset.name == "tiny" and models.vae is not None
    lora = read_lora(WEIGHTS / FILES["lora"])
    assert lora.metadata["base_model"] == "editctrl/tiny" and lora.ranks == [8]
    with safe_open(str(WEIGHTS / FILES["lora"]), framework="pt") as f:
        assert all(k.startswith("diffusion_model.transformer_blocks.") for k in f.keys())
    for kind in ("local", "global"):
        module = load_adapter(WEIGHTS / FILES[kind], "editctrl/tiny", 4)
        assert any(float(p.detach().abs().max()) > 0 for n, p in module.named_parameters() if "out" in n)


@pytest.fixture(scope="module")
def report() -> dict:
    return evaluate_removal(WEIGHTS, clips=8)


def test_trained_weights_remove_the_object(report: dict) -> None:
    """Held-out clips, prompt = the background caption: masked-region latent error vs the true background ≥ 50% lower."""
    untrained, trained = report["untrained"]["latent_mse"], report["trained"]["latent_mse"]
    assert report["latent_mse_reduction"] >= 0.5, (untrained, trained)
    better = sum(t < u for t, u in zip(report["trained"]["latent_mse_per_clip"],
                                       report["untrained"]["latent_mse_per_clip"]))
    assert better == report["clips"], "the trained model must beat the untrained one on every held-out clip"
