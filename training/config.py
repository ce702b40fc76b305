"""Training configuration: YAML → typed dataclasses, validated on load with errors that name the bad field.

Every section and field is listed below with its default (a stage's ``local``, ``global_context`` and ``tma``
sections take the fields of the core's LocalContextConfig, GlobalContextConfig and TMAConfig, see
:func:`core_section`); unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted path (e.g. ``stages[1].lora.rank``). :func:`config_hash` is a stable hash of
the fully resolved config, written into every checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from editctrl_core.checks import NonFiniteError, check_finite_value
from editctrl_core.edit.adapters import GlobalContextConfig, LocalContextConfig
from editctrl_core.perception.tma import TMAConfig

STAGES = ("scd", "editctrl_local", "editctrl_global", "tma")
TIMESTEP_SAMPLINGS = ("shifted_logit_normal", "logit_normal", "uniform")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTIONS = ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")


class ConfigError(ValueError):
    """A config value that is missing, unknown, of the wrong type or out of range; the message names the field."""


@dataclass
class ModelConfig:
    """Base model: a shipped preset with seeded weights, or a weights file/folder; SCD split; precision."""

    preset: str = "tiny"
    weights: str | None = None
    vae_weights: str | None = None
    split_layer: int | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    init_lora: str | None = None
    init_local: str | None = None
    init_global: str | None = None
    init_tma: str | None = None


@dataclass
class SyntheticConfig:
    """Generate synthetic clips (moving shape over texture) into the clip folder before precompute."""

    count: int = 16
    frames: int = 17
    height: int = 64
    width: int = 96
    seed: int = 0
    caption: str = "the empty textured background, no object"
    with_targets: bool = True


@dataclass
class DataConfig:
    """Clips + captions, the shape rule, the text encoder, and where cached latents/text embeddings go.

    ``text_encoder`` is ``tiny`` (the built-in test encoder) or a path to LTX-2's Gemma text encoder: a ComfyUI
    ``models/text_encoders`` file (e.g. ``gemma_3_12B_it.safetensors``) or a transformers/diffusers folder. Its LTX-2
    text connectors come from ``text_connectors``, else the folder's ``connectors/``, else ``model.weights`` (the LTX
    checkpoint carries them); ``tokenizer`` is a folder, needed only when the weights carry none.
    ``text_encoder_preset`` ``auto`` detects LTX-2.0/2.3/2.5 from the weights; ``text_max_tokens`` 0 = the preset's
    length (1024); ``text_device`` ``auto`` = the training device.
    """

    clips: str | None = None
    captions: str | None = None
    cache_dir: str | None = None
    frames: int = 17
    height: int | None = None
    width: int | None = None
    frame_stride: int = 1
    synthetic: SyntheticConfig | None = None
    qwen_feature_dir: str | None = None
    text_encoder: str = "tiny"
    text_encoder_preset: str = "auto"
    text_connectors: str | None = None
    tokenizer: str | None = None
    text_max_tokens: int = 0
    text_device: str = "auto"
    text_batch_size: int = 4


@dataclass
class MaskConfig:
    """Training masks (fields of `training.masks.MaskStrategyConfig`)."""

    mode: str = "mixed"
    semantic_mask_ratio: float = 0.7
    min_area: float = 0.05
    max_area: float = 0.6
    shapes: list[str] = field(default_factory=lambda: ["rect", "ellipse", "brush"])
    object_min_area: float = 0.01
    object_max_area: float = 0.8
    semantic_mask_dir: str | None = None


@dataclass
class TrainConfig:
    """Optimisation and diffusion-loss settings shared by all stages.

    ``timestep_sampling``: ``shifted_logit_normal`` (default) is ltx-trainer's σ sampler (training/timesteps.py: a
    logit-normal whose shift grows with the clip's latent token count, stretched to [0, 1], 10% uniform);
    ``logit_normal`` is σ = sigmoid(N(0, 1)) and ``uniform`` σ ~ U(0, 1), both remapped by ``timestep_shift``
    (σ' = sσ / (1 + (s − 1)σ)), which the ltx-trainer sampler does not use.

    ``dilation``: token rings around the edit mask that the loss also covers, as the sampler's default dilation
    regenerates them. A ring token's encoder prefix holds its own clean content, so it is an easy copy; where rings
    outnumber the blanked tokens (small grids, small masks) they dominate the mean loss and the blanked tokens stop
    learning to read the encoder: on the small base (4×6 tokens a frame) ``dilation: 1`` left `scd` below the grey
    fill, ``dilation: 0`` reached +10.9 dB (training/recipes/small_edit.py, docs/oracle/small_edit_report.json).
    """

    seed: int = 0
    batch_size: int = 1
    grad_accum: int = 1
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    mixed_precision: str = "no"
    timestep_sampling: str = "shifted_logit_normal"
    timestep_shift: float = 1.0
    encoder_noise: float = 0.05
    context_frame_ratio: float = 0.1
    dilation: int = 1
    caption_dropout: float = 0.0
    cpu_threads: int = 0
    distributed: str = "ddp"


@dataclass
class OutputConfig:
    """Where and how often checkpoints, logs and debug images are written."""

    dir: str = "runs/editctrl"
    checkpoint_every: int = 100
    keep_checkpoints: int = 0
    log_every: int = 1
    tensorboard: bool = True
    wandb: bool = False
    debug_image_every: int = 0


@dataclass
class LoraConfig:
    """peft LoRA on the transformer's attention projections (decoder blocks; optionally encoder blocks too)."""

    rank: int = 32
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    attentions: list[str] = field(default_factory=lambda: ["attn1", "attn2"])
    encoder: bool = False
    dropout: float = 0.0


@dataclass
class CoreSection:
    """A stage section holding a core config's fields (names, types, defaults) minus those the model fills in.

    The fields come from the core dataclass itself (:func:`core_section`), so a field added there is a YAML key here
    with the same default, and :meth:`problems` runs the core's own checks.
    """

    core: ClassVar[type]
    filled: ClassVar[tuple[str, ...]]

    def core_values(self) -> dict[str, Any]:
        """This section's values of the core config's fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self.core) if f.name not in self.filled}

    def problems(self) -> list[tuple[str, str]]:
        """(field, problem) from the core config's checks of the fields this section holds."""
        return self.core.problems(self.core_values())

    def build(self, **filled: Any) -> Any:
        """The core config: this section's values plus the model-dependent `filled` ones."""
        return self.core(**self.core_values(), **filled)


def _same_default(f: dataclasses.Field) -> Any:
    """A dataclass field with the same default (or default factory) as core field `f`."""
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory)
    return field(default=f.default)


