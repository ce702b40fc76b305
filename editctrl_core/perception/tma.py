"""TMA semantic tokens: learnable per-task queries pool Qwen-VL hidden states into tokens for the text context.

`MetaQueryBank` (tasks x queries x qwen width) → multi-head cross-attention over the Qwen states (queries attend,
residual) → 3-layer MLP (qwen→hidden→hidden→text width, GELU, dropout) → LayerNorm → `num_queries` tokens,
prepended to the text encoder's embeddings with the attention mask extended. Weights are saved as safetensors
in the same container format as the EditCtrl adapters (`adapters.py`: JSON values under ``editctrl.*`` metadata
keys, kind ``"tma"``, the config and the base Qwen model id), and load strictly: any difference in config, base
model, keys or shapes raises `adapters.AdapterLoadError` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..conditioning.text import TextConditioning
from ..edit.adapters import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_PREFIX,
    AdapterLoadError,
    Problems,
    field_mismatch,
    raise_first_problem,
)
from ..loading.weights_file import save_safetensors

ADAPTER_KIND = "tma"

__all__ = ["ADAPTER_KIND", "AdapterLoadError", "MetaQueryBank", "TMAConfig", "TMAConnector", "build_tma",
           "check_state_dict", "describe", "load_tma", "prepend_semantic_tokens", "read_tma_metadata", "save_tma",
           "semantic_tokens", "tiny_tma_config"]


@dataclass(frozen=True)
class TMAConfig:
    """Shape of a TMA connector; the defaults are the seed's (Qwen2.5-VL-7B → Gemma-3 text width)."""

    qwen_dim: int = 3584
    text_dim: int = 3840
    num_tasks: int = 6
    num_queries: int = 8
    num_heads: int = 8
    mlp_dim: int = 3584
    dropout: float = 0.1

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> Problems:
        """(field, problem) for each failed check; fields missing from `values` go unchecked, so a caller that fills
        the widths later (the training config: Qwen width from the features) can check the rest with these rules."""
        found = [(name, f"must be >= 1; got {values[name]}") for name in ("qwen_dim", "text_dim", "num_tasks",
                 "num_queries", "num_heads", "mlp_dim") if name in values and int(values[name]) < 1]
        if not found and "qwen_dim" in values and "num_heads" in values and values["qwen_dim"] % values["num_heads"]:
            found.append(("num_heads", f"must divide qwen_dim {values['qwen_dim']}; got {values['num_heads']}"))
        if "dropout" in values and not 0.0 <= values["dropout"] < 1.0:
            found.append(("dropout", f"must be in [0, 1); got {values['dropout']}"))
        return found

    def __post_init__(self) -> None:
        """Validate the fields (:meth:`problems`)."""
        raise_first_problem(self, self.problems(vars(self)))

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) for file metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TMAConfig:
        """Parse config JSON; unknown or missing fields are an AdapterLoadError."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise AdapterLoadError(f"TMA config metadata is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise AdapterLoadError(f"TMA config metadata must be a JSON object; got {type(data).__name__}")
        unknown, missing = field_mismatch(cls, data)
        if unknown or missing:
            raise AdapterLoadError(f"TMA config metadata has unknown fields {unknown} / missing fields {missing}")
        return cls(**data)

    def differences(self, other: TMAConfig) -> list[str]:
        """Human-readable 'field: self vs other' for every differing field."""
        return [f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


class MetaQueryBank(nn.Module):
    """Learnable queries per task: a [tasks, queries, width] parameter; picks one task's queries per sample."""

    def __init__(self, num_tasks: int, num_queries: int, dim: int) -> None:
        """Queries initialised N(0, 0.02), like token embeddings."""
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tasks, num_queries, dim) * 0.02)

    def forward(self, task: int | torch.Tensor, batch_size: int) -> torch.Tensor:
        """Queries [B, Q, D] for an int task id or a per-sample LongTensor [B] of task ids."""
        num_tasks = self.queries.shape[0]
        if isinstance(task, int):
            if not 0 <= task < num_tasks:
                raise IndexError(f"task id {task} out of range for {num_tasks} tasks")
            return self.queries[task].unsqueeze(0).expand(batch_size, -1, -1)
        task = task.to(self.queries.device).long().reshape(-1)
        if task.numel() != batch_size:
            raise ValueError(f"got {task.numel()} task ids for a batch of {batch_size}")
        if task.min() < 0 or task.max() >= num_tasks:
            raise IndexError(f"task ids {task.tolist()} out of range for {num_tasks} tasks")
        return self.queries[task]


