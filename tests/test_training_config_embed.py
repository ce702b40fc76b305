"""The stage sections local/global_context/tma take the core config dataclasses' own fields, defaults and checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from training_support import tiny_config

from editctrl_core.edit.adapters import GlobalContextConfig, LocalContextConfig
from editctrl_core.perception.tma import TMAConfig
from training.config import (
    ConfigError,
    GlobalConfig,
    LocalConfig,
    TMAStageConfig,
    config_from_dict,
    core_section,
    to_dict,
)

# (stage name, YAML section, training section, core config, fields the model fills in, training-only fields)
SECTIONS = [
    ("editctrl_local", "local", LocalConfig, LocalContextConfig,
     {"in_channels", "text_dim", "model_dim", "target_blocks"}, {"target_every"}),
    ("editctrl_global", "global_context", GlobalConfig, GlobalContextConfig,
     {"in_channels", "model_dim", "target_blocks"}, set()),
    ("tma", "tma", TMAStageConfig, TMAConfig, {"qwen_dim", "text_dim"}, {"task"}),
]
IDS = [s[1] for s in SECTIONS]


def _stage_overrides(tmp_path: Path, stage: str, section: str, body: str) -> list[str]:
    """Overrides that make stages[1] a `stage` stage whose `section` is the YAML mapping `body`."""
    return ["data.qwen_feature_dir=" + str(tmp_path), f"stages[1].name={stage}", "stages[1].steps=1",
            "stages[1].lr=1e-4", f"stages[1].{section}={body}"]


def _core_fields(core: type, filled: set[str]) -> list[dataclasses.Field]:
    """The core config's fields a YAML section holds."""
    return [f for f in dataclasses.fields(core) if f.name not in filled]


@pytest.mark.parametrize("stage, section, cls, core, filled, extra", SECTIONS, ids=IDS)
def test_section_fields_are_the_core_fields(stage: str, section: str, cls: type, core: type, filled: set[str],
                                            extra: set[str]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    assert names == [f.name for f in _core_fields(core, filled)] + sorted(extra)
    default = core()
    for f in _core_fields(core, filled):
        assert getattr(cls(), f.name) == getattr(default, f.name), f.name


@pytest.mark.parametrize("stage, section, cls, core, filled, extra", SECTIONS, ids=IDS)
def test_empty_section_resolves_to_the_core_defaults(tmp_path: Path, stage: str, section: str, cls: type, core: type,
                                                     filled: set[str], extra: set[str]) -> None:
    cfg = tiny_config(tmp_path, _stage_overrides(tmp_path, stage, section, "{}"))
    parsed = getattr(cfg.stages[1], section)
    assert isinstance(parsed, cls)
    for f in _core_fields(core, filled):
        assert getattr(parsed, f.name) == getattr(core(), f.name), f.name
        assert to_dict(cfg)["stages"][1][section][f.name] == getattr(core(), f.name)


@pytest.mark.parametrize("stage, section, cls, core, filled, extra", SECTIONS, ids=IDS)
def test_each_core_field_is_a_yaml_key(tmp_path: Path, stage: str, section: str, cls: type, core: type,
                                       filled: set[str], extra: set[str]) -> None:
    base = _stage_overrides(tmp_path, stage, section, "{}")
    for f in _core_fields(core, filled):
        value = getattr(core(), f.name)
        cfg = tiny_config(tmp_path, [*base, f"stages[1].{section}.{f.name}={value!r}"])
        assert getattr(getattr(cfg.stages[1], section), f.name) == value, f.name


@pytest.mark.parametrize("stage, section, cls, core, filled, extra", SECTIONS, ids=IDS)
def test_unknown_and_model_filled_keys_are_refused(tmp_path: Path, stage: str, section: str, cls: type, core: type,
                                                   filled: set[str], extra: set[str]) -> None:
    base = _stage_overrides(tmp_path, stage, section, "{}")
    for key in ["bogus", *sorted(filled)]:
        with pytest.raises(ConfigError, match=rf"^stages\[1\]\.{section}\.{key}: unknown field"):
            tiny_config(tmp_path, [*base, f"stages[1].{section}.{key}=1"])


@pytest.mark.parametrize("section, key, value, message", [
    ("local", "width", 0, "must be a positive integer; got 0"),
    ("local", "head_dim", 63, "must be even for RoPE; got 63"),
    ("local", "mlp_ratio", 0, "must be a positive integer; got 0"),
    ("local", "target_every", 0, "must be >= 1, got 0"),
    ("global_context", "max_tokens", 0, "must be a positive integer; got 0"),
    ("tma", "num_queries", 0, "must be >= 1; got 0"),
    ("tma", "dropout", 1.0, "must be in [0, 1); got 1.0"),
])
def test_core_checks_name_the_yaml_field(tmp_path: Path, section: str, key: str, value: Any, message: str) -> None:
    stage = next(s[0] for s in SECTIONS if s[1] == section)
    overrides = [*_stage_overrides(tmp_path, stage, section, "{}"), f"stages[1].{section}.{key}={value}"]
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, overrides)
    assert str(err.value) == f"stages[1].{section}.{key}: {message}"


