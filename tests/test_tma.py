"""TMA connector: shapes, masking, token prepending, strict safetensors save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from editctrl_core.perception.tma import (
    AdapterLoadError,
    MetaQueryBank,
    TMAConfig,
    build_tma,
    load_tma,
    prepend_semantic_tokens,
    read_tma_metadata,
    save_tma,
    semantic_tokens,
    tiny_tma_config,
)


def test_tokens_shape_and_task_queries() -> None:
    """Output is [B, queries, text_dim], LayerNorm-ed; tasks select different queries."""
    config = tiny_tma_config()
    tma = build_tma(config, seed=0).eval()
    states = torch.randn(3, 11, config.qwen_dim)
    out = tma(states)
    assert out.shape == (3, 8, config.text_dim)
    assert torch.allclose(out.mean(-1), torch.zeros(3, 8), atol=1e-5)
    other = tma(states, task=1)
    assert not torch.allclose(out, other)
    mixed = tma(states, task=torch.tensor([0, 1, 0]))
    assert torch.allclose(mixed[1], other[1]) and torch.allclose(mixed[0], out[0])
    with pytest.raises(IndexError):
        tma(states, task=2)
    assert MetaQueryBank(6, 8, 16).queries.shape == (6, 8, 16)


def test_padding_mask_ignores_padded_states() -> None:
    """Changing states behind the padding mask does not change the tokens; changing visible ones does."""
    config = tiny_tma_config()
    tma = build_tma(config, seed=1).eval()
    states = torch.randn(2, 6, config.qwen_dim)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    base = semantic_tokens(tma, states, mask)
    changed = states.clone()
    changed[1, 4:] += 100.0
    assert torch.allclose(semantic_tokens(tma, changed, mask), base, atol=1e-5)
    changed[1, 0] += 1.0
    assert not torch.allclose(semantic_tokens(tma, changed, mask)[1], base[1])
    with pytest.raises(ValueError, match="at least one"):
        tma(states, torch.zeros(2, 6, dtype=torch.bool))


def test_prepend_extends_embeddings_and_mask() -> None:
    """Tokens go first, the mask gets leading ones in its own dtype; a single token row broadcasts over CFG."""
    embeds = torch.randn(2, 5, 48)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.int64)
    tokens = torch.randn(1, 8, 48, dtype=torch.float64)
    out, out_mask = prepend_semantic_tokens(embeds, mask, tokens)
    assert out.shape == (2, 13, 48) and out.dtype == embeds.dtype
    assert torch.equal(out[:, 8:], embeds) and torch.allclose(out[0, :8], tokens[0].float())
    assert out_mask.dtype == torch.int64 and out_mask.tolist()[0] == [1] * 8 + [1, 1, 1, 0, 0]
    bool_out = prepend_semantic_tokens(embeds, mask.bool(), tokens.expand(2, -1, -1))[1]
    assert bool_out.dtype == torch.bool and bool_out[:, :8].all()
    with pytest.raises(ValueError, match="wide"):
        prepend_semantic_tokens(embeds, mask, torch.randn(2, 8, 32))
    with pytest.raises(ValueError, match="batch"):
        prepend_semantic_tokens(embeds, mask, torch.randn(3, 8, 48))


def test_save_load_round_trip(tmp_path: Path) -> None:
    """Weights, config and base model id survive a save/load exactly."""
    config = tiny_tma_config()
    tma = build_tma(config, seed=2)
    path = tmp_path / "tma.safetensors"
    save_tma(tma, path, base_model="Qwen/Qwen2.5-VL-7B-Instruct")
    loaded, base = load_tma(path, expected_config=config, expected_base_model="Qwen/Qwen2.5-VL-7B-Instruct")
    assert base == "Qwen/Qwen2.5-VL-7B-Instruct" and loaded.config == config
    for (k, v), (k2, v2) in zip(tma.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    states = torch.randn(1, 7, config.qwen_dim)
    assert torch.equal(semantic_tokens(tma, states), semantic_tokens(loaded, states))
    assert read_tma_metadata(path) == (config, "Qwen/Qwen2.5-VL-7B-Instruct")


def test_strict_load_names_every_difference(tmp_path: Path) -> None:
    """Different config, base model, missing/unexpected keys and wrong shapes are errors naming the difference."""
    config = tiny_tma_config()
    path = tmp_path / "tma.safetensors"
    save_tma(build_tma(config, seed=3), path, base_model="base-a")
    bigger = TMAConfig(**{**config.__dict__, "text_dim": 64, "num_heads": 4})
    with pytest.raises(AdapterLoadError, match=r"text_dim: 48 vs 64.*num_heads: 8 vs 4|num_heads: 8 vs 4.*text_dim"):
        load_tma(path, expected_config=bigger)
    with pytest.raises(AdapterLoadError, match="'base-a', not 'base-b'"):
        load_tma(path, expected_base_model="base-b")

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    broken = dict(tensors)
    del broken["norm.bias"]
    broken["extra.weight"] = torch.zeros(2)
    broken["mlp.0.weight"] = torch.zeros(5, config.qwen_dim)
    bad = tmp_path / "bad.safetensors"
    save_file(broken, str(bad), metadata=meta)
    with pytest.raises(AdapterLoadError) as info:
        load_tma(bad)
    message = str(info.value)
    assert "missing keys ['norm.bias']" in message
    assert "unexpected keys ['extra.weight']" in message
    assert "mlp.0.weight: file (5, 32) vs model (32, 32)" in message

    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain))
    with pytest.raises(AdapterLoadError, match="not an EditCtrl TMA file"):
        load_tma(plain)
    other = tmp_path / "local.safetensors"
    save_file(tensors, str(other), metadata={**meta, "editctrl.kind": '"local_context"'})
    with pytest.raises(AdapterLoadError, match="'local_context' adapter, not a TMA adapter"):
        load_tma(other)
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd), metadata={**meta, "editctrl.config": '{"qwen_dim": 32, "colour": 1}'})
    with pytest.raises(AdapterLoadError, match=r"unknown fields \['colour'\]"):
        load_tma(odd)
    pickled = tmp_path / "tma.pt"
    pickled.write_bytes(b"\x80\x04\x95" + bytes(64))
    with pytest.raises(AdapterLoadError, match="not a readable safetensors file"):
        load_tma(pickled)
    with pytest.raises(AdapterLoadError, match="does not exist"):
        load_tma(tmp_path / "missing.safetensors")