def core_section(name: str, core: type, filled: tuple[str, ...], extra: tuple[tuple[str, type, Any], ...] = (),
                 doc: str = "") -> type[CoreSection]:
    """A CoreSection dataclass with `core`'s fields except `filled`, then the training-only `extra` (name, type,
    default) ones."""
    hints = typing.get_type_hints(core)
    own = [(f.name, hints[f.name], _same_default(f)) for f in dataclasses.fields(core) if f.name not in filled]
    added = [(n, tp, field(default=default)) for n, tp, default in extra]
    namespace = {"core": core, "filled": filled, "__doc__": doc, "__module__": __name__}
    return dataclasses.make_dataclass(name, own + added, bases=(CoreSection,), namespace=namespace)


LocalConfig = core_section(
    "LocalConfig", LocalContextConfig, ("in_channels", "text_dim", "model_dim", "target_blocks"),
    (("target_every", int, 2),),
    "LocalContextModule shape (LocalContextConfig's fields; the widths come from the transformer, and the hints go "
    "to every `target_every`-th decoder block).")
GlobalConfig = core_section(
    "GlobalConfig", GlobalContextConfig, ("in_channels", "model_dim", "target_blocks"), (),
    "GlobalContextEmbedder shape (GlobalContextConfig's fields; model width and decoder blocks come from the "
    "transformer).")
TMAStageConfig = core_section(
    "TMAStageConfig", TMAConfig, ("qwen_dim", "text_dim"), (("task", int, 0),),
    "TMA connector shape (TMAConfig's fields; Qwen width comes from the cached features, text width from the "
    "model), and the task id whose queries train.")


@dataclass
class StageConfig:
    """One training stage: which parameters train, for how many optimiser steps, at which learning rate."""

    name: str = "scd"
    steps: int = 100
    lr: float = 1e-4
    decoder_lr_mult: float = 2.0
    lora: LoraConfig | None = None
    train_lora: bool | None = None
    local: LocalConfig | None = None
    global_context: GlobalConfig | None = None
    tma: TMAStageConfig | None = None
    decode_tokens: str = "masked"


