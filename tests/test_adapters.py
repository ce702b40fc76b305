"""EditCtrl adapters: zero-init residuals, σ-dependent AdaLN, 3D pooling, and strict safetensors adapter files."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from editctrl_core.edit.adapters import (
    AdapterLoadError,
    GlobalContextConfig,
    GlobalContextEmbedder,
    LocalContextConfig,
    LocalContextModule,
    load_adapter,
    local_context_tokens,
    pooled_grid,
    read_adapter_metadata,
    save_adapter,
    token_coords,
)
from editctrl_core.edit.context import blank_background

LOCAL = LocalContextConfig(in_channels=9, width=32, num_blocks=2, heads=2, head_dim=16, text_dim=24, model_dim=48,
                           target_blocks=(0, 2, 4))
GLOBAL = GlobalContextConfig(in_channels=9, model_dim=48, max_tokens=24, heads=2, head_dim=16, target_blocks=(1, 3))
GRID = (3, 4, 5)
UNPICKLED: list[bool] = []


def _trip() -> dict:
    """Runs only if someone unpickles the tripwire file."""
    UNPICKLED.append(True)
    return {}


class _Tripwire:
    """Pickles to a call of `_trip`, so unpickling it is observable."""

    def __reduce__(self):
        return (_trip, ())


def _local_inputs(batch: int = 2, seed: int = 0):
    """Gathered context tokens, their noisy latents x_t, their coordinates and text for the tiny local config."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(GRID[0] * GRID[1] * GRID[2], generator=gen)[:11]
    tokens = torch.randn(batch, idx.numel(), LOCAL.in_channels, generator=gen)
    noisy = torch.randn(batch, idx.numel(), LOCAL.noisy_channels, generator=gen)
    text = torch.randn(batch, 7, LOCAL.text_dim, generator=gen)
    return tokens, noisy, token_coords(idx, GRID), text


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every zero-initialised output projection random weights, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "out_proj" in name or "to_out" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module


def test_fresh_local_module_changes_nothing():
    torch.manual_seed(0)
    module = LocalContextModule(LOCAL)
    tokens, noisy, coords, text = _local_inputs()
    out = module(tokens, noisy, coords, text, torch.tensor([0.3, 0.8]))
    assert sorted(out) == [0, 2, 4]
    hidden = torch.randn(2, tokens.shape[1], LOCAL.model_dim)
    for residual in out.values():
        assert residual.shape == (2, tokens.shape[1], LOCAL.model_dim)
        assert torch.equal(residual, torch.zeros_like(residual))
        assert torch.equal(hidden + residual, hidden)


def test_fresh_global_branches_change_nothing():
    torch.manual_seed(0)
    embedder = GlobalContextEmbedder(GLOBAL)
    global_input = torch.cat([torch.randn(2, 8, 5, 6, 7), torch.zeros(2, 1, 5, 6, 7)], dim=1)
    context = embedder(global_input)
    assert context.shape == (2, 24, GLOBAL.model_dim)
    assert bool(torch.isfinite(context).all())
    hidden = torch.randn(2, 13, GLOBAL.model_dim)
    for block in GLOBAL.target_blocks:
        residual = embedder.branch(block, hidden, context)
        assert torch.equal(residual, torch.zeros_like(hidden))
    with pytest.raises(KeyError, match="targets are"):
        embedder.branch(0, hidden, context)


def test_local_timestep_conditioning_is_recomputed_from_sigma():
    torch.manual_seed(0)
    module = _perturbed(LocalContextModule(LOCAL))
    tokens, noisy, coords, text = _local_inputs()
    early = module(tokens, noisy, coords, text, 0.9)
    late = module(tokens, noisy, coords, text, 0.1)
    again = module(tokens, noisy, coords, text, 0.1)
    for block in LOCAL.target_blocks:
        assert (early[block] - late[block]).abs().max() > 1e-3
        assert torch.equal(late[block], again[block])
    mixed = module(tokens, noisy, coords, text, torch.tensor([0.9, 0.1]))
    assert torch.allclose(mixed[0][0], early[0][0], atol=1e-5)
    assert torch.allclose(mixed[0][1], late[0][1], atol=1e-5)


