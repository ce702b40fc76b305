"""The adapter files shipped in weights/ (used by graphs/editctrl_demo_trained): each one either loads into the tiny
model or is refused with what changed and how to retrain it — never silently loaded into a different layout."""

import json
from pathlib import Path

import pytest
import torch

from editctrl_core.edit.adapters import (
    ADAPTER_CLASSES,
    AdapterLoadError,
    GlobalContextEmbedder,
    load_adapter,
    read_adapter_metadata,
)
from editctrl_core.edit.context import prepare_edit
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.models import build_transformer, build_vae, load_preset

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"local_context": "editctrl_tiny_local.safetensors", "global_context": "editctrl_tiny_global.safetensors"}


def test_demo_graph_uses_the_shipped_adapters():
    graph = json.loads((REPO / "graphs" / "editctrl_demo_trained.api.json").read_text())
    names = {v for node in graph.values() for v in node.get("inputs", {}).values() if isinstance(v, str)}
    assert set(SHIPPED.values()) <= names


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_shipped_adapter_loads_or_says_to_retrain(kind):
    path = REPO / "weights" / SHIPPED[kind]
    info = read_adapter_metadata(path)
    assert info.kind == kind
    preset = load_preset("tiny")
    current = ADAPTER_CLASSES[kind][0].LAYOUT
    if info.layout < current:
        with pytest.raises(AdapterLoadError) as err:
            load_adapter(path, info.base_model_id, info.split_layer, expected_kind=kind)
        message = str(err.value)
        assert f"old layout {info.layout}" in message and "Retrain" in message, message
        assert "python -m training.recipes.tiny_synthetic --out weights/" in message and path.name in message
        return
    module = load_adapter(path, preset.model_id, preset.split_layer, expected_kind=kind)
    scd = SCDModel(build_transformer(preset), SCDOptions(split_layer=preset.split_layer))
    scd.attach(**({"local": module} if kind == "local_context" else {"global_context": module}))


def test_shipped_global_adapter_is_trained_on_the_low_resolution_input():
    """The shipped global embedder is the current layout (trained on EditCtrl's input, the VAE latents of the
    low-resolution masked frames) and embeds that input of a tiny clip."""
    path = REPO / "weights" / SHIPPED["global_context"]
    preset = load_preset("tiny")
    info = read_adapter_metadata(path)
    assert info.layout == GlobalContextEmbedder.LAYOUT == 3
    module = load_adapter(path, preset.model_id, preset.split_layer, expected_kind="global_context")
    frames = torch.rand(17, 64, 96, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(17, 64, 96)
    mask[:, :32, :32] = 1.0
    ctx = prepare_edit(build_vae(preset), frames, mask)
    with torch.no_grad():
        tokens = module(ctx.global_input())
    assert tokens.shape == (1, 2 * 2 * 3, module.config.model_dim) and bool(torch.isfinite(tokens).all())