@dataclass
class Config:
    """The whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation."""
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one YAML value against an annotation; raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: must not be empty")
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {type(value).__name__} {value!r}")
        item = typing.get_args(tp)[0]
        return origin(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number, got {value!r}")
        try:
            return check_finite_value(path, value)
        except (NonFiniteError, OverflowError):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field (known fields of {path or 'the config'}: "
                          f"{', '.join(names)})")
    values = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**values)


def _need(cond: bool, path: str, message: str) -> None:
    """Raise ConfigError(path: message) unless cond."""
    if not cond:
        raise ConfigError(f"{path}: {message}")


def _one_of(value: str, options: tuple[str, ...] | list[str], path: str) -> None:
    """Raise unless value is one of options."""
    _need(value in options, path, f"{value!r} is not one of {list(options)}")


def _validate_text_encoder(d: DataConfig, m: ModelConfig) -> None:
    """data.text_encoder is 'tiny' or an existing Gemma file/folder; the fields that go with a path are consistent."""
    from editctrl_core.conditioning.text_encoders import list_text_presets

    _one_of(d.text_encoder_preset, ["auto", *list_text_presets()], "data.text_encoder_preset")
    _one_of(d.text_device, ("auto", "cpu", "cuda"), "data.text_device")
    _need(d.text_max_tokens >= 0, "data.text_max_tokens", f"must be >= 0 (0 = the preset's length), got "
          f"{d.text_max_tokens}")
    _need(d.text_batch_size >= 1, "data.text_batch_size", f"must be >= 1, got {d.text_batch_size}")
    if d.text_encoder == "tiny":
        for name, default in (("text_encoder_preset", "auto"), ("text_connectors", None), ("tokenizer", None),
                              ("text_max_tokens", 0)):
            _need(getattr(d, name) == default, f"data.{name}", "only applies when data.text_encoder is a path to a "
                  "Gemma text encoder ('tiny' is the built-in test encoder)")
        return
    source = Path(d.text_encoder)
    _need(source.exists(), "data.text_encoder", f"no such file or folder {d.text_encoder!r}; give 'tiny' or a path to "
          "LTX-2's Gemma text encoder: a .safetensors file from ComfyUI's models/text_encoders (e.g. "
          "models/text_encoders/gemma_3_12B_it.safetensors) or a transformers/diffusers folder")
    _need(source.is_dir() or source.suffix == ".safetensors", "data.text_encoder",
          f"{d.text_encoder!r} is neither a .safetensors file nor a folder")
    for name, what in (("text_connectors", "an LTX-2 checkpoint, a connectors .safetensors file or a diffusers folder "
                                           "with connectors/"),
                       ("tokenizer", "a folder with tokenizer.json / tokenizer.model")):
        value = getattr(d, name)
        if value is not None:
            _need(Path(value).exists(), f"data.{name}", f"no such file or folder {value!r}; give {what}")
    _need(d.text_connectors is not None or m.weights is not None or (source / "connectors" / "config.json").is_file(),
          "data.text_connectors", "LTX-2's text connectors ship in the LTX checkpoint, not with Gemma: set "
          "model.weights to the LTX-2 checkpoint, or data.text_connectors to it (or to a connectors file/folder)")


def _check_section(section: CoreSection, path: str) -> None:
    """Run the core config's own checks on a stage section; the first failure names its YAML field."""
    problems = section.problems()
    if problems:
        name, problem = problems[0]
        raise ConfigError(f"{path}.{name}: {problem}")