def test_local_positions_are_relative_and_follow_the_tokens():
    torch.manual_seed(1)
    module = _perturbed(LocalContextModule(LOCAL))
    tokens, noisy, coords, text = _local_inputs(batch=1)
    base = module(tokens, noisy, coords, text, 0.5)[2]
    shifted = module(tokens, noisy, coords + torch.tensor([[2.0], [5.0], [-3.0]]), text, 0.5)[2]
    assert torch.allclose(base, shifted, atol=1e-4)
    perm = torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(0))
    permuted = module(tokens[:, perm], noisy[:, perm], coords[:, perm], text, 0.5)[2]
    assert torch.allclose(permuted, base[:, perm], atol=1e-5)
    moved = coords.clone()
    moved[2, 0] += 1.0
    assert (module(tokens, noisy, moved, text, 0.5)[2] - base).abs().max() > 1e-4
    batched = module(tokens, noisy, coords[None], text, 0.5)[2]
    assert torch.equal(batched, base)


def test_local_text_mask_hides_masked_text():
    torch.manual_seed(2)
    module = _perturbed(LocalContextModule(LOCAL))
    tokens, noisy, coords, text = _local_inputs()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 5:] = False
    changed = text.clone()
    changed[:, 5:] = torch.randn(2, 2, LOCAL.text_dim)
    a = module(tokens, noisy, coords, text, 0.4, text_mask=mask)[0]
    b = module(tokens, noisy, coords, changed, 0.4, text_mask=mask)[0]
    assert torch.allclose(a, b, atol=1e-6)
    assert (module(tokens, noisy, coords, changed, 0.4)[0] - a).abs().max() > 1e-4
    bias = ((1 - mask.float()) * -10000.0).unsqueeze(1)
    assert torch.equal(module(tokens, noisy, coords, text, 0.4, text_mask=bias)[0], a)
    assert torch.equal(module(tokens, noisy, coords, text, 0.4, text_mask=mask.float())[0], a)
    none = module(tokens, noisy, coords, text, 0.4, text_mask=torch.zeros(2, 7))[0]
    assert bool(torch.isfinite(none).all())


def test_local_module_rejects_wrong_inputs():
    module = LocalContextModule(LOCAL)
    tokens, noisy, coords, text = _local_inputs()
    with pytest.raises(ValueError, match="in_channels=9"):
        module(tokens[..., :8], noisy, coords, text, 0.5)
    with pytest.raises(ValueError, match="text_dim=24"):
        module(tokens, noisy, coords, text[..., :20], 0.5)
    with pytest.raises(ValueError, match="coords"):
        module(tokens, noisy, coords[:, :5], text, 0.5)
    with pytest.raises(ValueError, match="sigma"):
        module(tokens, noisy, coords, text, torch.tensor([0.1, 0.2, 0.3]))


def test_token_coords_and_local_tokens():
    idx = torch.tensor([0, 6, 59, 27])
    assert token_coords(idx, GRID).tolist() == [[0, 0, 2, 1], [0, 1, 3, 1], [0, 1, 4, 2]]
    with pytest.raises(ValueError):
        token_coords(torch.tensor([60]), GRID)
    latents = torch.randn(2, 8, *GRID)
    edit = torch.zeros(GRID, dtype=torch.bool)
    edit[1, 1:3, 1:4] = True
    flat_edit = edit.flatten()
    idx = torch.tensor([0, 26, 27, 33, 59])
    grey = torch.randn(1, 8, *GRID)
    background = blank_background(latents, edit, grey)
    toks = local_context_tokens(background, edit, idx)
    assert toks.shape == (2, 5, 9)
    assert toks[..., 8].tolist() == [flat_edit[idx].float().tolist()] * 2
    flat, flat_grey = latents.flatten(2).transpose(1, 2), grey.flatten(2).transpose(1, 2)
    for j, i in enumerate(idx.tolist()):
        expected = flat_grey[:, i].expand(2, -1) if flat_edit[i] else flat[:, i]
        assert torch.equal(toks[:, j, :8], expected)


def test_pooled_grid_keeps_3d_structure_within_budget():
    assert pooled_grid(16, 16, 24, 256) == (5, 5, 10)
    assert pooled_grid(2, 4, 6, 256) == (2, 4, 6)
    assert pooled_grid(16, 16, 24, 1) == (1, 1, 1)
    assert pooled_grid(1, 16, 24, 256) == (1, 13, 19)


@settings(max_examples=60, deadline=None)
@given(f=st.integers(1, 40), h=st.integers(1, 40), w=st.integers(1, 60), budget=st.integers(1, 300))
def test_pooled_grid_bounds(f, h, w, budget):
    pf, ph, pw = pooled_grid(f, h, w, budget)
    assert 1 <= pf <= f and 1 <= ph <= h and 1 <= pw <= w
    assert pf * ph * pw <= max(budget, 1)
    if f * h * w <= budget:
        assert (pf, ph, pw) == (f, h, w)