class TMAConnector(nn.Module):
    """MetaQueryBank → cross-attention over Qwen states → 3-layer MLP → LayerNorm: [B, Q, text_dim] tokens."""

    def __init__(self, config: TMAConfig) -> None:
        """Build the modules for `config`."""
        super().__init__()
        self.config = config
        self.meta_queries = MetaQueryBank(config.num_tasks, config.num_queries, config.qwen_dim)
        self.cross_attn = nn.MultiheadAttention(config.qwen_dim, config.num_heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(config.qwen_dim, config.mlp_dim), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.mlp_dim, config.mlp_dim), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.mlp_dim, config.text_dim),
        )
        self.norm = nn.LayerNorm(config.text_dim)

    def forward(self, qwen_states: torch.Tensor, qwen_mask: torch.Tensor | None = None,
                task: int | torch.Tensor = 0) -> torch.Tensor:
        """Semantic tokens [B, num_queries, text_dim] from Qwen hidden states [B, L, qwen_dim] (mask: True = keep)."""
        if qwen_states.ndim != 3 or qwen_states.shape[-1] != self.config.qwen_dim:
            raise ValueError(f"qwen_states must be [B, L, {self.config.qwen_dim}]; got {tuple(qwen_states.shape)}")
        param = self.meta_queries.queries
        states = qwen_states.to(device=param.device, dtype=param.dtype)
        queries = self.meta_queries(task, states.shape[0])
        padding = None
        if qwen_mask is not None:
            if qwen_mask.shape != states.shape[:2]:
                raise ValueError(f"qwen_mask must be {tuple(states.shape[:2])}; got {tuple(qwen_mask.shape)}")
            keep = qwen_mask.to(param.device).bool()
            if not keep.any(dim=1).all():
                raise ValueError("every sample needs at least one unmasked Qwen state")
            padding = ~keep
        attended, _ = self.cross_attn(queries, states, states, key_padding_mask=padding, need_weights=False)
        return self.norm(self.mlp(queries + attended))

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def prepend_semantic_tokens(text_embeds: torch.Tensor, text_mask: torch.Tensor,
                            tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix `tokens` [B|1, Q, D] to `text_embeds` [B, T, D] and extend the keep-mask [B, T] with Q ones."""
    if text_embeds.ndim != 3 or tokens.ndim != 3:
        raise ValueError(f"expected [B,T,D] embeds and [B,Q,D] tokens; got {tuple(text_embeds.shape)} and "
                         f"{tuple(tokens.shape)}")
    batch, length, dim = text_embeds.shape
    if tokens.shape[-1] != dim:
        raise ValueError(f"semantic tokens are {tokens.shape[-1]} wide but the text embeddings are {dim} wide")
    if text_mask.shape != (batch, length):
        raise ValueError(f"text_mask must be {(batch, length)}; got {tuple(text_mask.shape)}")
    if tokens.shape[0] == 1 and batch > 1:
        tokens = tokens.expand(batch, -1, -1)
    elif tokens.shape[0] != batch:
        raise ValueError(f"semantic tokens have batch {tokens.shape[0]} but the text has batch {batch}")
    tokens = tokens.to(device=text_embeds.device, dtype=text_embeds.dtype)
    ones = torch.ones(batch, tokens.shape[1], dtype=text_mask.dtype, device=text_mask.device)
    return torch.cat([tokens, text_embeds], dim=1), torch.cat([ones, text_mask], dim=1)


def with_semantic_tokens(cond: TextConditioning, tokens: torch.Tensor) -> TextConditioning:
    """`cond` with `tokens` [B|1,Q,D] prepended to its video prompt, every other field kept: the audio prompt of
    LTX-2.3/2.5 (own width) gets Q zero tokens in front so it stays aligned with the extended mask."""
    embeds, mask = prepend_semantic_tokens(cond.embeds, cond.mask, tokens)
    audio = cond.audio_embeds
    if audio is not None:
        pad = audio.new_zeros(audio.shape[0], embeds.shape[1] - audio.shape[1], audio.shape[2])
        audio = torch.cat([pad, audio], dim=1)
    return replace(cond, embeds=embeds, mask=mask, audio_embeds=audio)


def save_tma(connector: TMAConnector, path: str | Path, base_model: str = "") -> None:
    """Write weights as safetensors with kind, config and base Qwen model id as JSON metadata (atomic)."""
    metadata = {
        "format": "pt",
        META_PREFIX + "format": json.dumps(FORMAT_NAME),
        META_PREFIX + "format_version": json.dumps(FORMAT_VERSION),
        META_PREFIX + "kind": json.dumps(ADAPTER_KIND),
        META_PREFIX + "config": connector.config.to_json(),
        META_PREFIX + "base_model_id": json.dumps(base_model),
    }
    save_safetensors(path, connector.state_dict(), metadata)


def _metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata; anything unreadable (pickles, truncated files) is an AdapterLoadError."""
    if not path.is_file():
        raise AdapterLoadError(f"TMA file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:
        raise AdapterLoadError(f"{str(path)!r} is not a readable safetensors file ({err}); it was not unpickled - "
                               "re-export it with save_tma") from err


def _meta_value(path: Path, meta: dict[str, str], name: str) -> Any:
    """One JSON metadata value, or an AdapterLoadError naming the missing/corrupt key."""
    key = META_PREFIX + name
    if key not in meta:
        raise AdapterLoadError(f"{str(path)!r} has no '{key}' metadata: it is not an EditCtrl TMA file")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{str(path)!r}: metadata '{key}' is not valid JSON ({err})") from err


def read_tma_metadata(path: str | Path) -> tuple[TMAConfig, str]:
    """(config, base model id) from a TMA file's metadata; AdapterLoadError when it is not a TMA file."""
    path = Path(path)
    meta = _metadata(path)
    fmt = _meta_value(path, meta, "format")
    if fmt != FORMAT_NAME:
        raise AdapterLoadError(f"{str(path)!r} declares format {fmt!r}, expected {FORMAT_NAME!r}")
    version = _meta_value(path, meta, "format_version")
    if version != FORMAT_VERSION:
        raise AdapterLoadError(f"{str(path)!r} has adapter format version {version}; this build reads {FORMAT_VERSION}")
    kind = _meta_value(path, meta, "kind")
    if kind != ADAPTER_KIND:
        raise AdapterLoadError(f"{str(path)!r} is a {kind!r} adapter, not a TMA adapter ({ADAPTER_KIND!r})")
    if META_PREFIX + "config" not in meta:
        raise AdapterLoadError(f"{str(path)!r} has no '{META_PREFIX}config' metadata")
    base = _meta_value(path, meta, "base_model_id")
    if not isinstance(base, str):
        raise AdapterLoadError(f"{str(path)!r}: base model id must be a string; got {base!r}")
    return TMAConfig.from_json(meta[META_PREFIX + "config"]), base


def load_tma(path: str | Path, expected_config: TMAConfig | None = None, expected_base_model: str | None = None,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[TMAConnector, str]:
    """Strictly load a TMA file: returns (connector, base model id).

    Raises AdapterLoadError naming every config difference from `expected_config`, a different base model,
    missing or unexpected tensors and shape mismatches. Nothing is ever partially loaded.
    """
    path = Path(path)
    config, base_model = read_tma_metadata(path)
    if expected_config is not None and config != expected_config:
        raise AdapterLoadError(f"{path.name}: config differs from the expected one: "
                               + "; ".join(config.differences(expected_config)))
    if expected_base_model is not None and base_model != expected_base_model:
        raise AdapterLoadError(f"{path.name} was trained on base model {base_model!r}, not {expected_base_model!r}")
    connector = TMAConnector(config)
    expected = {k: tuple(v.shape) for k, v in connector.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    check_state_dict(expected, {k: tuple(v.shape) for k, v in tensors.items()}, path.name)
    connector.load_state_dict(tensors, strict=True)
    return connector.to(device=device, dtype=dtype), base_model


def check_state_dict(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise AdapterLoadError listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: file {found[k]} vs model {expected[k]}" for k in sorted(set(expected) & set(found))
              if found[k] != expected[k]]
    problems: list[str] = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes))
    if problems:
        raise AdapterLoadError(f"{what}: " + "; ".join(problems))


def tiny_tma_config(qwen_dim: int = 32, text_dim: int = 48) -> TMAConfig:
    """A tiny TMA config for tests and the demo (matches the tiny Qwen width by default)."""
    return TMAConfig(qwen_dim=qwen_dim, text_dim=text_dim, num_tasks=2, num_queries=8, num_heads=8, mlp_dim=32,
                     dropout=0.1)


def build_tma(config: TMAConfig, seed: int | None = None) -> TMAConnector:
    """A fresh connector, optionally with weights seeded by `seed`."""
    if seed is None:
        return TMAConnector(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TMAConnector(config)


def semantic_tokens(connector: TMAConnector, qwen_states: torch.Tensor, qwen_mask: torch.Tensor | None = None,
                    task: int = 0) -> torch.Tensor:
    """Inference helper: tokens from Qwen states in eval mode without gradients."""
    was_training = connector.training
    connector.eval()
    try:
        with torch.no_grad():
            return connector(qwen_states, qwen_mask, task)
    finally:
        connector.train(was_training)


def describe(connector: TMAConnector) -> dict[str, Any]:
    """Config plus parameter count, for node tooltips and logs."""
    return {**asdict(connector.config), "parameters": connector.num_parameters()}
