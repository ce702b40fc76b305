"""LoRA files: native ComfyUI keys, strict loading, reversible stacking, and parity with peft and diffusers."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline, LTX2VideoTransformer3DModel
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ltx2_lora_to_diffusers
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file

from editctrl_core.loading.lora import (
    LoraFile,
    LoraFormatError,
    LoraMismatchError,
    LoraWeights,
    apply_loras,
    diffusers_to_native,
    lora_from_peft,
    native_to_diffusers,
    read_lora,
    remove_loras,
    save_lora,
)

ATTN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
F_, H_, W_ = 2, 2, 2


def make_model(num_layers: int = 2, head_dim: int = 16, seed: int = 0, **extra) -> LTX2VideoTransformer3DModel:
    """Tiny real LTX-2 transformer with seeded weights."""
    torch.manual_seed(seed)
    model = LTX2VideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=head_dim,
        cross_attention_dim=2 * head_dim, audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=num_layers, caption_channels=32,
        rope_type="split", rope_double_precision=False, **extra,
    )
    return model.eval()


def make_inputs(seed: int = 1) -> dict:
    """Deterministic forward inputs for the tiny model (video-only, isolated audio)."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor([0.6])
    text = torch.randn(1, 5, 32, generator=g)
    return dict(
        hidden_states=torch.randn(1, F_ * H_ * W_, 16, generator=g),
        audio_hidden_states=torch.randn(1, 1, 8, generator=g),
        encoder_hidden_states=text, audio_encoder_hidden_states=text,
        timestep=sigma * 1000, sigma=sigma, num_frames=F_, height=H_, width=W_, audio_num_frames=1,
        isolate_modalities=True, return_dict=False,
    )


@torch.no_grad()
def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Video output of one forward."""
    return model(**inputs)[0]


def peft_wrapped(base: torch.nn.Module, name: str = "default", r: int = 4, alpha: int = 8, seed: int = 7,
                 targets: list[str] | None = None) -> torch.nn.Module:
    """Copy of `base` with a randomly initialised (non-zero B) peft LoRA adapter added."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or ATTN_TARGETS,
                                 init_lora_weights=False), adapter_name=name)
    return model.eval()


def random_lora(model: torch.nn.Module, names: list[str], rank: int = 3, alpha: float = 6.0,
                seed: int = 3) -> LoraFile:
    """Random LoRA for the given Linear module paths of `model`."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for n in names:
        lin = model.get_submodule(n)
        layers[n] = LoraWeights(torch.randn(rank, lin.in_features, generator=g) * 0.1,
                                torch.randn(lin.out_features, rank, generator=g) * 0.1, alpha)
    return LoraFile(layers=layers)


def linear_names(model: torch.nn.Module) -> list[str]:
    """Paths of every nn.Linear in the model."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny forwards are ~20x faster on one intra-op thread on a busy 2-core runner; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base() -> LTX2VideoTransformer3DModel:
    """Shared base model, which tests must leave unchanged."""
    return make_model()


@pytest.fixture(scope="module")
def inputs() -> dict:
    """Shared forward inputs."""
    return make_inputs()


