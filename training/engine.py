"""The trainable model of a run and the per-sample diffusion loss shared by all stages.

One loss for every stage (what differs is which parameters train):

1. Draw an edit mask on the latent grid (``MaskSampler``, reseeded per sample) and the clean-context frames (each
   latent frame with probability ``context_frame_ratio``): context frames stay unmasked in the encoder input and get
   no loss.
2. Background = source latents with the edit tokens replaced by the latents of a grey clip (what ``prepare_edit``
   feeds the encoder at inference, where masked pixels are filled with grey before VAE encoding). A global context
   embedder gets the clip's cached low-resolution latents blanked by the same mask
   (``GlobalLatents.input``, the function inference's ``EditContext.global_input`` calls).
3. Encoder (blocks ``[0,k)``) at σ=0, frame-causal, output shifted one frame, plus ``encoder_noise``·N(0,1).
4. Decoder (blocks ``[k,N)``) by token concat on the selected tokens — the dilated edit tokens (``masked``, as the
   sparse sampler runs) or every token of the non-context frames (``all``) — noised to σ (by default ltx-trainer's
   shifted logit-normal for the clip's token count, training/timesteps.py): x_σ = (1−σ)·x0 + σ·ε,
   loss = MSE(v, ε − x0) (v-prediction).

Every random draw of a sample comes from a seed derived from (run seed, stage, global sample index), so a resumed or
multi-process run sees exactly the same noise, masks and context frames as a single uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from editctrl_core.conditioning.text import TextConditioning
from editctrl_core.edit.adapters import (
    AdapterLoadError,
    GlobalContextEmbedder,
    LocalContextModule,
    load_adapter,
)
from editctrl_core.edit.context import blank_background, from_tokens, to_tokens
from editctrl_core.edit.masks import dilate_token_mask
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.loading.lora import LoraError, apply_loras, read_lora
from editctrl_core.loading.models import ModelLoadError, Preset, build_transformer, build_vae, load_models, load_preset
from editctrl_core.perception.tma import TMAConnector, load_tma, prepend_semantic_tokens
from training.config import Config, ConfigError, CoreSection, GlobalConfig, LocalConfig, StageConfig, TMAStageConfig
from training.data import Sample
from training.masks import MaskSampler, MaskStrategyConfig
from training.timesteps import sample_sigma

log = logging.getLogger("editctrl.training")
ADAPTER_NAME = "default"
_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, stage: int, index: int, salt: int = 0) -> int:
    """Deterministic 63-bit seed for one sample of one stage (splitmix-style mixing)."""
    x = (seed * 1_000_003 + stage * 7_919 + index * 104_729 + salt * 15_485_863 + _MIX) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


@contextlib.contextmanager
def config_field(name: str) -> Iterator[None]:
    """Re-raise a failure to load the file a config field names as a ConfigError naming that field."""
    try:
        yield
    except (ModelLoadError, LoraError, AdapterLoadError, FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc


@dataclass
class BaseModels:
    """Preset, transformer and VAE of a run."""

    preset: Preset
    transformer: nn.Module
    vae: nn.Module | None
    split_layer: int


def load_base(cfg: Config, device: torch.device | str = "cpu", need_vae: bool = True) -> BaseModels:
    """Transformer (+ VAE) from the preset's seeded weights or a weights file, in the configured dtype."""
    m = cfg.model
    dtype = torch.bfloat16 if m.dtype == "bfloat16" else torch.float32
    if m.weights is None:
        preset = load_preset(m.preset)
        transformer = build_transformer(preset, dtype=dtype, device=device)
        vae = build_vae(preset, device=device) if need_vae else None
        if m.vae_weights is not None and need_vae:
            from editctrl_core.loading.models import read_safetensors, strict_load, vae_state_from_checkpoint

            with config_field("model.vae_weights"):
                vae = strict_load(build_vae(preset, empty=True),
                                  vae_state_from_checkpoint(read_safetensors(m.vae_weights)),
                                  what=str(m.vae_weights), device=device)
    else:
        with config_field("model.weights"):
            loaded = load_models(m.weights, m.preset, dtype=dtype, device=device, vae_path=m.vae_weights)
        preset, transformer, vae = loaded.preset, loaded.transformer, loaded.vae
    split = m.split_layer or preset.split_layer
    layers = len(transformer.transformer_blocks)
    if not 0 < split < layers:
        raise ConfigError(f"model.split_layer: must be in [1, {layers - 1}] for this {layers}-block model; got {split}")
    transformer.requires_grad_(False)
    if vae is not None:
        vae.requires_grad_(False).eval().float()
    return BaseModels(preset, transformer, vae, split)