def validate(cfg: Config) -> Config:
    """Range/choice checks across the config; raises ConfigError naming the first bad field. Returns cfg."""
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.output
    from editctrl_core.loading.models import list_presets

    _one_of(m.preset, list_presets(), "model.preset")
    _one_of(m.dtype, ("float32", "bfloat16"), "model.dtype")
    if m.split_layer is not None:
        _need(m.split_layer >= 1, "model.split_layer", f"must be >= 1, got {m.split_layer}")
    _need(d.clips is not None or d.synthetic is not None, "data.clips",
          "set a folder of .mp4 clips (or data.synthetic to generate some)")
    _need(d.frames >= 1 and (d.frames - 1) % 8 == 0, "data.frames", f"must be 8n+1 (1, 9, 17, ...), got {d.frames}")
    for name in ("height", "width"):
        value = getattr(d, name)
        if value is not None:
            _need(value >= 32 and value % 32 == 0, f"data.{name}", f"must be a positive multiple of 32, got {value}")
    _need(d.frame_stride >= 1, "data.frame_stride", f"must be >= 1, got {d.frame_stride}")
    _validate_text_encoder(d, m)
    if d.synthetic is not None:
        s = d.synthetic
        _need(s.count >= 1, "data.synthetic.count", f"must be >= 1, got {s.count}")
        _need((s.frames - 1) % 8 == 0, "data.synthetic.frames", f"must be 8n+1, got {s.frames}")
        for name in ("height", "width"):
            _need(getattr(s, name) % 32 == 0, f"data.synthetic.{name}", "must be a multiple of 32")
    mk = cfg.masks
    _one_of(mk.mode, ("random", "semantic", "mixed"), "masks.mode")
    _need(0 <= mk.semantic_mask_ratio <= 1, "masks.semantic_mask_ratio", "must be in [0, 1]")
    _need(0 < mk.min_area <= mk.max_area <= 1, "masks.min_area",
          f"need 0 < min_area <= max_area <= 1, got {mk.min_area}, {mk.max_area}")
    _need(0 <= mk.object_min_area <= mk.object_max_area <= 1, "masks.object_min_area",
          f"need 0 <= object_min_area <= object_max_area <= 1, got {mk.object_min_area}, {mk.object_max_area}")
    _need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _need(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _one_of(t.optimizer, ("adamw", "adamw8bit"), "train.optimizer")
    _need(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas",
          f"must be two numbers in [0, 1), got {t.betas}")
    _need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _need(t.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (0 = no clipping), got {t.max_grad_norm}")
    _one_of(t.lr_scheduler, ("constant", "linear", "cosine"), "train.lr_scheduler")
    _need(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
    _one_of(t.mixed_precision, ("no", "bf16"), "train.mixed_precision")
    _one_of(t.timestep_sampling, TIMESTEP_SAMPLINGS, "train.timestep_sampling")
    _need(t.timestep_shift > 0, "train.timestep_shift", f"must be > 0, got {t.timestep_shift}")
    _need(t.timestep_sampling != "shifted_logit_normal" or t.timestep_shift == 1.0, "train.timestep_shift",
          "does not apply to timestep_sampling shifted_logit_normal (ltx-trainer's sampler derives its shift from "
          "the token count); leave it at 1.0, or set train.timestep_sampling: logit_normal to use a fixed shift")
    _need(t.encoder_noise >= 0, "train.encoder_noise", f"must be >= 0, got {t.encoder_noise}")
    _need(0 <= t.context_frame_ratio < 1, "train.context_frame_ratio", "must be in [0, 1)")
    _need(t.dilation >= 0, "train.dilation", "must be >= 0")
    _need(0 <= t.caption_dropout <= 1, "train.caption_dropout", "must be in [0, 1]")
    _need(t.cpu_threads >= 0, "train.cpu_threads", "must be >= 0 (0 = torch's default)")
    _one_of(t.distributed, ("ddp", "fsdp"), "train.distributed")
    _need(o.checkpoint_every >= 1, "output.checkpoint_every", f"must be >= 1, got {o.checkpoint_every}")
    _need(o.keep_checkpoints >= 0, "output.keep_checkpoints", "must be >= 0 (0 = keep all)")
    _need(o.log_every >= 1, "output.log_every", "must be >= 1")
    _need(o.debug_image_every >= 0, "output.debug_image_every", "must be >= 0 (0 = off)")
    _need(len(cfg.stages) >= 1, "stages", "list at least one stage")
    for i, st in enumerate(cfg.stages):
        p = f"stages[{i}]"
        _one_of(st.name, STAGES, f"{p}.name")
        _need(st.steps >= 0, f"{p}.steps", f"must be >= 0, got {st.steps}")
        # AdamW moves every weight by about lr per step, whatever the gradient's size: lr >= 1 can only diverge
        _need(0 < st.lr < 1, f"{p}.lr", f"must be in (0, 1) (AdamW moves each weight by about lr per step), "
              f"got {st.lr}")
        _need(st.decoder_lr_mult > 0, f"{p}.decoder_lr_mult", f"must be > 0, got {st.decoder_lr_mult}")
        peak = st.lr * max(1.0, st.decoder_lr_mult)
        _need(peak < 1, f"{p}.decoder_lr_mult", f"lr x decoder_lr_mult = {peak:g} must stay below 1 (the decoder "
              "LoRA's learning rate)")
        # AdamW's decoupled decay multiplies each weight by (1 - lr x weight_decay) per step
        _need(peak * t.weight_decay < 1, "train.weight_decay", f"{p}'s peak lr {peak:g} (lr x decoder_lr_mult) x "
              f"weight_decay = {peak * t.weight_decay:g} must stay below 1, or each step's decay flips the weights' "
              "sign")
        _one_of(st.decode_tokens, ("masked", "all"), f"{p}.decode_tokens")
        if st.lora is not None:
            lo = st.lora
            _need(lo.rank >= 1, f"{p}.lora.rank", f"must be >= 1, got {lo.rank}")
            _need(lo.alpha > 0, f"{p}.lora.alpha", f"must be > 0, got {lo.alpha}")
            for j, tgt in enumerate(lo.targets):
                _one_of(tgt, LORA_TARGETS, f"{p}.lora.targets[{j}]")
            for j, att in enumerate(lo.attentions):
                _one_of(att, ATTENTIONS, f"{p}.lora.attentions[{j}]")
            _need(bool(lo.targets) and bool(lo.attentions), f"{p}.lora", "targets and attentions must be non-empty")
            _need(0 <= lo.dropout < 1, f"{p}.lora.dropout", "must be in [0, 1)")
        trains_lora = st.train_lora if st.train_lora is not None else (st.name == "scd" or st.lora is not None)
        if trains_lora:
            _need(any(s.lora is not None for s in cfg.stages[:i + 1]), f"{p}.lora",
                  f"stage {st.name} trains a LoRA but no stage up to it configures one: give lora: {{rank, alpha}} "
                  f"(or train_lora: false)")
        elif st.name == "scd" and st.lora is None:
            _need(False, f"{p}.lora", "the scd stage trains a LoRA: give lora: {rank, alpha}")
        if st.name == "tma":
            _need(d.qwen_feature_dir is not None, "data.qwen_feature_dir",
                  "the tma stage needs cached Qwen features (run training.compute_qwen_features)")
        for sub, name in ((st.local, "local"), (st.global_context, "global_context"), (st.tma, "tma")):
            if sub is not None:
                _check_section(sub, f"{p}.{name}")
        if st.local is not None:
            _need(st.local.target_every >= 1, f"{p}.local.target_every", f"must be >= 1, got {st.local.target_every}")
        if st.tma is not None:
            _need(0 <= st.tma.task < st.tma.num_tasks, f"{p}.tma.task",
                  f"must be in [0, num_tasks={st.tma.num_tasks}), got {st.tma.task}")
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a YAML config; `overrides` are `dotted.key=value` strings (YAML values) applied first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the config as UTF-8 text ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(data, item)
    return validate(_build(Config, data, ""))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a config from a plain dict (tests, recipes)."""
    return validate(_build(Config, dict(data), ""))


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b[2].c=value` override (value parsed as YAML) to a raw config dict."""
    key, sep, raw = item.partition("=")
    where = f"--set {item!r}"
    if not sep or not key.strip():
        raise ConfigError(f"{where}: expected KEY=VALUE, e.g. --set stages[0].steps=10")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    parts: list[str | int] = []
    for part in key.strip().split("."):
        name, _, rest = part.partition("[")
        if not name:
            raise ConfigError(f"{where}: empty name in {key!r}; write section.field or stages[0].field")
        parts.append(name)
        while rest:
            idx, closed, rest = rest.partition("]")
            if not closed or not idx.strip().isdigit():
                raise ConfigError(f"{where}: {part!r} needs a non-negative list index in brackets, e.g. stages[0]")
            parts.append(int(idx))
            rest = rest.lstrip("[")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        fresh: Any = value if last else ([] if isinstance(parts[i + 1], int) else {})
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ConfigError(f"{where}: {_dotted(parts[:i])} is not a list")
            if part > len(node):
                raise ConfigError(f"{where}: {_dotted(parts[:i + 1])}: index out of range (the list has {len(node)} "
                                  f"entries; index {len(node)} appends one)")
            if part == len(node):
                node.append(fresh)
            elif last or node[part] is None:
                node[part] = fresh
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {_dotted(parts[:i])} holds {node!r}, not a section of fields")
            if last or node.get(part) is None:
                node[part] = fresh
        node = node[part]


def _dotted(parts: list[str | int]) -> str:
    """`['stages', 0, 'lr']` → `stages[0].lr`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config) -> str:
    """Stable short hash of the resolved config (sorted-key JSON), for checkpoint metadata."""
    text = json.dumps(to_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