def test_checks_of_model_filled_fields_wait_for_the_model(tmp_path: Path) -> None:
    # qwen_dim comes from the cached features: num_heads' divisibility is checked when the connector is built
    cfg = tiny_config(tmp_path, _stage_overrides(tmp_path, "tma", "tma", "{num_heads: 7, num_tasks: 2}"))
    with pytest.raises(ValueError, match="num_heads must divide qwen_dim 32"):
        cfg.stages[1].tma.build(qwen_dim=32, text_dim=48)
    assert cfg.stages[1].tma.build(qwen_dim=56, text_dim=48).num_heads == 7


def test_build_fills_the_model_fields() -> None:
    local = LocalConfig(width=32, heads=2, head_dim=16, target_every=1)
    built = local.build(in_channels=9, text_dim=24, model_dim=48, target_blocks=(0, 1))
    assert built == LocalContextConfig(in_channels=9, width=32, heads=2, head_dim=16, text_dim=24, model_dim=48,
                                       target_blocks=(0, 1))
    assert TMAStageConfig(task=1).build(qwen_dim=3584, text_dim=3840) == TMAConfig()


@dataclasses.dataclass(frozen=True)
class _GrownCore:
    """A core config with a field the training section did not know about when it was written."""

    width: int = 8
    model_dim: int = 16
    new_ratio: float = 0.5
    new_blocks: tuple[int, ...] = (1, 2)

    @classmethod
    def problems(cls, values: dict[str, Any]) -> list[tuple[str, str]]:
        """The new field's range check."""
        ratio = values.get("new_ratio", 0.5)
        return [] if 0 < ratio < 1 else [("new_ratio", f"must be in (0, 1); got {ratio}")]


def test_a_field_added_to_the_core_config_becomes_a_yaml_key() -> None:
    from training.config import _build, _check_section

    grown = core_section("GrownConfig", _GrownCore, ("model_dim",))
    assert [f.name for f in dataclasses.fields(grown)] == ["width", "new_ratio", "new_blocks"]
    section = _build(grown, {"new_ratio": 0.25, "new_blocks": [3]}, "stages[0].grown")
    assert (section.width, section.new_ratio, section.new_blocks) == (8, 0.25, (3,))
    assert section.build(model_dim=4) == _GrownCore(width=8, model_dim=4, new_ratio=0.25, new_blocks=(3,))
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.grown\.new_ratio: must be in \(0, 1\); got 2"):
        _check_section(grown(new_ratio=2.0), "stages[0].grown")


def test_recipe_and_shipped_keys_still_parse(tmp_path: Path) -> None:
    from training.recipes.tiny_synthetic import recipe_config

    cfg = config_from_dict(recipe_config(tmp_path, 3, (1, 1, 1), 0))
    local, glob = cfg.stages[1].local, cfg.stages[2].global_context
    assert (local.width, local.num_blocks, local.heads, local.head_dim, local.target_every) == (64, 2, 4, 16, 1)
    assert (glob.max_tokens, glob.heads, glob.head_dim) == (128, 2, 16)