def lora_target_regex(num_layers: int, split: int, lora: object) -> str:
    """peft target_modules regex: the chosen attention projections of the decoder (and optionally encoder) blocks."""
    blocks = range(0 if lora.encoder else split, num_layers)
    block_re = "|".join(str(b) for b in blocks)
    att_re = "|".join(re.escape(a) for a in lora.attentions)
    tgt_re = "|".join(re.escape(t) for t in lora.targets)
    return rf"transformer_blocks\.({block_re})\.({att_re})\.({tgt_re})"


@dataclass
class StepResult:
    """Loss of one sample and what the debug image needs."""

    loss: torch.Tensor
    debug: dict = field(default_factory=dict)


class TrainModule(nn.Module):
    """Transformer (+ peft LoRA) and the EditCtrl/TMA modules of a run; `forward(samples)` returns the mean loss."""

    def __init__(self, cfg: Config, base: BaseModels, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.preset = base.preset
        self.transformer = base.transformer
        self.split_layer = base.split_layer
        self.device_ = torch.device(device)
        self.local: LocalContextModule | None = None
        self.global_context: GlobalContextEmbedder | None = None
        self.tma: TMAConnector | None = None
        self.has_lora = False
        self.lora_config: object | None = None
        self.scd = SCDModel(self.transformer, SCDOptions(split_layer=self.split_layer))
        self._masks: MaskSampler | None = None
        self.stage_index = 0
        self.stage: StageConfig = cfg.stages[0]
        self._init_files()

    @property
    def masks(self) -> MaskSampler:
        """The run's MaskSampler (built on first use, once the semantic mask folder exists)."""
        if self._masks is None:
            mc = self.cfg.masks
            self._masks = MaskSampler(MaskStrategyConfig(
                mode=mc.mode, semantic_mask_ratio=mc.semantic_mask_ratio, min_area=mc.min_area,
                max_area=mc.max_area, shapes=tuple(mc.shapes), object_min_area=mc.object_min_area,
                object_max_area=mc.object_max_area, semantic_mask_dir=mc.semantic_mask_dir), seed=self.cfg.train.seed)
        return self._masks

    # ----- model surgery -------------------------------------------------------------------------------------
    @property
    def inner_dim(self) -> int:
        return self.transformer.proj_in.out_features

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    @property
    def channels(self) -> int:
        return self.transformer.config.in_channels

    def _init_files(self) -> None:
        """Load adapters/LoRA given as starting points in the model section (frozen unless a stage trains them)."""
        m = self.cfg.model
        model_id = self.preset.model_id
        if m.init_lora:
            with config_field("model.init_lora"):
                lora = read_lora(m.init_lora)
                self._init_lora_patch = apply_loras(self.transformer, [(lora, 1.0)])
        if m.init_local:
            with config_field("model.init_local"):
                self.local = load_adapter(m.init_local, model_id, self.split_layer, expected_kind="local_context",
                                          device=self.device_)
        if m.init_global:
            with config_field("model.init_global"):
                self.global_context = load_adapter(m.init_global, model_id, self.split_layer,
                                                   expected_kind="global_context", device=self.device_)
        if m.init_tma:
            with config_field("model.init_tma"):
                self.tma, _ = load_tma(m.init_tma, device=self.device_)
        self.scd.attach(self.local, self.global_context)

    def add_lora(self, lora: object) -> None:
        """Inject a peft LoRA (once per run) on the configured attention projections."""
        from peft import LoraConfig, inject_adapter_in_model

        if self.has_lora:
            return
        target = lora_target_regex(self.num_layers, self.split_layer, lora)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=target, lora_dropout=lora.dropout,
                            init_lora_weights=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 17)
            inject_adapter_in_model(config, self.transformer, adapter_name=ADAPTER_NAME)
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
        self.has_lora = True
        self.lora_config = lora

    def add_local(self, spec: CoreSection) -> None:
        """Create the LocalContextModule for this model (widths from the transformer)."""
        if self.local is not None:
            return
        decoder = self.num_layers - self.split_layer
        cfg = spec.build(in_channels=self.channels + 1, text_dim=self.inner_dim, model_dim=self.inner_dim,
                         target_blocks=tuple(range(0, decoder, spec.target_every)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 29)
            self.local = LocalContextModule(cfg).to(self.device_)
        self.scd.attach(local=self.local)

    def add_global(self, spec: CoreSection) -> None:
        """Create the GlobalContextEmbedder (one branch per decoder block; patch embedding copied from proj_in)."""
        if self.global_context is not None:
            return
        decoder = self.num_layers - self.split_layer
        cfg = spec.build(in_channels=self.channels + 1, model_dim=self.inner_dim, target_blocks=tuple(range(decoder)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 31)
            self.global_context = GlobalContextEmbedder(cfg).to(self.device_)
        # EditCtrl's global tokens come from a copy of the model's own patch embedding (no random embedding layer)
        self.global_context.copy_patch_embedding(self.transformer.proj_in)
        self.scd.attach(global_context=self.global_context)

    def add_tma(self, spec: CoreSection, qwen_dim: int) -> None:
        """Create the TMA connector (Qwen width from the cached features, text width = caption channels)."""
        if self.tma is not None:
            return
        cfg = spec.build(qwen_dim=qwen_dim, text_dim=self.transformer.config.caption_channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 37)
            self.tma = TMAConnector(cfg).to(self.device_)

    def prepare_stage(self, index: int, qwen_dim: int | None = None) -> None:
        """Create what stage `index` needs (and what earlier stages made, for resume) and set requires_grad."""
        for i in range(index + 1):
            st = self.cfg.stages[i]
            if st.lora is not None:
                self.add_lora(st.lora)
            if st.name == "editctrl_local" or st.local is not None:
                self.add_local(st.local or _default_local(self.preset))
            if st.name == "editctrl_global" or st.global_context is not None:
                self.add_global(st.global_context or _default_global(self.preset))
            if st.name == "tma":
                if qwen_dim is None:
                    raise ConfigError("data.qwen_feature_dir: the tma stage needs cached Qwen features (run "
                                      "training.compute_qwen_features)")
                try:
                    self.add_tma(st.tma or _default_tma(self.preset), qwen_dim)
                except ValueError as exc:
                    raise ConfigError(f"stages[{i}].tma: {exc} (the cached Qwen features are {qwen_dim} wide)"
                                      ) from exc
        self.stage_index = index
        self.stage = st = self.cfg.stages[index]
        self.requires_grad_(False)
        train_lora = st.train_lora if st.train_lora is not None else (st.name == "scd" or st.lora is not None)
        if train_lora:
            if not self.has_lora:
                raise ConfigError(f"stages[{index}].lora: stage {st.name} trains a LoRA but none is configured")
            for name, p in self.transformer.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
        module = {"editctrl_local": self.local, "editctrl_global": self.global_context, "tma": self.tma}.get(st.name)
        if module is not None:
            module.requires_grad_(True)
        self.transformer.gradient_checkpointing = bool(self.cfg.model.gradient_checkpointing)

    def param_groups(self) -> list[dict]:
        """Optimizer groups of the trainable parameters (decoder LoRA at lr × decoder_lr_mult if the encoder trains)."""
        st = self.stage
        enc, dec, other = [], [], []
        encoder_lora = any(p.requires_grad and _block_of(n) is not None and _block_of(n) < self.split_layer
                           for n, p in self.transformer.named_parameters())
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            block = _block_of(name) if name.startswith("transformer.") else None
            if block is None:
                other.append(p)
            elif block < self.split_layer:
                enc.append(p)
            else:
                dec.append(p)
        groups = []
        if enc:
            groups.append({"params": enc, "lr": st.lr, "name": "encoder_lora"})
        if dec:
            groups.append({"params": dec, "lr": st.lr * (st.decoder_lr_mult if encoder_lora else 1.0),
                           "name": "decoder_lora"})
        if other:
            groups.append({"params": other, "lr": st.lr, "name": st.name})
        if not groups:
            raise ConfigError(f"stages[{self.stage_index}]: stage {st.name} has no trainable parameters (set lora, "
                              "or train_lora: true, or use a stage that trains an adapter)")
        return groups

    def trainable_names(self) -> list[str]:
        """Names of parameters that train in the current stage."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def added_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that is not part of the base model (LoRA, adapters, TMA): what a checkpoint stores."""
        out = {}
        for name, p in self.named_parameters():
            if "lora_" in name or not name.startswith("transformer."):
                out[name] = p.detach().cpu().clone()
        return out

    def load_added_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `added_state` exactly; names must match one to one."""
        own = dict(self.named_parameters())
        expected = {n for n in own if "lora_" in n or not n.startswith("transformer.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ConfigError(f"--resume: checkpoint does not match this run's trainable modules: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}; resume with the config the run was started "
                              "with")
        with torch.no_grad():
            for name, value in state.items():
                if tuple(own[name].shape) != tuple(value.shape):
                    raise ConfigError(f"--resume: checkpoint tensor {name} has shape {tuple(value.shape)}, model "
                                      f"{tuple(own[name].shape)}")
                own[name].copy_(value.to(own[name].device, own[name].dtype))

    # ----- loss --------------------------------------------------------------------------------------------------
    def forward(self, samples: list[tuple[Sample, int]], want_debug: bool = False) -> tuple[torch.Tensor, dict]:
        """Mean loss over (sample, global sample index) pairs; the debug dict describes the first sample."""
        losses, debug = [], {}
        for i, (sample, index) in enumerate(samples):
            result = self.sample_loss(sample, index, want_debug and i == 0)
            losses.append(result.loss)
            if result.debug:
                debug = result.debug
        return torch.stack(losses).mean(), debug

    def _text(self, sample: Sample, g: torch.Generator, null_text: tuple[torch.Tensor, torch.Tensor] | None
              ) -> TextConditioning:
        """Prompt conditioning of a sample (caption dropout; TMA tokens prepended when the run has a connector)."""
        embeds, mask = sample.text_embeds, sample.text_mask
        drop = float(torch.rand((), generator=g)) < self.cfg.train.caption_dropout
        if drop and null_text is not None:
            embeds, mask = null_text
        embeds, mask = embeds[None].to(self.device_), mask[None].to(self.device_)
        if self.tma is not None:
            if sample.qwen is None:
                raise ConfigError(f"data.qwen_feature_dir: sample {sample.sample_id} has no cached Qwen features "
                                  "but the run has a TMA connector; run training.compute_qwen_features for every "
                                  "clip")
            task = (self.stage.tma.task if self.stage.tma is not None else 0)
            tokens = self.tma(sample.qwen[None].to(self.device_), sample.qwen_mask[None].to(self.device_), task)
            embeds, mask = prepend_semantic_tokens(embeds.to(tokens.dtype), mask, tokens)
        return TextConditioning(embeds, mask)

    null_text: tuple[torch.Tensor, torch.Tensor] | None = None

    def sample_loss(self, sample: Sample, index: int, want_debug: bool = False) -> StepResult:
        """v-prediction loss of one sample (see the module docstring for the recipe)."""
        t = self.cfg.train
        seed = sample_seed(t.seed, self.stage_index, index)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(sample_seed(t.seed, self.stage_index, index, salt=1))
        self.masks.generator.manual_seed(sample_seed(t.seed, self.stage_index, index, salt=2))
        dev = self.device_
        grid = sample.grid
        f = grid[0]
        draw = self.masks.sample(grid, sample.sample_id)
        token_mask = draw.mask.bool()
        context = torch.rand(f, generator=g) < t.context_frame_ratio
        if bool(context.all()):
            context[int(torch.randint(0, f, (), generator=g))] = False
        edit = token_mask & ~context[:, None, None]
        if not bool(edit.any()):
            context[:] = False
            edit = token_mask
        text = self._text(sample, g, self.null_text)
        source = sample.latents[None].to(dev)
        target = sample.target[None].to(dev)
        if sample.fill is None:
            raise ValueError(f"sample {sample.sample_id!r} has no background fill (the grey-clip latents its edit "
                             "region is blanked to, as at inference); build samples with one, e.g. by the precompute")
        background = blank_background(source, edit, sample.fill[None])
        encoder_trains = any(p.requires_grad for n, p in self.transformer.named_parameters()
                             if _block_of(n) is not None and _block_of(n) < self.split_layer) or (
            self.tma is not None and any(p.requires_grad for p in self.tma.parameters()))
        with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_trains):
            enc = self.scd.encode(to_tokens(background), grid, text, sample.fps)
        noise = torch.randn(enc.shape, generator=g).to(dev, enc.dtype)
        enc = enc + t.encoder_noise * noise
        dilated = dilate_token_mask(edit, t.dilation)
        select = dilated & ~context[:, None, None] if self.stage.decode_tokens == "masked" else (
            ~context[:, None, None]).expand_as(dilated)
        idx = select.flatten().nonzero().squeeze(1)
        sigma = sample_sigma(g, t.timestep_sampling, t.timestep_shift, tokens=f * grid[1] * grid[2])
        x0 = to_tokens(target)[:, idx.to(dev)].float()
        eps = torch.randn(x0.shape, generator=g).to(dev)
        s = sigma.to(dev)
        noisy = (1 - s) * x0 + s * eps
        global_in = None
        if self.global_context is not None:
            if sample.global_latents is None:
                raise ConfigError(f"sample {sample.sample_id} has no low-resolution global latents (a cache from "
                                  "before they were added); re-run the precompute so the global context trains on "
                                  "its inference input")
            global_in = sample.global_latents.input(edit).to(dev)
        plan = self.scd.plan(idx, enc, grid, text, background=background, edit_mask=edit.to(dev), fps=sample.fps,
                             global_input=global_in)
        velocity = self.scd.decode(plan, noisy, s).float()
        loss = F.mse_loss(velocity, eps - x0)
        debug = {}
        if want_debug:
            with torch.no_grad():
                pred = to_tokens(source).clone().float()
                pred[:, idx.to(dev)] = (noisy - s * velocity).float()
                debug = {"source": source.detach().cpu(), "background": background.detach().cpu(),
                         "prediction": from_tokens(pred, grid).cpu(), "target": target.detach().cpu(),
                         "mask": edit.cpu(), "select": select.cpu(), "context_frames": context.cpu(),
                         "sigma": float(s), "sample_id": sample.sample_id}
        return StepResult(loss, debug)


def _block_of(name: str) -> int | None:
    """Transformer block index of a parameter name, or None."""
    m = re.search(r"transformer_blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _default_local(preset: Preset) -> CoreSection:
    """LocalContextModule shape when a stage gives none: the seed's for real models, a small one for tiny."""
    if preset.family == "tiny":
        return LocalConfig(width=32, num_blocks=2, heads=2, head_dim=16, target_every=1)
    return LocalConfig()


def _default_global(preset: Preset) -> CoreSection:
    """GlobalContextEmbedder shape when a stage gives none."""
    if preset.family == "tiny":
        return GlobalConfig(max_tokens=64, heads=2, head_dim=16)
    return GlobalConfig()


def _default_tma(preset: Preset) -> CoreSection:
    """TMA connector shape when a stage gives none."""
    if preset.family == "tiny":
        return TMAStageConfig(num_tasks=2, num_queries=8, num_heads=8, mlp_dim=32)
    return TMAStageConfig()
