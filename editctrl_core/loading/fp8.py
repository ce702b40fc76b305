"""fp8 checkpoints: float8 weights stay stored in float8, every Linear computes in the activation dtype (bf16).

Layouts read (all seen in the wild for LTX-2 and other ComfyUI models):

- plain cast: ``<layer>.weight`` (and sometimes ``<layer>.bias``) stored as ``float8_e4m3fn`` / ``float8_e5m2`` with no
  scale (ltx-core's ``fp8_cast`` policy writes these);
- scaled: ``<layer>.weight_scale`` (ltx-core / diffusers / Lightricks' ``*-fp8`` files, e.g. ``ltx-2.3-22b-dev-fp8``)
  or ``<layer>.scale_weight`` (ComfyUI's older ``*_fp8_scaled`` files): weight = fp8 value x scale, scale a float32
  scalar or one value per output row;
- ``<layer>.input_scale`` / ``<layer>.scale_input``: activation scales for fp8 matmuls; unused when computing in
  bf16, dropped;
- markers: a ``scaled_fp8`` tensor (ComfyUI) and per-layer ``<layer>.comfy_quant`` tensors (UTF-8 JSON such as
  ``{"format": "float8_e4m3fn"}``); any other format (nvfp4, int8, ...) is refused with the layer named.

`strict_load_fp8` is a drop-in for `models.strict_load`: same strict key/shape check (the scale and marker keys are
accounted for, not "unexpected"), but float8 tensors are kept in float8 and each Linear holding them becomes an
`FP8Linear`, which upcasts weight (x scale) and bias to the input's dtype per call. `.to(dtype)` on the model keeps
the float8 storage and the float32 scales (see `FP8Linear._apply`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_SCALE_SUFFIXES = (".weight_scale", ".scale_weight")
INPUT_SCALE_SUFFIXES = (".input_scale", ".scale_input")
QUANT_MARKER_SUFFIX = ".comfy_quant"
SCALED_FP8_MARKER = "scaled_fp8"
SUPPORTED_FORMATS = ("float8_e4m3fn", "float8_e5m2")


def _error(message: str) -> Exception:
    """The loader's error type (`models.ModelLoadError`), imported late so `models` may import this module."""
    from .models import ModelLoadError

    return ModelLoadError(message)


def is_fp8(tensor: torch.Tensor) -> bool:
    """Whether a tensor is stored in a float8 dtype."""
    return tensor.dtype in FP8_DTYPES


def has_fp8(state: Mapping[str, Any]) -> bool:
    """Whether a state dict (tensors) or a safetensors header (key -> (shape, dtype string)) holds float8 tensors."""
    for value in state.values():
        if isinstance(value, torch.Tensor):
            if is_fp8(value):
                return True
        elif isinstance(value, tuple) and len(value) == 2 and "F8" in str(value[1]).upper():
            return True
    return False


@dataclass
class QuantInfo:
    """What `split_quantization` took out of a state dict: weight scales (keyed by weight key) and dropped keys."""

    weight_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def _marker_format(key: str, value: torch.Tensor) -> str:
    """The quantisation format named by a `.comfy_quant` marker tensor (UTF-8 JSON stored as uint8)."""
    try:
        text = bytes(value.to(torch.uint8).flatten().tolist()).decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _error(f"{key} is not a readable quantisation marker ({exc})") from exc
    if not isinstance(data, dict) or "format" not in data:
        raise _error(f"{key} names no quantisation format: {text[:200]!r}")
    return str(data["format"])


def split_quantization(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], QuantInfo]:
    """Separate fp8 scales and format markers from the weights; refuse quantisation formats other than fp8."""
    rest: dict[str, torch.Tensor] = {}
    info = QuantInfo()
    for key, value in state.items():
        scale_suffix = next((s for s in WEIGHT_SCALE_SUFFIXES if key.endswith(s)), None)
        if scale_suffix is not None:
            info.weight_scales[key[: -len(scale_suffix)] + ".weight"] = value
        elif key.endswith(INPUT_SCALE_SUFFIXES) or key == SCALED_FP8_MARKER or key.endswith("." + SCALED_FP8_MARKER):
            info.dropped.append(key)
        elif key.endswith(QUANT_MARKER_SUFFIX):
            fmt = _marker_format(key, value)
            if fmt not in SUPPORTED_FORMATS:
                raise _error(f"layer {key[: -len(QUANT_MARKER_SUFFIX)]} is quantised as {fmt!r}; only "
                             f"{', '.join(SUPPORTED_FORMATS)} weights are supported. Use the bf16 or fp8 release.")
            info.dropped.append(key)
        else:
            rest[key] = value
    for weight_key, scale in info.weight_scales.items():
        weight = rest.get(weight_key)
        if weight is None:
            raise _error(f"fp8 scale for {weight_key} but the file has no such weight")
        if not is_fp8(weight):
            raise _error(f"{weight_key} has a scale but is stored as {weight.dtype}, not float8 "
                         "(int8/other quantisations are not supported)")
        if scale.numel() not in (1, weight.shape[0]):
            raise _error(f"fp8 scale of {weight_key} has shape {tuple(scale.shape)}; expected a scalar or one value "
                         f"per output row ({weight.shape[0]})")
    return rest, info


