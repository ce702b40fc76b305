"""EditCtrl adapters for the SCD decoder: local context module, global context embedder, strict adapter files.

- :class:`LocalContextModule` is EditCtrl's local control branch, VACE-style: it reads the masked+dilated tokens
  twice — the context (source latents with the edit region blanked, plus a mask channel) and the current noisy
  latents x_t of the same tokens — and returns one hint per target decoder block ``{block: [B,N,model_dim]}``, to
  be added to the decoder's hidden states after the FFN of that block. Its hidden state starts as
  ``proj_in(context) + proj_noisy(x_t)`` (VACE: ``before_proj(context) + x``); target block j of T reads the output
  of its own transformer block ``ceil((j+1)·num_blocks/T) - 1`` (one block per target when num_blocks == T, as in
  VACE), through its own zero-initialised projection. Its AdaLN conditioning is recomputed from σ on every call.
  Positions: it computes its own 3D RoPE from token coordinates ``coords [B,3,N]`` or ``[3,N]`` (latent frame,
  row, column of each gathered token; :func:`token_coords` builds them from the sampler's flat ``idx``), so it does
  not depend on LTX's rope layout (split/interleaved) or head count.
- :class:`GlobalContextEmbedder` reads EditCtrl's global input: VAE latents of ~8 frames of the masked clip at
  low resolution (9 frames, ~256 px on the long side, edit region blanked to grey, plus the edit-mask channel;
  built by :func:`editctrl_core.edit.context.global_input`), average-pooled only when they exceed ``max_tokens``
  tokens (see :meth:`GlobalContextEmbedder.pool`), and embeds them with a copy of the base model's patch
  embedding (``proj_in``, see
  :meth:`GlobalContextEmbedder.copy_patch_embedding`), as EditCtrl does; the mask channel's column starts at
  zero. It owns one zero-initialised cross-attention branch per target decoder block, whose output is added next
  to that block's text cross-attention output.
- :func:`save_adapter` / :func:`load_adapter`: safetensors with kind, layout, config, base model id and split layer
  in the metadata; loading is strict and refuses anything that does not match, naming the difference (a file of an
  older module layout is refused with what changed and how to retrain). Never unpickles.

Decoder block indices are relative to the decoder (0 = first block after the SCD split).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..loading.scd_metadata import options_from_metadata
from ..loading.weights_file import check_container, save_safetensors

FORMAT_NAME = "editctrl-adapter"
FORMAT_VERSION = 1
META_PREFIX = "editctrl."

_Device = torch.device | str | None


def _every_second_block(num_decoder_blocks: int = 16) -> tuple[int, ...]:
    """The seed's residual placement: decoder blocks 0, 2, 4, ..."""
    return tuple(range(0, num_decoder_blocks, 2))


Problems = list[tuple[str, str]]


def _target_problems(values: Mapping[str, Any]) -> Problems:
    """The target-block list's problem, if given and not a non-empty list of distinct decoder block indices >= 0."""
    if "target_blocks" not in values:
        return []
    targets = [int(t) for t in values["target_blocks"]]
    if targets and min(targets) >= 0 and len(set(targets)) == len(targets):
        return []
    return [("target_blocks", f"must be a non-empty list of distinct decoder block indices >= 0; got {targets}")]


def _positive_problems(values: Mapping[str, Any], names: tuple[str, ...]) -> Problems:
    """(field, problem) for each of the named fields given in `values` that is not a positive integer."""
    return [(name, f"must be a positive integer; got {values[name]!r}") for name in names if name in values
            and (isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] <= 0)]


def raise_first_problem(config: object, problems: Problems) -> None:
    """Raise ValueError('<Config>.<field> <problem>') for the first of a config's problems, if any."""
    if problems:
        name, problem = problems[0]
        raise ValueError(f"{type(config).__name__}.{name} {problem}")