def test_global_pooling_puts_frame_content_in_the_matching_pooled_frame():
    cfg = GlobalContextConfig(in_channels=2, model_dim=16, max_tokens=256, heads=2, head_dim=8, target_blocks=(0,))
    embedder = GlobalContextEmbedder(cfg)
    f, h, w = 16, 16, 24
    pf, ph, pw = pooled_grid(f, h, w, 256)
    def with_mask(latents, mask):
        return torch.cat([latents, mask.expand(1, 1, f, h, w)], dim=1)

    no_edit = torch.zeros(f, h, w)
    for frame in (0, 7, 15):
        background = torch.zeros(1, 1, f, h, w)
        background[0, 0, frame] = 1.0
        pooled = embedder.pool(with_mask(background, no_edit))[0, 0]
        assert pooled.shape == (pf, ph, pw)
        hit = [j for j in range(pf) if bool((pooled[j] != 0).any())]
        bins = [j for j in range(pf) if (j * f) // pf <= frame < -((-(j + 1) * f) // pf)]
        assert hit == bins and len(bins) <= 2
    corner = torch.zeros(1, 1, f, h, w)
    corner[0, 0, :, :3, :2] = 1.0
    pooled = embedder.pool(with_mask(corner, no_edit))[0, 0]
    assert bool((pooled[:, 0, 0] > 0).all()) and float(pooled[:, 1:, :].abs().sum()) == 0.0
    edit = torch.zeros(f, h, w)
    edit[:, 8:, 12:] = 1.0
    mask_channel = embedder.pool(with_mask(torch.zeros(1, 1, f, h, w), edit))[0, 1]
    assert float(mask_channel[:, 0, 0].max()) == 0.0 and float(mask_channel[:, -1, -1].min()) == 1.0


def test_global_context_reaches_the_branch_once_trained():
    torch.manual_seed(3)
    embedder = _perturbed(GlobalContextEmbedder(GLOBAL))
    background = torch.randn(1, 8, 5, 6, 7)
    edit = torch.zeros(1, 1, 5, 6, 7)
    hidden = torch.randn(1, 9, GLOBAL.model_dim)
    a = embedder.branch(3, hidden, embedder(torch.cat([background, edit], 1)))
    b = embedder.branch(3, hidden, embedder(torch.cat([background + 1.0, edit], 1)))
    assert (a - b).abs().max() > 1e-4
    context = embedder(torch.cat([background, edit], 1))
    cached = embedder.branch(3, hidden, kv=embedder.branch_kv(3, context))
    assert torch.equal(cached, embedder.branch(3, hidden, context))


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bitwise-equal state dicts (same keys, dtypes and values)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    torch.manual_seed(4)
    local = _perturbed(LocalContextModule(LOCAL)).to(dtype)
    glob = _perturbed(GlobalContextEmbedder(GLOBAL)).to(dtype)
    save_adapter(local, tmp_path / "local.safetensors", "ltx-2.0-19b", 32)
    save_adapter(glob, tmp_path / "global.safetensors", "ltx-2.0-19b", 32)
    loaded_local = load_adapter(tmp_path / "local.safetensors", "ltx-2.0-19b", 32)
    loaded_global = load_adapter(tmp_path / "global.safetensors", "ltx-2.0-19b", 32, expected_kind="global_context")
    assert isinstance(loaded_local, LocalContextModule) and loaded_local.config == LOCAL
    assert isinstance(loaded_global, GlobalContextEmbedder) and loaded_global.config == GLOBAL
    _assert_same_state(local, loaded_local)
    _assert_same_state(glob, loaded_global)
    into = LocalContextModule(LOCAL).to(dtype)
    assert load_adapter(tmp_path / "local.safetensors", "ltx-2.0-19b", 32, module=into) is into
    _assert_same_state(local, into)
    tokens, noisy, coords, text = _local_inputs()
    assert torch.equal(local(tokens, noisy, coords, text, 0.5)[4],
                       loaded_local(tokens, noisy, coords, text, 0.5)[4])
    with safe_open(str(tmp_path / "local.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["editctrl.kind"]) == "local_context"
    assert json.loads(meta["editctrl.base_model_id"]) == "ltx-2.0-19b"
    assert json.loads(meta["editctrl.split_layer"]) == 32
    assert json.loads(meta["editctrl.config"])["target_blocks"] == [0, 2, 4]
    info = read_adapter_metadata(tmp_path / "global.safetensors")
    assert (info.kind, info.base_model_id, info.split_layer) == ("global_context", "ltx-2.0-19b", 32)
    assert not list(tmp_path.glob("*.tmp"))


def test_seed_defect_2_block_512_file_into_4_block_4096_module_is_refused(tmp_path):
    torch.manual_seed(5)
    seed_trained = LocalContextModule(LocalContextConfig(num_blocks=2, width=512)).to(torch.bfloat16)
    path = tmp_path / "seed_local.safetensors"
    save_adapter(seed_trained, path, "ltx-2.0-19b", 32)
    inference = LocalContextModule(LocalContextConfig(num_blocks=4, width=4096, heads=32, head_dim=128), device="meta")
    with pytest.raises(AdapterLoadError) as err:
        load_adapter(path, "ltx-2.0-19b", 32, module=inference)
    message = str(err.value)
    assert "num_blocks: file=2, module=4" in message and "width: file=512, module=4096" in message
    assert "heads: file=8, module=32" in message and "without passing a module" in message
    built = load_adapter(path, "ltx-2.0-19b", 32, expected_config={"model_dim": 4096, "text_dim": 4096})
    assert built.config.num_blocks == 2 and built.config.width == 512
    assert built.blocks[1].ff[0].weight.dtype == torch.bfloat16


def _rewrite(src, dst, edit) -> None:
    """Copy an adapter file with its metadata, applying `edit` to the tensor dict."""
    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(tensors)
    save_file(tensors, str(dst), metadata=meta)


def test_strict_loading_names_every_difference(tmp_path):
    torch.manual_seed(6)
    module = _perturbed(LocalContextModule(LOCAL))
    good = tmp_path / "good.safetensors"
    save_adapter(module, good, "ltx-2.0-19b", 32)
    save_adapter(GlobalContextEmbedder(GLOBAL), tmp_path / "global.safetensors", "ltx-2.0-19b", 32)

    with pytest.raises(AdapterLoadError, match="base model 'ltx-2.0-19b'.*'ltx-2.3-22b'"):
        load_adapter(good, "ltx-2.3-22b", 32)
    with pytest.raises(AdapterLoadError, match="split at layer 32.*split at\\s+layer 30"):
        load_adapter(good, "ltx-2.0-19b", 30)
    with pytest.raises(AdapterLoadError, match="'local_context' adapter, not 'global_context'"):
        load_adapter(good, "ltx-2.0-19b", 32, expected_kind="global_context")
    with pytest.raises(AdapterLoadError, match="GlobalContextEmbedder"):
        load_adapter(tmp_path / "global.safetensors", "ltx-2.0-19b", 32, module=LocalContextModule(LOCAL))
    with pytest.raises(AdapterLoadError, match="model_dim: file=48, required=4096"):
        load_adapter(good, "ltx-2.0-19b", 32, expected_config={"model_dim": 4096})

    target = _perturbed(LocalContextModule(LOCAL), seed=9)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    cases = {
        "missing": (lambda t: t.pop("blocks.1.ff.2.bias"), "missing tensors \\['blocks.1.ff.2.bias'\\]"),
        "unexpected": (lambda t: t.__setitem__("blocks.2.ff.2.bias", torch.zeros(32)),
                       "unexpected tensors \\['blocks.2.ff.2.bias'\\]"),
        "shape": (lambda t: t.__setitem__("out_proj.2.weight", torch.zeros(48, 33)),
                  "out_proj.2.weight: file \\(48, 33\\) vs module \\(48, 32\\)"),
    }
    for name, (edit, pattern) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        _rewrite(good, bad, edit)
        with pytest.raises(AdapterLoadError, match=pattern):
            load_adapter(bad, "ltx-2.0-19b", 32, module=target)
        with pytest.raises(AdapterLoadError, match=pattern):
            load_adapter(bad, "ltx-2.0-19b", 32)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(AdapterLoadError, match="not an EditCtrl adapter file"):
        load_adapter(bare, "ltx-2.0-19b", 32)
    with pytest.raises(AdapterLoadError, match="does not exist"):
        load_adapter(tmp_path / "nope.safetensors", "ltx-2.0-19b", 32)


def test_corrupt_and_pickled_files_are_refused_without_unpickling(tmp_path):
    good = tmp_path / "good.safetensors"
    save_adapter(LocalContextModule(LOCAL), good, "ltx-2.0-19b", 32)
    data = good.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 200, 9, 3, 0):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(AdapterLoadError, match="corrupt or truncated"):
            load_adapter(bad, "ltx-2.0-19b", 32)
    garbled = bytearray(data)
    garbled[8:40] = b"#" * 32
    (tmp_path / "garbled.safetensors").write_bytes(bytes(garbled))
    with pytest.raises(AdapterLoadError, match="corrupt"):
        load_adapter(tmp_path / "garbled.safetensors", "ltx-2.0-19b", 32)
    trap = tmp_path / "adapter.safetensors"
    torch.save({"out_proj.0.weight": _Tripwire()}, trap)
    with pytest.raises(AdapterLoadError, match="pickle/torch checkpoint.*not unpickled"):
        load_adapter(trap, "ltx-2.0-19b", 32)
    assert UNPICKLED == []


def test_configs_validate():
    with pytest.raises(ValueError, match="width"):
        LocalContextConfig(width=0)
    with pytest.raises(ValueError, match="head_dim"):
        LocalContextConfig(head_dim=63)
    with pytest.raises(ValueError, match="target_blocks"):
        LocalContextConfig(target_blocks=(0, 0))
    with pytest.raises(ValueError, match="target_blocks"):
        GlobalContextConfig(target_blocks=())
    assert LocalContextConfig().target_blocks == (0, 2, 4, 6, 8, 10, 12, 14)
    assert LocalContextConfig(target_blocks=(4, 1)).target_blocks == (1, 4)


def test_local_hints_follow_the_noisy_latents():
    """VACE/EditCtrl: the local branch reads x_t of the masked tokens, so its hints change with x_t, every step."""
    torch.manual_seed(7)
    module = _perturbed(LocalContextModule(LOCAL))
    tokens, noisy, coords, text = _local_inputs()
    base = module(tokens, noisy, coords, text, 0.5)
    moved = module(tokens, noisy + torch.randn_like(noisy), coords, text, 0.5)
    for block in LOCAL.target_blocks:
        assert (base[block] - moved[block]).abs().max() > 1e-3, block
    one = noisy.clone()
    one[:, 3] += 1.0
    touched = module(tokens, one, coords, text, 0.5)
    assert (touched[0][:, 3] - base[0][:, 3]).abs().max() > 1e-4
    assert torch.equal(module(tokens, noisy.clone(), coords, text, 0.5)[4], base[4])
    prepared = module.prepare(tokens, coords, text)
    for x in (noisy, noisy + 1.0):
        stepped, direct = module.step(prepared, x, 0.5), module(tokens, x, coords, text, 0.5)
        assert all(torch.equal(stepped[b], direct[b]) for b in LOCAL.target_blocks)
    with pytest.raises(ValueError, match="noisy latents must be"):
        module(tokens, noisy[..., :5], coords, text, 0.5)
    with pytest.raises(ValueError, match="noisy latents must be"):
        module(tokens, noisy[:, :4], coords, text, 0.5)


def test_local_hint_per_target_block_comes_from_its_own_depth():
    """One module block per target (num_blocks == targets) as in VACE: target j's hint is read after block j, so
    blocks deeper than j do not change it; with fewer blocks the targets share blocks by depth."""
    assert LOCAL.hint_sources() == {0: 0, 2: 1, 4: 1}
    assert LocalContextConfig(num_blocks=3, target_blocks=(0, 5, 9)).hint_sources() == {0: 0, 5: 1, 9: 2}
    assert LocalContextConfig(num_blocks=4, target_blocks=(0, 1)).hint_sources() == {0: 1, 1: 3}
    assert set(LocalContextConfig().hint_sources().values()) == {0, 1}
    cfg = LocalContextConfig(in_channels=9, width=32, num_blocks=3, heads=2, head_dim=16, text_dim=24, model_dim=48,
                             target_blocks=(0, 1, 2))
    torch.manual_seed(8)
    module = _perturbed(LocalContextModule(cfg))
    tokens, noisy, coords, text = _local_inputs()
    before = module(tokens, noisy, coords, text, 0.3)
    with torch.no_grad():
        for p in module.blocks[2].parameters():
            p.add_(0.5)
    after = module(tokens, noisy, coords, text, 0.3)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert (before[2] - after[2]).abs().max() > 1e-3


def _old_layout(src, dst, drop: tuple[str, ...]) -> None:
    """Rewrite a current adapter file as a layout-1 file: no 'editctrl.layout' entry, without `drop`'s tensors."""
    with safe_open(str(src), framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != "editctrl.layout"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith(drop)}
    save_file(tensors, str(dst), metadata=meta)


def test_old_layout_local_file_is_refused_with_what_changed_and_how_to_retrain(tmp_path):
    good = tmp_path / "local.safetensors"
    save_adapter(_perturbed(LocalContextModule(LOCAL)), good, "ltx-2.0-19b", 32)
    with safe_open(str(good), framework="pt") as fh:
        assert json.loads(fh.metadata()["editctrl.layout"]) == LocalContextModule.LAYOUT == 2
    assert read_adapter_metadata(good).layout == 2
    old = tmp_path / "old_local.safetensors"
    _old_layout(good, old, ("proj_noisy",))
    assert read_adapter_metadata(old).layout == 1
    for kwargs in ({}, {"expected_kind": "local_context"}, {"module": LocalContextModule(LOCAL)}):
        with pytest.raises(AdapterLoadError) as err:
            load_adapter(old, "ltx-2.0-19b", 32, **kwargs)
        message = str(err.value)
        assert "old layout 1" in message and "without the noisy latents x_t" in message, message
        assert "Retrain" in message and "'editctrl_local' stage" in message and "old_local.safetensors" in message


def test_global_embedder_is_a_copy_of_the_patch_embedding():
    """EditCtrl: global tokens = a copy of the model's patch embedding applied to the low-resolution latents; no
    position features, no random embedding layer; the extra mask column starts at zero."""
    torch.manual_seed(9)
    proj_in = torch.nn.Linear(8, GLOBAL.model_dim)
    embedder = GlobalContextEmbedder(GLOBAL, patch_embedding=proj_in)
    assert sorted({k.split(".")[0] for k in embedder.state_dict()}) == ["branches", "patch_embed"]
    edit = torch.zeros(2, 1, 5, 6, 7)
    edit[:, :, :, 2:4, 2:5] = 1.0
    global_input = torch.cat([torch.randn(2, 8, 5, 6, 7), edit], dim=1)
    pooled = embedder.pool(global_input)
    context = embedder(global_input)
    assert torch.allclose(context, proj_in(pooled[:, :8].flatten(2).transpose(1, 2)), atol=1e-6)
    same = torch.cat([torch.ones(1, 8, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)], dim=1)
    tokens = GlobalContextEmbedder(GLOBAL, patch_embedding=proj_in)(same)
    small = torch.randn(1, 9, 2, 3, 4)  # fits the budget: embedded as it is, no pooling
    assert torch.equal(embedder.pool(small), small)
    assert torch.allclose(tokens, tokens[:, :1].expand_as(tokens))
    assert torch.equal(embedder.branch(1, torch.randn(2, 4, GLOBAL.model_dim), context),
                       torch.zeros(2, 4, GLOBAL.model_dim))
    with pytest.raises(ValueError, match="patch embedding"):
        embedder.copy_patch_embedding(torch.nn.Linear(7, GLOBAL.model_dim))


def test_old_layout_global_file_is_refused(tmp_path):
    good = tmp_path / "global.safetensors"
    save_adapter(GlobalContextEmbedder(GLOBAL), good, "ltx-2.0-19b", 32)
    old = tmp_path / "old_global.safetensors"
    _old_layout(good, old, ())
    with pytest.raises(AdapterLoadError, match="old layout 1.*randomly initialised Linear.*Retrain.*editctrl_global"):
        load_adapter(old, "ltx-2.0-19b", 32)


def test_pooled_background_global_file_is_refused_with_what_changed(tmp_path):
    """A layout-2 global file (trained on the average-pooled full-size background) is refused: its input is now
    the VAE latents of the low-resolution masked frames."""
    good = tmp_path / "global.safetensors"
    save_adapter(GlobalContextEmbedder(GLOBAL), good, "ltx-2.0-19b", 32)
    assert read_adapter_metadata(good).layout == GlobalContextEmbedder.LAYOUT == 3
    with safe_open(str(good), framework="pt") as fh:
        meta = {**fh.metadata(), "editctrl.layout": "2"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    old = tmp_path / "pooled_global.safetensors"
    save_file(tensors, str(old), metadata=meta)
    for kwargs in ({}, {"expected_kind": "global_context"}, {"module": GlobalContextEmbedder(GLOBAL)}):
        with pytest.raises(AdapterLoadError) as err:
            load_adapter(old, "ltx-2.0-19b", 32, **kwargs)
        message = str(err.value)
        assert "old layout 2" in message and "average-pooled" in message and "low-resolution frames" in message
        assert "Retrain" in message and "'editctrl_global' stage" in message and "pooled_global" in message