class FP8Linear(nn.Linear):
    """An nn.Linear whose weight (and bias) stay in float8; each call upcasts them (x scale) to the input's dtype."""

    weight_scale: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b with W = float8 weight x scale, both upcast to x's dtype and device."""
        return F.linear(x, self.dequantized_weight(x.dtype, x.device), self._bias(x.dtype, x.device))

    def dequantized_weight(self, dtype: torch.dtype = torch.bfloat16, device: torch.device | None = None) -> torch.Tensor:
        """The weight as a `dtype` tensor (float8 value x scale)."""
        w = self.weight.to(device=device or self.weight.device, dtype=dtype)
        scale = self.weight_scale
        if scale is not None:
            s = scale.to(device=w.device, dtype=dtype)
            w = w * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))
        return w

    def _bias(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """The bias in the compute dtype (float8 biases are plain casts)."""
        return None if self.bias is None else self.bias.to(device=device, dtype=dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FP8Linear:
        """Apply device moves but keep float8 storage and the float32 scale across `.to(dtype)` / `.half()`."""
        kept = {name: t.dtype for name, t in (("weight", self.weight), ("bias", self.bias))
                if t is not None and is_fp8(t)}
        scale_dtype = None if self.weight_scale is None else self.weight_scale.dtype
        super()._apply(fn, recurse)
        for name, dtype in kept.items():
            param = getattr(self, name)
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
        if scale_dtype is not None and self.weight_scale.dtype != scale_dtype:
            self.weight_scale = self.weight_scale.to(scale_dtype)
        return self

    def extra_repr(self) -> str:
        """Linear's repr plus the storage dtype and whether a scale is used."""
        scaled = "scaled" if self.weight_scale is not None else "unscaled"
        return f"{super().extra_repr()}, storage={str(self.weight.dtype).replace('torch.', '')} ({scaled})"


def convert_fp8_linears(model: nn.Module, weight_scales: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Turn every Linear holding float8 weights into an `FP8Linear` (attaching its scale); returns their names."""
    weight_scales = dict(weight_scales or {})
    converted: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not is_fp8(module.weight):
            continue
        prefix = f"{name}." if name else ""
        scale = weight_scales.pop(prefix + "weight", None)
        module.__class__ = FP8Linear
        module.register_buffer("weight_scale", None if scale is None else scale.detach().to(torch.float32).clone(),
                               persistent=False)
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        converted.append(name)
    if weight_scales:
        raise _error(f"fp8 scales for tensors that are not float8 Linear weights: {sorted(weight_scales)[:5]}")
    stray = [n for n, p in model.named_parameters() if is_fp8(p) and n.rsplit(".", 1)[0] not in converted]
    if stray:
        raise _error(f"float8 tensors outside Linear layers are not supported: {stray[:5]}")
    return converted


def fp8_summary(model: nn.Module) -> dict[str, int]:
    """Counts for logs/tests: FP8Linear layers, bytes held in float8, bytes in other parameters."""
    fp8_bytes = other = layers = 0
    for module in model.modules():
        if isinstance(module, FP8Linear):
            layers += 1
    for p in model.parameters():
        if is_fp8(p):
            fp8_bytes += p.numel() * p.element_size()
        else:
            other += p.numel() * p.element_size()
    return {"fp8_layers": layers, "fp8_bytes": fp8_bytes, "other_bytes": other}


def strict_load_fp8(module: nn.Module, state: dict[str, torch.Tensor], *, what: str,
                    dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Drop-in for `models.strict_load` that keeps float8 weights in float8 (computing in `dtype`) and reads scales."""
    from .models import check_state_matches, strict_load

    rest, quant = split_quantization(state)
    if not has_fp8(rest):
        return strict_load(module, rest, what=what, dtype=dtype, device=device)
    check_state_matches(module, rest, f"{what} (fp8)")
    cast = {k: (v if is_fp8(v) or dtype is None or not v.is_floating_point() else v.to(dtype)) for k, v in rest.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    convert_fp8_linears(module, quant.weight_scales)
    return module.to(device)


def quantize_fp8(state: Mapping[str, torch.Tensor], select: Callable[[str, torch.Tensor], bool], *,
                 scaled: bool = True, style: str = "ltx", fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                 input_scales: bool = False, markers: bool = False) -> dict[str, torch.Tensor]:
    """Quantise the 2-D weights `select` picks to float8 (used to write test checkpoints in the released layouts).

    `scaled`: per-tensor scale max|W| / fp8_max stored as `<layer>.weight_scale` (`style="ltx"`) or
    `<layer>.scale_weight` (`style="comfy"`, plus the `scaled_fp8` marker); unscaled: a plain cast. `input_scales`
    adds unit activation scales, `markers` adds ComfyUI's per-layer `.comfy_quant` JSON markers.
    """
    if style not in ("ltx", "comfy"):
        raise ValueError(f"style must be 'ltx' or 'comfy', got {style!r}")
    fmax = torch.finfo(fp8_dtype).max
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not (key.endswith(".weight") and value.ndim == 2 and value.is_floating_point() and select(key, value)):
            out[key] = value
            continue
        layer = key[: -len(".weight")]
        w = value.detach().to(torch.float32)
        if scaled:
            scale = (w.abs().amax() / fmax).clamp(min=1e-12)
            out[key] = (w / scale).clamp(-fmax, fmax).to(fp8_dtype).contiguous()
            out[layer + (".weight_scale" if style == "ltx" else ".scale_weight")] = scale.reshape(())
        else:
            out[key] = w.clamp(-fmax, fmax).to(fp8_dtype).contiguous()
        if input_scales:
            out[layer + (".input_scale" if style == "ltx" else ".scale_input")] = torch.ones(())
        if markers:
            blob = json.dumps({"format": str(fp8_dtype).replace("torch.", "")}).encode()
            out[layer + QUANT_MARKER_SUFFIX] = torch.tensor(list(blob), dtype=torch.uint8)
    if scaled and style == "comfy":
        prefix = next((k.split("transformer_blocks.")[0] for k in out if "transformer_blocks." in k), "")
        out[prefix + SCALED_FP8_MARKER] = torch.empty(0, dtype=fp8_dtype)
    return out