@dataclass(frozen=True)
class LocalContextConfig:
    """Shape of a LocalContextModule (defaults: the seed's 2 blocks × 512, 8×64 heads, for LTX-2.0 19B split at 32).

    ``in_channels`` is the context's width (latent channels + the edit-mask channel); the noisy latents x_t it also
    reads have ``in_channels - 1`` (:attr:`noisy_channels`) channels.
    """

    in_channels: int = 129
    width: int = 512
    num_blocks: int = 2
    heads: int = 8
    head_dim: int = 64
    text_dim: int = 4096
    model_dim: int = 4096
    target_blocks: tuple[int, ...] = field(default_factory=_every_second_block)
    mlp_ratio: int = 4
    rope_theta: float = 10000.0
    timestep_scale: float = 1000.0

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> Problems:
        """(field, problem) for each failed check; fields missing from `values` go unchecked, so a caller that fills
        the model-dependent ones later (the training config) can check the rest with these same rules now."""
        found = _positive_problems(values, ("in_channels", "width", "num_blocks", "heads", "head_dim", "text_dim",
                                            "model_dim", "mlp_ratio"))
        head_dim, in_channels = values.get("head_dim"), values.get("in_channels")
        if isinstance(head_dim, int) and head_dim % 2:
            found.append(("head_dim", f"must be even for RoPE; got {head_dim}"))
        if isinstance(in_channels, int) and in_channels < 2:
            found.append(("in_channels", f"counts the latent channels plus the mask channel (>= 2); got {in_channels}"))
        return found + _target_problems(values)

    def __post_init__(self) -> None:
        """Validate the fields (:meth:`problems`); keep target_blocks sorted."""
        raise_first_problem(self, self.problems(vars(self)))
        object.__setattr__(self, "target_blocks", tuple(sorted(int(t) for t in self.target_blocks)))

    @property
    def noisy_channels(self) -> int:
        """Channels of the noisy latents x_t (the context's, without the mask channel)."""
        return self.in_channels - 1

    def hint_sources(self) -> dict[int, int]:
        """{target block: index of the module block whose output makes its hint}: target j of T reads block
        ceil((j+1)·num_blocks/T) - 1, so hints come from increasing depth and the last target reads the last block
        (VACE's one block per target when num_blocks == T)."""
        t = len(self.target_blocks)
        return {b: -(-(j + 1) * self.num_blocks // t) - 1 for j, b in enumerate(self.target_blocks)}


@dataclass(frozen=True)
class GlobalContextConfig:
    """Shape of a GlobalContextEmbedder (defaults: LTX-2.0 19B, 16 decoder blocks, ≤ 256 context tokens)."""

    in_channels: int = 129
    model_dim: int = 4096
    max_tokens: int = 256
    heads: int = 8
    head_dim: int = 128
    target_blocks: tuple[int, ...] = field(default_factory=lambda: tuple(range(16)))

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> Problems:
        """(field, problem) for each failed check on the fields given in `values` (see LocalContextConfig)."""
        return (_positive_problems(values, ("in_channels", "model_dim", "max_tokens", "heads", "head_dim"))
                + _target_problems(values))

    def __post_init__(self) -> None:
        """Validate the fields (:meth:`problems`); keep target_blocks sorted."""
        raise_first_problem(self, self.problems(vars(self)))
        object.__setattr__(self, "target_blocks", tuple(sorted(int(t) for t in self.target_blocks)))


def _config_to_dict(config: LocalContextConfig | GlobalContextConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def field_mismatch(cls: type, data: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(unknown, missing) field names of `data` against dataclass `cls` (a stored config must match exactly)."""
    names = {f.name for f in fields(cls)}
    return sorted(set(data) - names), sorted(names - set(data))


def _config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Build a config from a dict, refusing unknown or missing fields."""
    unknown, missing = field_mismatch(cls, data)
    if unknown or missing:
        raise ValueError(f"{cls.__name__} fields do not match: unknown {unknown}, missing {missing}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def token_coords(idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(frame, row, column) float coordinates [3,N] of flat token indices ``idx`` into an (f,h,w) token grid."""
    f, h, w = grid
    idx = idx.long().flatten()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= f * h * w):
        raise ValueError(f"token indices must lie in [0, {f * h * w}) for grid {grid}")
    return torch.stack([idx // (h * w), (idx // w) % h, idx % w]).to(torch.float32)


def local_context_tokens(background: torch.Tensor, edit_mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """LocalContextModule input [B,N,C+1]: the background latents (edit region already blanked to the grey-clip
    latents, ``context.blank_background``) gathered at flat ``idx``, plus the edit-mask channel."""
    b, c, f, h, w = background.shape
    if tuple(edit_mask.shape) != (f, h, w):
        raise ValueError(f"edit_mask must be [f,h,w] = {(f, h, w)}; got {tuple(edit_mask.shape)}")
    idx = idx.long().to(background.device)
    gathered = background.flatten(2).transpose(1, 2)[:, idx]
    channel = edit_mask.reshape(-1).to(device=background.device, dtype=background.dtype)[idx]
    return torch.cat([gathered, channel.view(1, -1, 1).expand(b, -1, 1)], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B,dim] of scalar timesteps [B] (cos half first, as in LTX/PixArt)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def rope_3d(coords: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Own 3D RoPE: (cos, sin) [B,1,N,head_dim/2] from coords [B,3,N]; head_dim/2 pairs split over (f,h,w).

    Each axis gets ``(head_dim/2)//3`` rotation pairs with frequencies ``theta^(-k/n)``; leftover pairs stay unrotated.
    """
    pairs = head_dim // 2
    per_axis = pairs // 3
    b, _, n = coords.shape
    if per_axis == 0:
        ones = torch.ones(b, 1, n, pairs, device=coords.device)
        return ones, torch.zeros_like(ones)
    freqs = theta ** (-torch.arange(per_axis, dtype=torch.float32, device=coords.device) / per_axis)
    angles = (coords.float().transpose(1, 2)[..., None] * freqs).flatten(2)
    angles = F.pad(angles, (0, pairs - 3 * per_axis))
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x [B,H,N,D] in the split-half layout (pair i = elements i and i + D/2)."""
    cos, sin = rope
    first, second = x.float().chunk(2, dim=-1)
    out = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return out.to(x.dtype)


def key_keep_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool keep-mask [B,T] from a bool or 1/0 mask [B,T] (1 = attend) or LTX's additive bias [B,1,T] (0 / -10000)."""
    if mask.ndim == 3:
        if mask.shape[1] != 1:
            raise ValueError(f"an additive key bias must be [B,1,T]; got {tuple(mask.shape)}")
        return mask[:, 0] > -1.0
    if mask.ndim != 2:
        raise ValueError(f"a key mask must be [B,T] (keep-mask) or [B,1,T] (additive bias); got {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask > 0.5


class _Attention(nn.Module):
    """Multi-head attention with RMS-normed q/k, optional RoPE on q/k, optional key padding mask."""

    def __init__(self, query_dim: int, kv_dim: int, heads: int, head_dim: int, device: _Device = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, device=device)
        self.to_k = nn.Linear(kv_dim, inner, device=device)
        self.to_v = nn.Linear(kv_dim, inner, device=device)
        self.norm_q = nn.RMSNorm(inner, eps=1e-6, device=device)
        self.norm_k = nn.RMSNorm(inner, eps=1e-6, device=device)
        self.to_out = nn.Linear(inner, query_dim, device=device)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values [B,H,M,Dh] (cacheable when the context is fixed)."""
        k = self.norm_k(self.to_k(context)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, key_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Attention of x over itself (context None) or over context / precomputed kv."""
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = kv if kv is not None else self.kv(x if context is None else context)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        attn_mask = None
        valid = None
        if key_mask is not None:
            keep = key_keep_mask(key_mask.to(x.device))
            valid = keep.any(dim=-1)
            keep = keep | ~valid[:, None]
            attn_mask = keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.to_out(out.transpose(1, 2).flatten(2))
        if valid is not None:
            out = out * valid[:, None, None].to(out.dtype)
        return out


class _LocalBlock(nn.Module):
    """Transformer block of the local module: AdaLN-modulated self-attention (RoPE), text cross-attention, MLP."""

    def __init__(self, cfg: LocalContextConfig, device: _Device = None) -> None:
        super().__init__()
        w = cfg.width
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6, device=device)
        self.attn1 = _Attention(w, w, cfg.heads, cfg.head_dim, device)
        self.norm2 = nn.LayerNorm(w, eps=1e-6, device=device)
        self.attn2 = _Attention(w, cfg.text_dim, cfg.heads, cfg.head_dim, device)
        self.norm3 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6, device=device)
        self.ff = nn.Sequential(nn.Linear(w, cfg.mlp_ratio * w, device=device), nn.GELU(approximate="tanh"),
                                nn.Linear(cfg.mlp_ratio * w, w, device=device))
        self.scale_shift_table = nn.Parameter(torch.empty(6, w, device=device))
        bound = (3.0 / w) ** 0.5
        nn.init.uniform_(self.scale_shift_table, -bound, bound)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                text: torch.Tensor | None, text_mask: torch.Tensor | None,
                text_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One block: modulated self-attention, text cross-attention (or its cached text_kv), modulated MLP."""
        mods = (self.scale_shift_table[None] + temb.unflatten(-1, (6, -1))).unsqueeze(2).unbind(1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa * self.attn1(self.norm1(x) * (1 + scale_msa) + shift_msa, rope=rope)
        x = x + self.attn2(self.norm2(x), text, key_mask=text_mask, kv=text_kv)
        return x + gate_mlp * self.ff(self.norm3(x) * (1 + scale_mlp) + shift_mlp)


@dataclass
class LocalPrepared:
    """What a :class:`LocalContextModule` computes once per edit (fixed context, positions and text)."""

    context: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    text_kv: list[tuple[torch.Tensor, torch.Tensor]]
    text_mask: torch.Tensor | None


class LocalContextModule(nn.Module):
    """EditCtrl local path (VACE-style control branch): a small transformer over the masked+dilated tokens, fed the
    blanked context and the current noisy latents x_t, that emits one zero-initialised hint per target block.

    ``forward(tokens [B,N,in_channels], noisy [B,N,in_channels-1], coords [B,3,N] | [3,N], text [B,T,text_dim],
    sigma [B] | float, text_mask) -> {decoder_block: hint [B,N,model_dim]}``. ``tokens`` is the context
    (:func:`local_context_tokens`), ``noisy`` the x_t of the same tokens at this step; the hidden state starts as
    ``proj_in(tokens) + proj_noisy(noisy)``. ``text`` is what the decoder blocks cross-attend to (LTX-2.0: the
    caption projection's output, width = model inner dim); ``text_mask`` is a keep-mask [B,T] (bool or 1/0) or
    LTX's additive bias [B,1,T], or None. ``sigma`` is the current step's noise level in [0,1]; the AdaLN modulation
    is recomputed from it on every call. Target block j reads the output of module block
    ``config.hint_sources()[j]`` through its own zero-initialised projection, so a fresh module adds exact zeros.
    What does not change between steps (context embedding, rotary table, text keys/values) can be computed once
    with :meth:`prepare` and reused by :meth:`step`; ``forward`` is ``step(prepare(...), ...)``.
    """

    ADAPTER_KIND = "local_context"
    LAYOUT = 2

    def __init__(self, config: LocalContextConfig | None = None, device: _Device = None) -> None:
        super().__init__()
        cfg = config or LocalContextConfig()
        self.config = cfg
        w = cfg.width
        self.proj_in = nn.Linear(cfg.in_channels, w, device=device)
        self.proj_noisy = nn.Linear(cfg.noisy_channels, w, device=device)
        self.time_embed = nn.Sequential(nn.Linear(256, w, device=device), nn.SiLU(), nn.Linear(w, w, device=device))
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w, device=device))
        self.blocks = nn.ModuleList(_LocalBlock(cfg, device) for _ in range(cfg.num_blocks))
        self.norm_out = nn.LayerNorm(w, eps=1e-6, device=device)
        self.out_proj = nn.ModuleDict({str(i): nn.Linear(w, cfg.model_dim, device=device) for i in cfg.target_blocks})
        for proj in self.out_proj.values():
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    @property
    def target_blocks(self) -> tuple[int, ...]:
        """Decoder blocks (relative to the split) that receive a hint."""
        return self.config.target_blocks

    def prepare(self, tokens: torch.Tensor, coords: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> LocalPrepared:
        """The per-edit part: context embedding, rotary table and text keys/values of every block."""
        cfg = self.config
        b, n, c = tokens.shape
        if c != cfg.in_channels:
            raise ValueError(f"tokens have {c} channels; this module expects in_channels={cfg.in_channels}")
        if text.shape[-1] != cfg.text_dim:
            raise ValueError(f"text has width {text.shape[-1]}; this module expects text_dim={cfg.text_dim}")
        if coords.ndim == 2:
            coords = coords.unsqueeze(0).expand(b, -1, -1)
        if coords.shape != (b, 3, n):
            raise ValueError(f"coords must be [3,N] or [B,3,N] = {(b, 3, n)}; got {tuple(coords.shape)}")
        dtype = self.proj_in.weight.dtype
        rope = rope_3d(coords.to(tokens.device), cfg.head_dim, cfg.rope_theta)
        text = text.to(dtype)
        return LocalPrepared(self.proj_in(tokens.to(dtype)), rope, [blk.attn2.kv(text) for blk in self.blocks],
                             text_mask)

    def step(self, prepared: LocalPrepared, noisy: torch.Tensor, sigma: torch.Tensor | float
             ) -> dict[int, torch.Tensor]:
        """Hints {decoder block: [B,N,model_dim]} for this step's noisy latents x_t [B,N,in_channels-1] at σ."""
        cfg = self.config
        context = prepared.context
        b, n, _ = context.shape
        if noisy.ndim != 3 or noisy.shape[1] != n or noisy.shape[2] != cfg.noisy_channels:
            raise ValueError(f"noisy latents must be [B,{n},{cfg.noisy_channels}] (x_t of the {n} gathered tokens); "
                             f"got {tuple(noisy.shape)}")
        if noisy.shape[0] != b:
            raise ValueError(f"noisy latents have batch {noisy.shape[0]}, the prepared context {b}")
        dtype = self.proj_in.weight.dtype
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=context.device).flatten()
        if sig.numel() == 1:
            sig = sig.expand(b)
        if sig.numel() != b:
            raise ValueError(f"sigma must be a scalar or one value per batch element; got {sig.numel()} for batch {b}")
        mods = self.adaln(self.time_embed(timestep_embedding(sig * cfg.timestep_scale, 256).to(dtype)))
        x = context + self.proj_noisy(noisy.to(device=context.device, dtype=dtype))
        sources = cfg.hint_sources()
        wanted = {i: [t for t, s in sources.items() if s == i] for i in set(sources.values())}
        hints: dict[int, torch.Tensor] = {}
        for i, (block, kv) in enumerate(zip(self.blocks, prepared.text_kv)):
            x = block(x, mods, prepared.rope, None, prepared.text_mask, text_kv=kv)
            if i in wanted:
                normed = self.norm_out(x)
                for t in wanted[i]:
                    hints[t] = self.out_proj[str(t)](normed)
        return {t: hints[t] for t in cfg.target_blocks}

    def forward(self, tokens: torch.Tensor, noisy: torch.Tensor, coords: torch.Tensor, text: torch.Tensor,
                sigma: torch.Tensor | float, text_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Hints {decoder block: [B,N,model_dim]} for the gathered tokens' context and noisy latents at σ."""
        return self.step(self.prepare(tokens, coords, text, text_mask), noisy, sigma)


def pooled_grid(frames: int, height: int, width: int, max_tokens: int = 256) -> tuple[int, int, int]:
    """Pooled (f', h', w') for an (f,h,w) grid with f'·h'·w' ≤ max_tokens, keeping the 3D structure.

    No pooling when the grid already fits. Otherwise the grid that minimises the largest per-axis reduction
    factor (every axis is shrunk about equally, so time and space keep their proportions); ties go to more
    tokens, then to more frames. Example: 16×16×24 at 256 → (5, 5, 10) = 250 tokens.
    """
    if min(frames, height, width, max_tokens) < 1:
        raise ValueError(f"grid and budget must be positive; got {(frames, height, width)} and {max_tokens}")
    if frames * height * width <= max_tokens:
        return frames, height, width
    best: tuple[float, int, int] | None = None
    choice = (1, 1, 1)
    for pf in range(1, min(frames, max_tokens) + 1):
        for ph in range(1, min(height, max_tokens // pf) + 1):
            pw = min(width, max_tokens // (pf * ph))
            if pw < 1:
                break
            key = (max(frames / pf, height / ph, width / pw), -(pf * ph * pw), -pf)
            if best is None or key < best:
                best, choice = key, (pf, ph, pw)
    return choice


class GlobalCrossAttention(nn.Module):
    """One decoder block's global-context branch (EditCtrl's ``editctrl_*`` layers): own Q/K/V with RMS-normed q/k,
    zero-initialised output projection; the context goes in as embedded, without a norm of its own."""

    def __init__(self, model_dim: int, heads: int, head_dim: int, device: _Device = None) -> None:
        super().__init__()
        self.attn = _Attention(model_dim, model_dim, heads, head_dim, device)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the (fixed per edit) context; cache them across steps."""
        return self.attn.kv(context.to(self.attn.to_k.weight.dtype))

    def forward(self, hidden: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Residual [B,N,model_dim] of hidden attending to the global context (or its cached kv)."""
        if kv is None:
            if context is None:
                raise ValueError("pass the global context or its cached kv")
            kv = self.kv(context)
        return self.attn(hidden.to(self.attn.to_q.weight.dtype), kv=kv, key_mask=context_mask)


class GlobalContextEmbedder(nn.Module):
    """EditCtrl global path: the low-resolution masked clip's latents (pooled on the 3D grid to ≤ max_tokens only
    when larger), embedded by a copy of the base model's patch embedding, plus one zero-initialised cross-attention
    branch per target block.

    ``forward(global_input [B,C+1,f',h',w']) -> context [B,M,model_dim]`` where ``global_input`` is
    :func:`editctrl_core.edit.context.global_input`: VAE latents of 9 frames of the clip at ~256 px with the edit region
    blanked to grey, plus the low-resolution edit mask as the last channel (M = prod(:func:`pooled_grid`)). As in
    EditCtrl the
    context tokens are ``patch_embed(low-resolution latents)`` with ``patch_embed`` a copy of the transformer's
    ``proj_in`` (:meth:`copy_patch_embedding`, or pass ``patch_embedding`` to the constructor; without it the layer
    keeps PyTorch's default init), no position features and no extra norm. The edit mask is appended as one more
    input channel, whose weight column starts at zero (so a copied embedder computes exactly EditCtrl's tokens and
    can learn to tell blanked from genuinely grey content). ``branch(block, hidden, context) -> residual`` for each
    target decoder block, where ``hidden`` is the block's normed hidden states as fed to its text cross-attention;
    add the residual to the text cross-attention output. Computed once per edit: the context and, through
    ``branch_kv``, each branch's keys/values.
    """

    ADAPTER_KIND = "global_context"
    LAYOUT = 3

    def __init__(self, config: GlobalContextConfig | None = None, device: _Device = None,
                 patch_embedding: nn.Linear | None = None) -> None:
        super().__init__()
        cfg = config or GlobalContextConfig()
        self.config = cfg
        self.patch_embed = nn.Linear(cfg.in_channels, cfg.model_dim, device=device)
        self.branches = nn.ModuleDict({str(i): GlobalCrossAttention(cfg.model_dim, cfg.heads, cfg.head_dim, device)
                                       for i in cfg.target_blocks})
        if patch_embedding is not None:
            self.copy_patch_embedding(patch_embedding)

    @torch.no_grad()
    def copy_patch_embedding(self, proj_in: nn.Linear) -> GlobalContextEmbedder:
        """Initialise ``patch_embed`` from the base model's patch embedding ``proj_in`` [model_dim, C] (EditCtrl's
        ``editctrl_patch_embedding = deepcopy(patch_embedding)``); the edit-mask column is set to zero. Shapes are
        checked on the meta device too (a training dry run), where there are no values to copy."""
        weight, bias = proj_in.weight, proj_in.bias
        c = self.config.in_channels - 1
        if tuple(weight.shape) != (self.config.model_dim, c):
            raise ValueError(f"patch embedding is {tuple(weight.shape)}; this embedder needs "
                             f"({self.config.model_dim}, {c}) (model width x latent channels)")
        own = self.patch_embed
        if weight.is_meta or own.weight.is_meta:
            return self
        own.weight.zero_()
        own.weight[:, :c].copy_(weight.detach().to(own.weight))
        if bias is None:
            own.bias.zero_()
        else:
            own.bias.copy_(bias.detach().to(own.bias))
        return self

    @property
    def target_blocks(self) -> tuple[int, ...]:
        """Decoder blocks (relative to the split) that have a global-context branch."""
        return self.config.target_blocks

    def pool(self, global_input: torch.Tensor) -> torch.Tensor:
        """Average-pool the global input [B,C+1,f',h',w'] (latents + edit-mask channel) to :func:`pooled_grid`
        under ``max_tokens`` (unchanged when it fits, as EditCtrl's 256x256 input does at the default budget)."""
        if global_input.ndim != 5 or global_input.shape[1] != self.config.in_channels:
            raise ValueError(f"the global input must be [B,{self.config.in_channels},f,h,w] (latents plus the "
                             f"edit-mask channel, editctrl_core.edit.context.global_input); got {tuple(global_input.shape)}")
        f, h, w = global_input.shape[2:]
        grid = pooled_grid(f, h, w, self.config.max_tokens)
        return global_input if grid == (f, h, w) else F.adaptive_avg_pool3d(global_input, grid)

    def forward(self, global_input: torch.Tensor) -> torch.Tensor:
        """Global context tokens [B,M,model_dim] from the global input (:func:`editctrl_core.edit.context.global_input`)."""
        pooled = self.pool(global_input.to(self.patch_embed.weight.dtype))
        return self.patch_embed(pooled.flatten(2).transpose(1, 2))

    def branch_module(self, block_index: int) -> GlobalCrossAttention:
        """The branch of one decoder block, or a KeyError naming the valid targets."""
        key = str(block_index)
        if key not in self.branches:
            raise KeyError(f"decoder block {block_index} has no global-context branch; "
                           f"targets are {list(self.config.target_blocks)}")
        return self.branches[key]

    def branch_kv(self, block_index: int, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys/values of one block's branch for a fixed context."""
        return self.branch_module(block_index).kv(context)

    def branch(self, block_index: int, hidden: torch.Tensor, context: torch.Tensor | None = None,
               context_mask: torch.Tensor | None = None,
               kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Residual [B,N,model_dim] of decoder block ``block_index``'s branch (zero for a fresh embedder)."""
        return self.branch_module(block_index)(hidden, context, context_mask, kv)


ADAPTER_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    LocalContextModule.ADAPTER_KIND: (LocalContextModule, LocalContextConfig),
    GlobalContextEmbedder.ADAPTER_KIND: (GlobalContextEmbedder, GlobalContextConfig),
}


class AdapterLoadError(ValueError):
    """An adapter file that cannot be used with this model/module; the message names the difference and the fix."""


# What each earlier module layout computed, and what the current one does instead (files without an
# 'editctrl.layout' entry are layout 1).
LAYOUT_CHANGES: dict[str, dict[int, str]] = {
    LocalContextModule.ADAPTER_KIND: {
        1: "its hints were computed from the blanked context alone, without the noisy latents x_t, all from the "
           "last block; the current LocalContextModule (layout 2) also reads x_t of the masked tokens, as "
           "EditCtrl's local module and VACE do (new proj_noisy weights, one hint per target block by depth)",
    },
    GlobalContextEmbedder.ADAPTER_KIND: {
        1: "it embedded the pooled background with a randomly initialised Linear plus position features and "
           "norms; the current GlobalContextEmbedder (layout 2) embeds it with a copy of the base model's patch "
           "embedding and no position features, as EditCtrl does",
        2: "it embedded the full-size background latents average-pooled to the token budget; the current "
           "GlobalContextEmbedder (layout 3) embeds VAE latents of 9 low-resolution frames (~256 px) of the masked "
           "clip plus the edit mask, as EditCtrl does (editctrl_core.edit.context.global_input)",
    },
}
_RETRAIN = {
    LocalContextModule.ADAPTER_KIND: "editctrl_local",
    GlobalContextEmbedder.ADAPTER_KIND: "editctrl_global",
}


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file's metadata declares."""

    kind: str
    config: dict[str, Any]
    base_model_id: str
    split_layer: int
    format_version: int
    scd_options: dict[str, Any] = field(default_factory=dict)
    layout: int = 1


def _kind_of(module: nn.Module) -> str:
    """Adapter kind of a module instance, or raise for an unsupported module."""
    kind = getattr(module, "ADAPTER_KIND", None)
    if kind not in ADAPTER_CLASSES or not isinstance(module, ADAPTER_CLASSES[kind][0]):
        raise TypeError(f"{type(module).__name__} is not an EditCtrl adapter module "
                        f"({', '.join(c.__name__ for c, _ in ADAPTER_CLASSES.values())})")
    return kind


def save_adapter(module: nn.Module, path: str | os.PathLike[str], base_model_id: str, split_layer: int,
                 scd_options: Mapping[str, str] | None = None) -> None:
    """Write an adapter as safetensors, with kind, config, base model id and split layer as JSON metadata (atomic);
    `scd_options` (`scd_metadata.options_metadata` of the split it was trained with) is stored as it is."""
    kind = _kind_of(module)
    if not isinstance(base_model_id, str) or not base_model_id:
        raise ValueError("base_model_id must be a non-empty string (e.g. 'ltx-2.0-19b')")
    if isinstance(split_layer, bool) or not isinstance(split_layer, int) or split_layer < 0:
        raise ValueError(f"split_layer must be an integer >= 0; got {split_layer!r}")
    metadata = {
        META_PREFIX + "format": json.dumps(FORMAT_NAME),
        META_PREFIX + "format_version": json.dumps(FORMAT_VERSION),
        META_PREFIX + "kind": json.dumps(kind),
        META_PREFIX + "layout": json.dumps(type(module).LAYOUT),
        META_PREFIX + "config": json.dumps(_config_to_dict(module.config), sort_keys=True),
        META_PREFIX + "base_model_id": json.dumps(base_model_id),
        META_PREFIX + "split_layer": json.dumps(split_layer),
        **dict(scd_options or {}),
    }
    save_safetensors(path, module.state_dict(), metadata)


def _check_container(path: Path) -> None:
    """Refuse files that are not safetensors before any parser touches them (pickles, zips, truncated headers)."""
    check_container(path, AdapterLoadError, "adapter",
                    "Re-export the weights with save_adapter (safetensors) and load that file.")


def _json_meta(path: Path, metadata: Mapping[str, str], name: str) -> Any:
    """Decode one JSON metadata entry, or raise AdapterLoadError naming it."""
    key = META_PREFIX + name
    if key not in metadata:
        raise AdapterLoadError(f"{str(path)!r} has no '{key}' metadata: it is not an EditCtrl adapter file "
                               "(LoRA files go through the LoRA loader); save adapters with save_adapter")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{str(path)!r}: metadata '{key}' is not valid JSON ({err}); the file is corrupt") from err


def read_adapter_metadata(path: str | os.PathLike[str]) -> AdapterInfo:
    """Read and validate an adapter file's metadata without loading its tensors."""
    path = Path(path)
    _check_container(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as err:
        raise AdapterLoadError(f"{str(path)!r} is not a readable safetensors file ({err}); the file is corrupt or "
                               "truncated - copy or download it again") from err
    fmt = _json_meta(path, metadata, "format")
    if fmt != FORMAT_NAME:
        raise AdapterLoadError(f"{str(path)!r} declares format {fmt!r}, expected {FORMAT_NAME!r}")
    version = _json_meta(path, metadata, "format_version")
    if version != FORMAT_VERSION:
        raise AdapterLoadError(f"{str(path)!r} has adapter format version {version}; this build reads version "
                               f"{FORMAT_VERSION}. Update the node pack (or re-save the adapter with this version)")
    kind = _json_meta(path, metadata, "kind")
    if kind not in ADAPTER_CLASSES:
        raise AdapterLoadError(f"{str(path)!r} has unknown adapter kind {kind!r}; known: {sorted(ADAPTER_CLASSES)}")
    config = _json_meta(path, metadata, "config")
    base = _json_meta(path, metadata, "base_model_id")
    split = _json_meta(path, metadata, "split_layer")
    if not isinstance(config, dict) or not isinstance(base, str) or isinstance(split, bool) or not isinstance(split, int):
        raise AdapterLoadError(f"{str(path)!r} has malformed adapter metadata (config must be an object, base model id "
                               "a string, split layer an integer); re-save it with save_adapter")
    layout = _json_meta(path, metadata, "layout") if META_PREFIX + "layout" in metadata else 1
    if isinstance(layout, bool) or not isinstance(layout, int) or layout < 1:
        raise AdapterLoadError(f"{str(path)!r} has a malformed '{META_PREFIX}layout' ({layout!r}); re-save it with "
                               "save_adapter")
    try:
        options = options_from_metadata({**metadata, "split_layer": str(split)})
    except ValueError as err:
        raise AdapterLoadError(f"{str(path)!r}: {err}") from err
    return AdapterInfo(kind, config, base, split, version, options, layout)


def check_layout(path: str | os.PathLike[str], info: AdapterInfo) -> None:
    """Refuse a file whose module layout is not this version's, saying what changed and how to retrain."""
    module_cls = ADAPTER_CLASSES[info.kind][0]
    current = module_cls.LAYOUT
    if info.layout == current:
        return
    name = Path(path).name
    if info.layout > current:
        raise AdapterLoadError(f"{str(path)!r} is a {module_cls.__name__} of layout {info.layout}, newer than this "
                               f"build's layout {current}; update the node pack")
    what = LAYOUT_CHANGES.get(info.kind, {}).get(info.layout, "its tensors belong to an earlier module design")
    raise AdapterLoadError(
        f"{str(path)!r} is a {module_cls.__name__} of the old layout {info.layout}: {what}. Its weights cannot be "
        f"reused. Retrain it with this version: the '{_RETRAIN[info.kind]}' stage of `python -m training.train` "
        f"(for the tiny model, `python -m training.recipes.tiny_synthetic --out weights/` rewrites {name}), then "
        "load the new file")


def _config_diff(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """'name: file=X, module=Y' for every field that differs."""
    names = sorted(set(expected) | set(actual))
    return [f"{n}: file={expected.get(n)!r}, module={actual.get(n)!r}" for n in names if expected.get(n) != actual.get(n)]


def load_adapter(path: str | os.PathLike[str], expected_base_model_id: str, expected_split_layer: int, *,
                 expected_kind: str | None = None, module: nn.Module | None = None,
                 expected_config: Mapping[str, Any] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """Load an adapter file strictly and return the module (built from the file's config unless ``module`` is given).

    A module built from the file lives on the CPU in the file's dtype; a given module is loaded in place (values
    cast to its dtype and device). ``device``/``dtype``, when given, move the result.

    Refused with :class:`AdapterLoadError` (message names the difference and what to do): a file that is not a
    safetensors adapter or is corrupt, a different kind, a file of an older module layout (:data:`LAYOUT_CHANGES`;
    retrain it), a different base model or split layer, a ``module`` whose config
    differs from the file's, ``expected_config`` fields (e.g. ``{"model_dim": 4096}``) that differ, and missing,
    unexpected or wrongly shaped tensors. The module is never partially loaded.
    """
    path = Path(path)
    info = read_adapter_metadata(path)
    if expected_kind is not None and info.kind != expected_kind:
        raise AdapterLoadError(f"{str(path)!r} is a {info.kind!r} adapter, not {expected_kind!r}; "
                               f"pick a {expected_kind} adapter file")
    check_layout(path, info)
    if info.base_model_id != expected_base_model_id:
        raise AdapterLoadError(
            f"{str(path)!r} was trained for base model {info.base_model_id!r}, but the loaded model is "
            f"{expected_base_model_id!r}; load the matching model or use an adapter trained for "
            f"{expected_base_model_id!r}")
    if info.split_layer != expected_split_layer:
        raise AdapterLoadError(
            f"{str(path)!r} was trained with the SCD split at layer {info.split_layer}, but the model is split at "
            f"layer {expected_split_layer}; set the split layer to {info.split_layer} or use an adapter trained "
            f"for split layer {expected_split_layer}")
    module_cls, config_cls = ADAPTER_CLASSES[info.kind]
    try:
        file_config = _config_from_dict(config_cls, info.config)
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"{str(path)!r} has an invalid {config_cls.__name__} in its metadata ({err}); "
                               "re-save it with this version of the node pack") from err
    file_fields = _config_to_dict(file_config)
    if expected_config:
        wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in expected_config.items()}
        unknown = sorted(set(wanted) - set(file_fields))
        if unknown:
            raise ValueError(f"expected_config names unknown {config_cls.__name__} fields {unknown}")
        diff = [f"{k}: file={file_fields[k]!r}, required={v!r}" for k, v in wanted.items() if file_fields[k] != v]
        if diff:
            raise AdapterLoadError(f"{str(path)!r} does not fit this model ({'; '.join(diff)}); use an adapter "
                                   "trained for this model's dimensions")
    fresh = module is None
    if module is None:
        module = module_cls(file_config, device="meta")
    else:
        kind = _kind_of(module)
        if kind != info.kind:
            raise AdapterLoadError(f"{str(path)!r} holds a {info.kind!r} adapter but the target module is a "
                                   f"{type(module).__name__} ({kind!r}); load it into a {module_cls.__name__}")
        diff = _config_diff(file_fields, _config_to_dict(module.config))
        if diff:
            raise AdapterLoadError(
                f"{str(path)!r} does not match the {type(module).__name__} it is loaded into: {'; '.join(diff)}. "
                "Load without passing a module (the loader builds it from the file's config) or retrain the adapter "
                "with the module's config")
    expected_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            missing = sorted(set(expected_shapes) - keys)
            unexpected = sorted(keys - set(expected_shapes))
            if missing or unexpected:
                raise AdapterLoadError(
                    f"{str(path)!r} does not match {type(module).__name__}({file_config}): missing tensors "
                    f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected tensors "
                    f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; the file was written by a different "
                    "version or edited - re-save it with save_adapter")
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in keys}
            wrong = [f"{k}: file {shapes[k]} vs module {expected_shapes[k]}" for k in sorted(keys)
                     if shapes[k] != expected_shapes[k]]
            if wrong:
                raise AdapterLoadError(f"{str(path)!r} has tensors of the wrong shape: {'; '.join(wrong[:8])}; "
                                       "the file does not belong to this module configuration")
            state = {k: fh.get_tensor(k) for k in keys}
    except AdapterLoadError:
        raise
    except Exception as err:
        raise AdapterLoadError(f"{str(path)!r} could not be read ({err}); the file is corrupt or truncated - copy or "
                               "download it again") from err
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(state, strict=True, assign=fresh or on_meta)
    if device is not None:
        module = module.to(device=device)
    return module.to(dtype=dtype) if dtype is not None else module
