"""Help and defaults as a user meets them in the node library: every node of the pack has a description and every
input and output a tooltip (read from the live server's /object_info), and loaders default to real files."""

from __future__ import annotations

from comfy_server import ComfyServer


def _pack_nodes(info: dict) -> dict:
    return {k: v for k, v in info.items() if k.startswith("EditCtrl")}


def test_every_node_input_and_output_explains_itself(comfy_server: ComfyServer) -> None:
    nodes = _pack_nodes(comfy_server.object_info())
    assert len(nodes) >= 23
    missing = []
    for name, node in nodes.items():
        if not node.get("description"):
            missing.append(f"{name}: description")
        for section in ("required", "optional"):
            for key, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not options.get("tooltip"):
                    missing.append(f"{name}.{key}")
        tips = node.get("output_tooltips") or []
        for i, out in enumerate(node.get("output_name", [])):
            if i >= len(tips) or not tips[i]:
                missing.append(f"{name} -> {out}")
    assert not missing, missing


def test_loaders_default_to_the_first_real_model_in_their_folder(comfy_server: ComfyServer) -> None:
    from editctrl_core.loading.models import build_transformer, load_preset, save_transformer_official

    folder = comfy_server.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "aaa-first-ltx2.safetensors"
    save_transformer_official(build_transformer(load_preset("tiny")), path)
    try:
        spec = comfy_server.object_info("EditCtrlModelLoader")["EditCtrlModelLoader"]["input"]["required"]
        assert spec["weights"][1]["default"] == "checkpoints/aaa-first-ltx2.safetensors"
        assert spec["preset"][1]["default"] == "auto"
        assert "tiny" in spec["preset"][1]["options"] and "(preset weights)" in spec["weights"][1]["options"]
    finally:
        path.unlink()
    spec = comfy_server.object_info("EditCtrlModelLoader")["EditCtrlModelLoader"]["input"]["required"]
    if not [o for o in spec["weights"][1]["options"] if o != "(preset weights)"]:
        assert spec["preset"][1]["default"] == "tiny" and spec["weights"][1]["default"] == "(preset weights)"