def file_keys(path: Path) -> tuple[list[str], dict[str, str]]:
    """Keys and metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), dict(f.metadata() or {})


def test_native_keys_use_original_ltx2_names(base, tmp_path):
    renamed = ["proj_in", "audio_proj_in", "time_embed.linear", "audio_time_embed.emb.timestep_embedder.linear_1",
               "av_cross_attn_video_scale_shift.linear", "av_cross_attn_audio_v2a_gate.linear"]
    lora = random_lora(base, ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_out.0", *renamed])
    path = save_lora(lora, tmp_path / "l.safetensors",
                     {"base_model": "editctrl/tiny", "rank": 3, "alpha": 6.0, "split_layer": 1, "stage": "scd",
                      "config_hash": "abc123"})
    keys, meta = file_keys(path)
    assert all(k.startswith("diffusion_model.") for k in keys)
    expected = {
        "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight",
        "diffusion_model.transformer_blocks.1.attn2.to_out.0.lora_A.weight",
        "diffusion_model.patchify_proj.lora_A.weight",
        "diffusion_model.audio_patchify_proj.lora_B.weight",
        "diffusion_model.adaln_single.linear.lora_A.weight",
        "diffusion_model.audio_adaln_single.emb.timestep_embedder.linear_1.lora_A.weight",
        "diffusion_model.av_ca_video_scale_shift_adaln_single.linear.lora_B.weight",
        "diffusion_model.av_ca_v2a_gate_adaln_single.linear.lora_A.weight",
    }
    assert expected <= set(keys)
    assert len(keys) == 2 * len(lora.layers)
    assert not any(".proj_in." in k or "time_embed" in k or "av_cross_attn" in k for k in keys)
    assert meta["base_model"] == "editctrl/tiny" and meta["rank"] == "3" and meta["split_layer"] == "1"
    assert meta["stage"] == "scd" and json.loads(meta["alpha"]) == 6.0
    assert json.loads(meta["editctrl.rank"]) == 3 and json.loads(meta["editctrl.alpha"]) == 6.0
    assert meta["editctrl.alpha_storage"] == "folded_into_lora_B"


@pytest.mark.parametrize("extra", [{}, dict(gated_attn=True, cross_attn_mod=True, audio_gated_attn=True,
                                            audio_cross_attn_mod=True, perturbed_attn=True,
                                            use_prompt_embeddings=False)])
def test_name_mapping_matches_diffusers_converter(extra):
    model = make_model(num_layers=1, **extra)
    names = [n for n, _ in model.named_modules() if n]
    native = {f"diffusion_model.{diffusers_to_native(n)}.lora_A.weight": torch.zeros(1) for n in names}
    converted = _convert_non_diffusers_ltx2_lora_to_diffusers(native)
    assert sorted(converted) == sorted(f"transformer.{n}.lora_A.weight" for n in names)
    assert all(native_to_diffusers(diffusers_to_native(n)) == n for n in names)
    if extra:
        assert diffusers_to_native("prompt_adaln.linear") == "prompt_adaln_single.linear"
        assert "prompt_adaln.linear" in names


@pytest.mark.parametrize("alpha_keys", [False, True])
def test_round_trip(base, tmp_path, alpha_keys):
    lora = random_lora(base, ["transformer_blocks.0.attn1.to_q", "proj_in", "time_embed.linear"], rank=2, alpha=2.0)
    path = save_lora(lora, tmp_path / "rt.safetensors", {"stage": "scd", "steps": 100}, alpha_keys=alpha_keys)
    back = read_lora(path)
    assert back.source_format == "native"
    assert set(back.layers) == set(lora.layers)
    for name, w in lora.layers.items():
        assert torch.equal(back.layers[name].A, w.A)
        assert torch.equal(back.layers[name].B, w.B)
        assert back.layers[name].alpha == 2.0
    keys, _ = file_keys(path)
    assert any(k.endswith(".alpha") for k in keys) == alpha_keys
    assert back.metadata["stage"] == "scd" and back.metadata["steps"] == "100"


def test_alpha_folding_preserves_effective_delta(base, tmp_path):
    lora = random_lora(base, ["transformer_blocks.0.attn1.to_k"], rank=4, alpha=1.0)
    folded = read_lora(save_lora(lora, tmp_path / "f.safetensors"))
    keyed = read_lora(save_lora(lora, tmp_path / "k.safetensors", alpha_keys=True))
    w = lora.layers["transformer_blocks.0.attn1.to_k"]
    ref = w.scale * w.B @ w.A
    for f in (folded, keyed):
        got = f.layers["transformer_blocks.0.attn1.to_k"]
        torch.testing.assert_close(got.scale * got.B @ got.A, ref)
    assert folded.layers["transformer_blocks.0.attn1.to_k"].alpha == 4.0


@pytest.mark.parametrize("strength", [1.0, 0.5, -0.7])
def test_apply_matches_peft(base, inputs, tmp_path, strength):
    peft_model = peft_wrapped(base, r=4, alpha=8)
    peft_model.set_adapters(["default"], weights=[strength])
    expected = run(peft_model, inputs)
    assert all(w.alpha == 8.0 for w in lora_from_peft(peft_model).layers.values())
    path = save_lora(peft_model, tmp_path / "p.safetensors")
    assert json.loads(file_keys(path)[1]["editctrl.alpha"]) == 8
    lora = read_lora(path)
    assert all(w.scale == 1.0 for w in lora.layers.values())
    assert len(lora.layers) == 4 * 6 * 2
    with apply_loras(base, [(lora, strength)]):
        got = run(base, inputs)
    assert not torch.allclose(expected, run(base, inputs), atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_strength_zero_is_bit_exact_base(base, inputs, tmp_path):
    ref = run(base, inputs)
    lora = lora_from_peft(peft_wrapped(base))
    with apply_loras(base, [(lora, 0.0)]) as patch:
        assert len(patch) == 0
        assert torch.equal(run(base, inputs), ref)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_stacking_two_equals_peft_with_two_adapters(base, inputs):
    both = peft_wrapped(base, name="a", r=4, alpha=8, seed=11)
    torch.manual_seed(12)
    both.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v", "proj_in"],
                                init_lora_weights=False), adapter_name="b")
    la, lb = lora_from_peft(both, "a"), lora_from_peft(both, "b")
    both.set_adapters(["a", "b"], weights=[0.8, -1.3])
    expected = run(both, inputs)
    with apply_loras(base, [(la, 0.8), (lb, -1.3)]):
        got = run(base, inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    lin = base.get_submodule("transformer_blocks.0.attn1.to_q")
    x = torch.randn(3, lin.in_features)
    y0 = lin(x)
    deltas = []
    for pair in ([(la, 0.8)], [(lb, -1.3)]):
        with apply_loras(base, pair):
            deltas.append(lin(x) - y0)
    with apply_loras(base, [(la, 0.8), (lb, -1.3)]):
        torch.testing.assert_close(lin(x) - y0, deltas[0] + deltas[1], atol=1e-6, rtol=1e-5)


def test_removal_restores_bit_exact_output_and_weights(base, inputs):
    ref = run(base, inputs)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    lora = lora_from_peft(peft_wrapped(base))
    patch = apply_loras(base, [(lora, 1.0), (lora, 0.3)])
    assert patch.active and len(patch) == len(lora.layers)
    assert not torch.equal(run(base, inputs), ref)
    patch.remove()
    patch.remove()
    assert torch.equal(run(base, inputs), ref)
    apply_loras(base, [(lora, 2.0)])
    apply_loras(base, [(lora, 1.0)])
    assert remove_loras(base) == 2
    assert torch.equal(run(base, inputs), ref)
    assert all(torch.equal(v, weights[k]) for k, v in base.state_dict().items())
    assert not any(m._forward_hooks for m in base.modules())


def test_mismatch_other_model_size(base, inputs, tmp_path):
    other = make_model(head_dim=8)
    path = save_lora(lora_from_peft(peft_wrapped(other)), tmp_path / "small.safetensors",
                     {"base_model": "tiny-h8"})
    lora = read_lora(path)
    good = lora_from_peft(peft_wrapped(base))
    ref = run(base, inputs)
    with pytest.raises(LoraMismatchError) as e:
        apply_loras(base, [(good, 1.0), (lora, 1.0)])
    msg = str(e.value)
    assert "small.safetensors" in msg and "tiny-h8" in msg
    assert "transformer_blocks.0.attn1.to_" in msg and "Linear(in=32, out=32)" in msg
    assert "(4, 16)" in msg and "Nothing was applied" in msg
    assert torch.equal(run(base, inputs), ref)
    assert not any(m._forward_hooks for m in base.modules())


def test_mismatch_missing_module_and_non_linear(base, inputs):
    deeper = make_model(num_layers=4)
    lora = lora_from_peft(peft_wrapped(deeper))
    with pytest.raises(LoraMismatchError) as e:
        apply_loras(base, [(lora, 1.0)])
    assert "transformer_blocks.2." in str(e.value) and "no such module" in str(e.value)
    assert "48 of 96 layers" in str(e.value)
    bad = LoraFile(layers={"transformer_blocks.0.attn1.norm_q": LoraWeights(torch.zeros(1, 32), torch.zeros(32, 1),
                                                                            1.0)})
    with pytest.raises(LoraMismatchError, match="norm_q: module is RMSNorm, not nn.Linear"):
        apply_loras(base, [(bad, 1.0)])
    assert not any(m._forward_hooks for m in base.modules())


def test_corrupt_and_malformed_files(base, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00not json at all" + bytes(range(50)))
    with pytest.raises(LoraFormatError, match="not a readable safetensors LoRA"):
        read_lora(junk)
    good = save_lora(random_lora(base, ["proj_in"]), tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(LoraFormatError, match="truncated or corrupt"):
        read_lora(cut)
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "absent.safetensors")

    a, b = torch.zeros(2, 16), torch.zeros(32, 2)
    cases = {
        "only_a": ({"diffusion_model.patchify_proj.lora_A.weight": a}, "no lora_B tensor"),
        "mixed": ({"diffusion_model.patchify_proj.lora_A.weight": a, "transformer.proj_in.lora_B.weight": b},
                  "mix several prefixes"),
        "unknown": ({"diffusion_model.patchify_proj.lora_A.weight": a, "diffusion_model.patchify_proj.lora_B.weight":
                     b, "diffusion_model.patchify_proj.diff": b.clone()}, "unsupported keys"),
        "rank": ({"diffusion_model.patchify_proj.lora_A.weight": a,
                  "diffusion_model.patchify_proj.lora_B.weight": torch.zeros(32, 3)}, "rank mismatch"),
        "nan": ({"diffusion_model.patchify_proj.lora_A.weight": a * float("nan"),
                 "diffusion_model.patchify_proj.lora_B.weight": b}, "NaN or Inf"),
        "kohya": ({"lora_unet_patchify_proj.lora_down.weight": a}, "kohya"),
    }
    for name, (sd, pattern) in cases.items():
        p = tmp_path / f"{name}.safetensors"
        save_file(sd, str(p))
        with pytest.raises(LoraFormatError, match=pattern):
            read_lora(p)


def test_reads_diffusers_and_peft_keys(base, inputs, tmp_path):
    peft_model = peft_wrapped(base, r=4, alpha=2)
    expected = run(peft_model, inputs)
    peft_sd = get_peft_model_state_dict(peft_model)
    LTX2Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=peft_sd,
                                   transformer_lora_adapter_metadata=peft_model.peft_config["default"].to_dict(),
                                   weight_name="diffusers.safetensors")
    keys, _ = file_keys(tmp_path / "diffusers.safetensors")
    assert all(k.startswith("transformer.") for k in keys)
    save_file({k: v.contiguous() for k, v in peft_sd.items()}, str(tmp_path / "plain.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": 2, "r": 4})})
    torch.manual_seed(5)
    wrapped = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=2, target_modules=ATTN_TARGETS,
                                                             init_lora_weights=False))
    expected_wrapped = run(wrapped.eval(), inputs)
    wrapped.save_pretrained(str(tmp_path / "peft"))
    keys, _ = file_keys(tmp_path / "peft" / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.transformer_blocks.") for k in keys)
    cases = [("diffusers.safetensors", "diffusers", expected), ("plain.safetensors", "plain", expected),
             ("peft/adapter_model.safetensors", "peft", expected_wrapped)]
    for name, fmt, want in cases:
        lora = read_lora(tmp_path / name)
        assert lora.source_format == fmt and len(lora.layers) == len(peft_sd) // 2
        assert all(w.alpha == 2.0 for w in lora.layers.values())
        with apply_loras(base, [(lora, 1.0)]):
            torch.testing.assert_close(run(base, inputs), want, atol=1e-5, rtol=1e-5)
    (tmp_path / "peft" / "adapter_config.json").unlink()
    assert all(w.alpha == 4.0 for w in read_lora(tmp_path / "peft" / "adapter_model.safetensors").layers.values())


def test_diffusers_pipeline_loads_our_file(base, inputs, tmp_path):
    lora = random_lora(base, linear_names(base), rank=3, alpha=1.5)
    path = save_lora(lora, tmp_path / "all.safetensors", {"base_model": "tiny"})
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, audio_vae=None, text_encoder=None,
                        tokenizer=None, connectors=None, transformer=copy.deepcopy(base), vocoder=None)
    pipe.load_lora_weights(str(path), adapter_name="ours")
    injected = [n for n, m in pipe.transformer.named_modules() if isinstance(m, LoraLayer)]
    assert sorted(injected) == sorted(lora.layers)
    ours = read_lora(path)
    for strength in (1.0, 0.4):
        pipe.set_adapters(["ours"], [strength])
        with apply_loras(base, [(ours, strength)]):
            torch.testing.assert_close(run(base, inputs), run(pipe.transformer, inputs), atol=1e-5, rtol=1e-5)

    keyed = save_lora(lora, tmp_path / "keyed.safetensors", alpha_keys=True)
    pipe2 = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, audio_vae=None, text_encoder=None,
                         tokenizer=None, connectors=None, transformer=copy.deepcopy(base), vocoder=None)
    with pytest.raises(ValueError, match="lora"):
        pipe2.load_lora_weights(str(keyed))


def test_save_rejects_reserved_metadata_and_prefixed_names(base, tmp_path):
    lora = random_lora(base, ["proj_in"])
    with pytest.raises(ValueError, match="reserved"):
        save_lora(lora, tmp_path / "x.safetensors", {"editctrl.rank": 1})
    w = lora.layers["proj_in"]
    with pytest.raises(ValueError, match="bare diffusers module paths"):
        save_lora({"transformer.proj_in": (w.A, w.B, w.alpha)}, tmp_path / "y.safetensors")
    assert not list(tmp_path.iterdir())


def test_lora_metadata_selects_the_scd_prefix_it_was_trained_with(base, tmp_path):
    from editctrl_core.edit.scd import SCDModel, SCDOptions
    from editctrl_core.editmodel import EditModel
    from editctrl_core.loading.models import load_preset

    model = EditModel(SCDModel(base, SCDOptions(split_layer=1)), load_preset("tiny"), "memory")
    lora = random_lora(base, ["transformer_blocks.1.attn1.to_q"])
    trained = read_lora(save_lora(lora, tmp_path / "bi.safetensors", {"scd_prefix": "bidirectional"}))
    out = model.with_lora(trained, 1.0)
    assert out.scd.options.prefix == "bidirectional" and out.scd.transformer is base
    assert model.scd.options.prefix == "one_way"  # the input model is left as it was
    plain = model.with_lora(read_lora(save_lora(lora, tmp_path / "plain.safetensors")), 1.0)
    assert plain.scd is model.scd
    odd = read_lora(save_lora(lora, tmp_path / "odd.safetensors", {"scd_prefix": "sideways"}))
    with pytest.raises(ValueError, match="unknown SCD prefix mode 'sideways'"):
        model.with_lora(odd, 1.0)
