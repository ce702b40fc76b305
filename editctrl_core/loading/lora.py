"""LoRA files for LTX-2 in ComfyUI's native key format, strict loading, and reversible application.

File format written by `save_lora` (the format Lightricks' LTX-2 trainer writes and ComfyUI loads natively)::

    diffusion_model.<original module path>.lora_A.weight   [rank, in_features]
    diffusion_model.<original module path>.lora_B.weight   [out_features, rank]
    diffusion_model.<original module path>.alpha            scalar   (only with alpha_keys=True)

`<original module path>` uses LTX-2's own (ltx-core / ComfyUI) module names, i.e. the inverse of diffusers'
`convert_ltx2_transformer_to_diffusers` renames: `proj_in` -> `patchify_proj`, `time_embed` -> `adaln_single`,
`av_cross_attn_video_scale_shift` -> `av_ca_video_scale_shift_adaln_single`, `norm_q` -> `q_norm`, ...

Alpha. By default the LoRA scale alpha/rank is folded into `lora_B` and no `.alpha` keys are written, so the
effective scale is 1 in every loader: ComfyUI (no alpha -> scale 1), diffusers/peft (no alpha -> alpha = rank)
and Lightricks' ltx-core. diffusers' `LTX2Pipeline.load_lora_weights` rejects files holding `.alpha` keys
("Invalid LoRA checkpoint ... 'lora' substring"), which is why alpha keys are opt-in. The training alpha
and rank are kept in the metadata (`editctrl.alpha`, `editctrl.rank`).

Application. `apply_loras` never touches a weight: it registers a forward hook on each targeted `nn.Linear` that
adds ``x @ A_cat.T @ B_cat.T``, where the stacked LoRAs are concatenated along the rank axis and
``B_cat`` is pre-multiplied by strength * alpha / rank. Removing the hooks therefore restores the base model
bit-exactly, which matters because ComfyUI caches one model object across runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from ..checks import all_finite
from .weights_file import save_safetensors

logger = logging.getLogger(__name__)

NATIVE_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
PEFT_PREFIX = "base_model.model."
FORMAT_NAME = "comfyui-native-lora/1"
RESERVED_META_PREFIX = "editctrl."
DIFFUSERS_META_KEY = "lora_adapter_metadata"

_DIFFUSERS_TO_NATIVE_SEGMENT = {
    "proj_in": "patchify_proj",
    "audio_proj_in": "audio_patchify_proj",
    "av_cross_attn_video_scale_shift": "av_ca_video_scale_shift_adaln_single",
    "av_cross_attn_video_a2v_gate": "av_ca_a2v_gate_adaln_single",
    "av_cross_attn_audio_scale_shift": "av_ca_audio_scale_shift_adaln_single",
    "av_cross_attn_audio_v2a_gate": "av_ca_v2a_gate_adaln_single",
    "video_a2v_cross_attn_scale_shift_table": "scale_shift_table_a2v_ca_video",
    "audio_a2v_cross_attn_scale_shift_table": "scale_shift_table_a2v_ca_audio",
    "norm_q": "q_norm",
    "norm_k": "k_norm",
    "prompt_adaln": "prompt_adaln_single",
    "audio_prompt_adaln": "audio_prompt_adaln_single",
}
_DIFFUSERS_TO_NATIVE_ROOT = {"time_embed": "adaln_single", "audio_time_embed": "audio_adaln_single"}
_NATIVE_TO_DIFFUSERS_SEGMENT = {v: k for k, v in _DIFFUSERS_TO_NATIVE_SEGMENT.items()}
_NATIVE_TO_DIFFUSERS_ROOT = {v: k for k, v in _DIFFUSERS_TO_NATIVE_ROOT.items()}

_SUFFIXES = (
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_down.weight", "A"),
    (".lora_up.weight", "B"),
    (".alpha", "alpha"),
)
_ADAPTER_NAMED = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[A-Za-z0-9_\-]+)\.weight$")
_MAX_LISTED = 5


class LoraError(ValueError):
    """Base class of LoRA errors."""


class LoraFormatError(LoraError):
    """The file is not a readable / well-formed LoRA file."""


class LoraMismatchError(LoraError):
    """The LoRA does not fit the model (missing modules, wrong module types or shapes)."""


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA pair for one nn.Linear: delta_W = (alpha / rank) * B @ A."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        """Rank r (rows of A)."""
        return int(self.A.shape[0])

    @property
    def scale(self) -> float:
        """Multiplier alpha / rank applied to B @ A."""
        return self.alpha / self.rank


@dataclass
class LoraFile:
    """A LoRA keyed by diffusers module path (e.g. `transformer_blocks.0.attn1.to_q`), with file metadata."""

    layers: dict[str, LoraWeights]
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "memory"
    path: str | None = None

    @property
    def ranks(self) -> list[int]:
        """Sorted distinct ranks of the layers."""
        return sorted({w.rank for w in self.layers.values()})

    def describe(self) -> str:
        """Short human-readable identity for error messages."""
        name = self.path or "<in-memory LoRA>"
        base = self.metadata.get("base_model") or self.metadata.get("editctrl.base_model")
        return f"{name}" + (f" (base model: {base})" if base else "")


def diffusers_to_native(module_path: str) -> str:
    """Rename a diffusers LTX-2 module path to the original LTX-2 (ComfyUI / ltx-core) path."""
    parts = module_path.split(".")
    if parts and parts[0] in _DIFFUSERS_TO_NATIVE_ROOT:
        parts[0] = _DIFFUSERS_TO_NATIVE_ROOT[parts[0]]
    return ".".join(_DIFFUSERS_TO_NATIVE_SEGMENT.get(p, p) for p in parts)


def native_to_diffusers(module_path: str) -> str:
    """Rename an original LTX-2 module path to the diffusers path (what diffusers' LoRA converter does)."""
    parts = module_path.split(".")
    if parts and parts[0] in _NATIVE_TO_DIFFUSERS_ROOT:
        parts[0] = _NATIVE_TO_DIFFUSERS_ROOT[parts[0]]
    return ".".join(_NATIVE_TO_DIFFUSERS_SEGMENT.get(p, p) for p in parts)


def _json_value(value: Any) -> str:
    """Metadata values must be strings: keep str, JSON-encode everything else."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _as_lora_file(lora: LoraFile | Mapping[str, Any] | nn.Module) -> LoraFile:
    """Accept a LoraFile, a {module path: (A, B, alpha) | LoraWeights} mapping or a peft-wrapped model."""
    if isinstance(lora, LoraFile):
        return lora
    if isinstance(lora, nn.Module):
        return lora_from_peft(lora)
    layers: dict[str, LoraWeights] = {}
    for name, value in lora.items():
        if name.startswith((NATIVE_PREFIX, DIFFUSERS_PREFIX, PEFT_PREFIX)):
            raise ValueError(f"save_lora expects bare diffusers module paths, got a prefixed key {name!r}")
        weights = value if isinstance(value, LoraWeights) else LoraWeights(value[0], value[1], float(value[2]))
        layers[name] = weights
    return LoraFile(layers=layers)


def _check_pair(name: str, w: LoraWeights) -> None:
    """Validate one pair's ranks/shapes/finiteness so broken weights never reach a file or a model."""
    if w.A.ndim != 2 or w.B.ndim != 2:
        raise LoraFormatError(f"{name}: lora_A and lora_B must be 2-D, got {tuple(w.A.shape)} and {tuple(w.B.shape)}")
    if w.B.shape[1] != w.A.shape[0]:
        raise LoraFormatError(
            f"{name}: rank mismatch, lora_A is {tuple(w.A.shape)} but lora_B is {tuple(w.B.shape)}"
        )
    if not math.isfinite(w.alpha):
        raise LoraFormatError(f"{name}: alpha must be a finite number, got {w.alpha}")
    if not (all_finite(w.A) and all_finite(w.B)):
        raise LoraFormatError(f"{name}: weights contain NaN or Inf")


def _summary(values: Iterable[float]) -> int | float | list:
    """One value if all equal, else the sorted distinct values (for metadata)."""
    distinct = sorted(set(values))
    if len(distinct) == 1:
        value = distinct[0]
        return int(value) if float(value).is_integer() else value
    return distinct


def save_lora(
    lora: LoraFile | Mapping[str, Any] | nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    *,
    alpha_keys: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a LoRA as ComfyUI-native `diffusion_model.` keys with original LTX-2 names, atomically.

    `lora` is a LoraFile, a {diffusers module path: (A, B, alpha)} mapping, or a peft-wrapped model.
    `metadata` values that are not strings are JSON-encoded. With `alpha_keys=False` (default) alpha/rank
    is folded into lora_B so ComfyUI, diffusers and ltx-core all apply the same scale; with True, scalar
    `.alpha` tensors are written instead (ComfyUI reads them; diffusers' LTX2 loader rejects such files).
    """
    src = _as_lora_file(lora)
    if not src.layers:
        raise ValueError("save_lora: the LoRA has no layers")
    user_meta = dict(metadata or {})
    for key in user_meta:
        if key.startswith(RESERVED_META_PREFIX) or key == DIFFUSERS_META_KEY:
            raise ValueError(f"metadata key {key!r} is reserved (prefix {RESERVED_META_PREFIX!r} / diffusers)")
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(src.layers):
        w = src.layers[name]
        _check_pair(name, w)
        out_dtype = dtype or w.A.dtype
        key = NATIVE_PREFIX + diffusers_to_native(name)
        a = w.A.detach().to("cpu", torch.float32)
        b = w.B.detach().to("cpu", torch.float32)
        if alpha_keys:
            tensors[key + ".alpha"] = torch.tensor(float(w.alpha), dtype=torch.float32)
        else:
            b = b * w.scale
        tensors[key + ".lora_A.weight"] = a.to(out_dtype).contiguous()
        tensors[key + ".lora_B.weight"] = b.to(out_dtype).contiguous()
    meta = {k: _json_value(v) for k, v in user_meta.items()}
    meta.update({
        "editctrl.format": FORMAT_NAME,
        "editctrl.rank": json.dumps(_summary(w.rank for w in src.layers.values())),
        "editctrl.alpha": json.dumps(_summary(w.alpha for w in src.layers.values())),
        "editctrl.alpha_storage": "alpha_keys" if alpha_keys else "folded_into_lora_B",
        "editctrl.target_modules": json.dumps(sorted({_leaf_name(n) for n in src.layers})),
        "editctrl.num_layers": str(len(src.layers)),
    })
    return save_safetensors(path, tensors, meta)


def _leaf_name(module_path: str) -> str:
    """`transformer_blocks.3.attn1.to_out.0` -> `to_out.0`; other paths -> their last segment."""
    parts = module_path.split(".")
    if len(parts) >= 2 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    return parts[-1]


def _detect_format(keys: Sequence[str]) -> tuple[str, str]:
    """Return (format name, prefix) shared by all keys, or raise naming mixed/unsupported prefixes."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        if k.startswith(NATIVE_PREFIX):
            groups.setdefault("native", []).append(k)
        elif k.startswith(DIFFUSERS_PREFIX):
            groups.setdefault("diffusers", []).append(k)
        elif k.startswith(PEFT_PREFIX):
            groups.setdefault("peft", []).append(k)
        elif k.startswith("lora_unet_") or k.startswith("lora_te"):
            groups.setdefault("kohya", []).append(k)
        elif k.startswith(("text_embedding_projection.", "connectors.", "model.diffusion_model.")):
            groups.setdefault("other", []).append(k)
        else:
            groups.setdefault("plain", []).append(k)
    if "kohya" in groups:
        raise LoraFormatError(
            f"kohya-style keys (e.g. {groups['kohya'][0]!r}) are not supported; convert the LoRA to "
            "`diffusion_model.<path>.lora_A/lora_B.weight` keys"
        )
    if "other" in groups:
        raise LoraFormatError(
            f"keys outside the transformer are not supported (e.g. {groups['other'][0]!r}); only "
            "`diffusion_model.`, `transformer.`, `base_model.model.` or bare module keys are read"
        )
    if len(groups) != 1:
        examples = ", ".join(f"{g}: {v[0]!r}" for g, v in groups.items())
        raise LoraFormatError(f"keys mix several prefixes ({examples}); a LoRA file must use one key format")
    fmt = next(iter(groups))
    prefix = {"native": NATIVE_PREFIX, "diffusers": DIFFUSERS_PREFIX, "peft": PEFT_PREFIX, "plain": ""}[fmt]
    return fmt, prefix


def _split_key(key: str) -> tuple[str, str] | None:
    """Split `module.path.lora_A.weight` into (module path, 'A'|'B'|'alpha'); None if not a LoRA key."""
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    m = _ADAPTER_NAMED.match(key)
    if m:
        return m.group("module"), m.group("ab")
    return None


def _diffusers_alpha_config(metadata: Mapping[str, str], prefix: str) -> dict[str, Any] | None:
    """Parse diffusers' `lora_adapter_metadata` (LoraConfig kwargs, keys prefixed `transformer.`) if present."""
    raw = metadata.get(DIFFUSERS_META_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LoraFormatError(f"{DIFFUSERS_META_KEY} metadata is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise LoraFormatError(f"{DIFFUSERS_META_KEY} metadata must be a JSON object")
    scoped = {k[len(prefix):]: v for k, v in cfg.items() if prefix and k.startswith(prefix)}
    return scoped or cfg


def _alpha_from_config(cfg: Mapping[str, Any], module: str, rank: int) -> float | None:
    """Effective alpha (alpha/rank == peft's scaling) for `module` from a peft LoraConfig dict."""
    alpha = cfg.get("lora_alpha")
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    if alpha is None:
        return None
    if cfg.get("use_rslora"):
        return float(alpha) * rank / math.sqrt(rank)
    return float(alpha)


def parse_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None, source: str | None = None
) -> LoraFile:
    """Normalise native / diffusers / peft LoRA keys to diffusers module paths, strictly."""
    metadata = dict(metadata or {})
    where = f" in {source}" if source else ""
    if not state_dict:
        raise LoraFormatError(f"no tensors{where}: this is not a LoRA file")
    fmt, prefix = _detect_format(list(state_dict))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    adapters: set[str] = set()
    for key, tensor in state_dict.items():
        split = _split_key(key[len(prefix):])
        if split is None:
            unknown.append(key)
            continue
        module, role = split
        m = _ADAPTER_NAMED.match(key[len(prefix):])
        if m:
            adapters.add(m.group("adapter"))
        if fmt == "native":
            module = native_to_diffusers(module)
        slot = parts.setdefault(module, {})
        if role in slot:
            raise LoraFormatError(f"{key!r}: module {module!r} has two {role} tensors{where}")
        slot[role] = tensor
    if unknown:
        raise LoraFormatError(
            f"unsupported keys{where} (only lora_A/lora_B[/lora_down/lora_up].weight and .alpha are read): "
            + ", ".join(repr(k) for k in unknown[:_MAX_LISTED])
            + (f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else "")
        )
    if len(adapters) > 1:
        raise LoraFormatError(f"keys hold several peft adapters {sorted(adapters)}{where}; save one adapter per file")
    diff_cfg = _diffusers_alpha_config(metadata, DIFFUSERS_PREFIX)
    layers: dict[str, LoraWeights] = {}
    for module, slot in parts.items():
        if "A" not in slot or "B" not in slot:
            missing = "lora_B" if "A" in slot else "lora_A"
            raise LoraFormatError(f"module {module!r} has no {missing} tensor{where}: the file is incomplete")
        a, b = slot["A"], slot["B"]
        if a.ndim != 2:
            raise LoraFormatError(f"module {module!r}: lora_A must be 2-D, got shape {tuple(a.shape)}{where}")
        rank = int(a.shape[0])
        if "alpha" in slot:
            if slot["alpha"].numel() != 1:
                raise LoraFormatError(f"module {module!r}: alpha must be a scalar, got {tuple(slot['alpha'].shape)}")
            alpha = float(slot["alpha"].float().item())
        else:
            alpha = (_alpha_from_config(diff_cfg, module, rank) if diff_cfg else None) or float(rank)
        weights = LoraWeights(a, b, alpha)
        _check_pair(module, weights)
        layers[module] = weights
    return LoraFile(layers=layers, metadata=metadata, source_format=fmt, path=source)


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a LoRA safetensors file (native, diffusers or peft keys) into diffusers module paths.

    Without `.alpha` keys, alpha comes from diffusers' `lora_adapter_metadata`, else from a peft
    `adapter_config.json` next to the file, else alpha = rank (scale 1, as ComfyUI and diffusers assume).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise LoraFormatError(
            f"{path} is not a readable safetensors LoRA ({e}). The file may be truncated or corrupt: "
            "re-download or re-export it."
        ) from e
    sidecar = path.with_name("adapter_config.json")
    if DIFFUSERS_META_KEY not in metadata and sidecar.is_file():
        metadata[DIFFUSERS_META_KEY] = sidecar.read_text()
    return parse_lora_state_dict(state, metadata, source=str(path))


def lora_from_peft(model: nn.Module, adapter_name: str | None = None) -> LoraFile:
    """Extract one trained peft LoRA adapter from a peft-wrapped model (PeftModel or add_adapter/inject).

    The scale is the adapter's configured lora_alpha / r (or / sqrt(r) with rsLoRA), not the runtime weight
    that `set_adapters` may have applied.
    """
    from peft.tuners.lora import LoraLayer

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not found:
        raise ValueError("lora_from_peft: the model has no peft LoRA layers")
    names = sorted({a for _, m in found for a in m.lora_A})
    if adapter_name is None:
        if len(names) != 1:
            raise ValueError(f"lora_from_peft: the model has adapters {names}; pass adapter_name")
        adapter_name = names[0]
    layers: dict[str, LoraWeights] = {}
    for name, module in found:
        if adapter_name not in module.lora_A:
            continue
        if adapter_name in getattr(module, "lora_magnitude_vector", {}):
            raise ValueError(f"{name}: DoRA adapters cannot be written as a plain LoRA")
        lin_a, lin_b = module.lora_A[adapter_name], module.lora_B[adapter_name]
        if not isinstance(lin_a, nn.Linear) or not isinstance(lin_b, nn.Linear):
            raise ValueError(f"{name}: only nn.Linear LoRA layers are supported, got {type(lin_a).__name__}")
        if lin_b.bias is not None:
            raise ValueError(f"{name}: LoRA with lora_bias=True cannot be written in this format")
        path = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        rank = int(lin_a.weight.shape[0])
        alpha = float(module.lora_alpha[adapter_name])
        if module.use_rslora.get(adapter_name, False):
            alpha = alpha * rank / math.sqrt(rank)
        layers[path] = LoraWeights(lin_a.weight.detach().clone(), lin_b.weight.detach().clone(), alpha)
    if not layers:
        raise ValueError(f"lora_from_peft: no layer holds adapter {adapter_name!r}")
    return LoraFile(layers=layers, source_format="peft-model")


def _target_linear(model: nn.Module, path: str) -> nn.Module | str:
    """Return the nn.Linear at `path` (unwrapping a peft base_layer) or a reason why there is none."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return "no such module in the model"
    base = getattr(module, "base_layer", None)
    if isinstance(base, nn.Linear):
        module = base
    if not isinstance(module, nn.Linear):
        return f"module is {type(module).__name__}, not nn.Linear"
    return module


def _check_fit(model: nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> None:
    """Raise LoraMismatchError listing the first mismatches when any LoRA layer does not fit the model."""
    for lora, _ in loras:
        problems: list[str] = []
        for name, w in lora.layers.items():
            target = _target_linear(model, name)
            if isinstance(target, str):
                problems.append(f"{name}: {target}")
                continue
            want_a = (w.rank, target.in_features)
            want_b = (target.out_features, w.rank)
            if tuple(w.A.shape) != want_a or tuple(w.B.shape) != want_b:
                problems.append(
                    f"{name}: lora_A {tuple(w.A.shape)} / lora_B {tuple(w.B.shape)} but the layer is "
                    f"Linear(in={target.in_features}, out={target.out_features}) (needs {want_a} / {want_b})"
                )
        if problems:
            listed = "; ".join(problems[:_MAX_LISTED])
            more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
            raise LoraMismatchError(
                f"LoRA {lora.describe()} does not fit this model: {len(problems)} of {len(lora.layers)} layers "
                f"mismatch: {listed}{more}. Nothing was applied. The LoRA was most likely trained for a different "
                "model (another LTX-2 version or size): use a LoRA trained on this base model."
            )


class _Delta:
    """Concatenated low-rank factors for one Linear; moves itself to the input's device on first use."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Keep A_cat [R, in] and strength-scaled B_cat [out, R]."""
        self.a = a
        self.b = b

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: output + B_cat(A_cat(x)), computed in the factors' dtype."""
        x = args[0] if args else kwargs["input"]
        if self.a.device != x.device:
            self.a, self.b = self.a.to(x.device), self.b.to(x.device)
        delta = F.linear(F.linear(x.to(self.a.dtype), self.a), self.b)
        return output + delta.to(output.dtype)


class LoraPatch:
    """Handle of an applied LoRA stack: `remove()` (or leaving the `with` block) restores the model exactly."""

    def __init__(self, model: nn.Module, handles: list[torch.utils.hooks.RemovableHandle], modules: list[str]) -> None:
        """Remember the hooks so they can be removed."""
        self._model = model
        self._handles = handles
        self.modules = modules

    @property
    def active(self) -> bool:
        """Whether the hooks are still installed."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook of this patch (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        patches = getattr(self._model, "_editctrl_lora_patches", None)
        if patches is not None and self in patches:
            patches.remove(self)

    def __enter__(self) -> LoraPatch:
        """Context-manager entry: the patch is already applied."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Context-manager exit: remove the patch."""
        self.remove()

    def __len__(self) -> int:
        """Number of patched Linear modules."""
        return len(self.modules)


def _factor_dtype(module: nn.Linear) -> torch.dtype:
    """Compute dtype for the low-rank path: the layer's float dtype, else bf16 (quantised weights)."""
    dt = module.weight.dtype
    return dt if dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.bfloat16


def apply_loras(model: nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> LoraPatch:
    """Apply a stack of (LoraFile, strength) to `model` as removable forward hooks; strict about fit.

    Every LoRA is checked against the model before anything is installed, so a mismatch raises
    LoraMismatchError and leaves the model untouched. Strength 0 entries are skipped (output stays bit-exact).
    """
    loras = [(lora, float(strength)) for lora, strength in loras]
    for lora, strength in loras:
        if not isinstance(lora, LoraFile):
            raise TypeError(f"apply_loras expects (LoraFile, strength) pairs, got {type(lora).__name__}")
        if not math.isfinite(strength):
            raise ValueError(f"LoRA strength must be finite, got {strength}")
    _check_fit(model, loras)
    per_module: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for lora, strength in loras:
        if strength == 0.0:
            continue
        for name, w in lora.layers.items():
            per_module.setdefault(name, []).append((w.A, w.B * (strength * w.scale)))
    handles: list[torch.utils.hooks.RemovableHandle] = []
    for name, pairs in per_module.items():
        target = _target_linear(model, name)
        assert isinstance(target, nn.Linear)
        dt, dev = _factor_dtype(target), target.weight.device
        a = torch.cat([p[0].to(torch.float32) for p in pairs], dim=0).to(dev, dt)
        b = torch.cat([p[1].to(torch.float32) for p in pairs], dim=1).to(dev, dt)
        handles.append(target.register_forward_hook(_Delta(a, b), with_kwargs=True))
    patch = LoraPatch(model, handles, sorted(per_module))
    if not hasattr(model, "_editctrl_lora_patches"):
        model._editctrl_lora_patches = []
    model._editctrl_lora_patches.append(patch)
    return patch


def remove_loras(model: nn.Module) -> int:
    """Remove every LoRA patch `apply_loras` installed on `model`; returns how many were removed."""
    patches = list(getattr(model, "_editctrl_lora_patches", []))
    for p in patches:
        p.remove()
    return len(patches)
