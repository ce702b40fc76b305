"""Write the UI-format (frontend) version of an API-format workflow, using a server's /object_info.

The UI files under workflows/ are generated with this and checked against their API twins by the tests
(converted back through the live server's /object_info), so the two never drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from workflow_convert import fetch_object_info, widget_specs  # noqa: E402


def _default(spec: Any) -> Any:
    """The widget's default value from its object_info spec."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else ""
    return opts.get("options", [""])[0] if spec[0] == "COMBO" else 0


def to_ui(api: dict[str, dict[str, Any]], object_info: dict[str, Any]) -> dict[str, Any]:
    """Build the frontend's workflow JSON (nodes, links, widgets_values) for an API prompt."""
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    order = sorted(api, key=int)
    for index, node_id in enumerate(order):
        entry = api[node_id]
        definition = object_info[entry["class_type"]]
        spec_inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        names = definition["input_order"].get("required", []) + definition["input_order"].get("optional", [])
        widgets = {w["name"]: w for w in widget_specs(definition)}
        ui_inputs, values = [], []
        for name in names:
            value = entry["inputs"].get(name)
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            spec = spec_inputs[name]
            type_name = "COMBO" if isinstance(spec[0], list) else spec[0]
            link_id = None
            if is_link:
                link_id = len(links) + 1
                src, slot = int(value[0]), int(value[1])
                links.append([link_id, src, slot, int(node_id), None, type_name])
                out_links.setdefault((src, slot), []).append(link_id)
            if name in widgets:
                values.append(_default(spec) if is_link or value is None else value)
                if widgets[name]["control"]:
                    values.append("fixed")
                if is_link:
                    ui_inputs.append({"name": name, "type": type_name, "widget": {"name": name}, "link": link_id})
            elif is_link or name in definition["input"].get("required", {}):
                ui_inputs.append({"name": name, "type": type_name, "link": link_id})
            else:
                ui_inputs.append({"name": name, "type": type_name, "link": None})
            if link_id is not None:
                links[-1][4] = len(ui_inputs) - 1
        nodes.append({
            "id": int(node_id), "type": entry["class_type"],
            "pos": [40 + 320 * (index % 5), 40 + 260 * (index // 5)], "size": [300, 200],
            "flags": {}, "order": index, "mode": 0, "inputs": ui_inputs,
            "outputs": [], "properties": {"Node name for S&R": entry["class_type"]}, "widgets_values": values,
        })
    for node in nodes:
        definition = object_info[node["type"]]
        for slot, (otype, oname) in enumerate(zip(definition["output"], definition["output_name"])):
            node["outputs"].append({"name": oname, "type": otype, "links": out_links.get((node["id"], slot), []),
                                    "slot_index": slot})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main() -> None:
    """CLI: make_ui_workflow.py API.json UI.json --server http://127.0.0.1:PORT"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("api", type=Path)
    parser.add_argument("ui", type=Path)
    parser.add_argument("--server", required=True)
    args = parser.parse_args()
    api = json.loads(args.api.read_text())
    args.ui.write_text(json.dumps(to_ui(api, fetch_object_info(args.server)), indent=1) + "\n")
    print(args.ui)


if __name__ == "__main__":
    main()
