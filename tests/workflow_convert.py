"""Convert a ComfyUI UI-format workflow (the frontend's saved JSON) into the API prompt format.

The widget order comes from a live server's /object_info, as in the frontend: required then optional
inputs (`input_order`), widget types only (INT, FLOAT, STRING, BOOLEAN, COMBO/option lists, unless
`forceInput`).  Extra values the frontend saves but never sends are skipped: the
`control_after_generate` value after INT inputs flagged so (or named `seed`/`noise_seed`) and after
flagged COMBOs (plus the combo filter value), and the upload button value of `*_upload` combos.
Muted (mode 2) and bypassed (mode 4) nodes are dropped; links through bypassed nodes go to the
bypassed node's input of the matching type, links through Reroute nodes are followed, and inputs fed
by a PrimitiveNode get the primitive's value.  Note/MarkdownNote nodes are ignored.

CLI: ``python tests/workflow_convert.py UI.json --server http://127.0.0.1:PORT`` prints API JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
UPLOAD_BUTTON_VALUES = frozenset({"image", "video", "audio", "file", "3d", None})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE_TYPES = frozenset({"Reroute"})
PRIMITIVE_TYPES = frozenset({"PrimitiveNode"})
UI_ONLY_TYPES = NOTE_TYPES | REROUTE_TYPES | PRIMITIVE_TYPES
MODE_MUTED, MODE_BYPASS = 2, 4


class ConversionError(ValueError):
    """The UI workflow cannot be converted (unknown node type, subgraph, broken link)."""


def fetch_object_info(server_url: str) -> dict[str, Any]:
    """GET /object_info from a running server (proxies from the environment are ignored)."""
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(server_url.rstrip("/") + "/object_info", timeout=60)
        r.raise_for_status()
        return r.json()


def _type_name(spec: Any) -> str:
    """The input's type: 'COMBO' for option lists, else the declared type string."""
    t = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(t, (list, tuple)) else str(t)


def _options(spec: Any) -> dict[str, Any]:
    """The input's option dict ({} when absent)."""
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def widget_specs(node_def: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Ordered widget inputs of a node definition: name, type, whether a control/upload value follows."""
    inputs = node_def.get("input") or {}
    order = node_def.get("input_order") or {}
    specs: list[dict[str, Any]] = []
    for section in ("required", "optional"):
        defs = inputs.get(section) or {}
        for name in order.get(section) or list(defs):
            if name not in defs:
                continue
            spec = defs[name]
            tname, opts = _type_name(spec), _options(spec)
            if tname not in WIDGET_TYPES or opts.get("forceInput") or opts.get("rawLink"):
                continue
            cag = opts.get("control_after_generate")
            if cag is None and tname == "INT" and name in ("seed", "noise_seed"):
                cag = True
            specs.append(
                {
                    "name": name,
                    "type": tname,
                    "control": bool(cag),
                    "upload": any(k.endswith("_upload") and v for k, v in opts.items()),
                }
            )
    return specs


def _links_by_id(workflow: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Links as dicts keyed by id, from the list form [id, from, from_slot, to, to_slot, type] or objects."""
    out: dict[int, dict[str, Any]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            d = {k: link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")}
        else:
            d = dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
        out[int(d["id"])] = d
    return out


def _valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph's type compatibility: equal, wildcard, or overlapping comma lists (case-insensitive)."""
    if a in ("*", "", 0, None) or b in ("*", "", 0, None):
        return True
    sa = {x.strip().lower() for x in str(a).split(",")}
    sb = {x.strip().lower() for x in str(b).split(",")}
    return bool(sa & sb)


def _assign_widget_values(values: Any, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Map a node's saved widgets_values onto its widget inputs, skipping UI-only values."""
    if isinstance(values, dict):  # some packs save a name → value dict
        return {s["name"]: values[s["name"]] for s in specs if s["name"] in values}
    values = list(values or [])
    extras = len(values) - len(specs)  # saved values beyond one per widget input
    out: dict[str, Any] = {}
    i = 0
    for spec in specs:
        if i >= len(values):
            break
        out[spec["name"]] = values[i]
        i += 1
        # a control widget's value follows its widget; a workflow saved before optional widgets were added to
        # the node has fewer values than widgets, so `extras` cannot tell whether it is there: its value can
        if spec["control"] and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
            extras -= 1
            # combos also get a filter text widget after their control widget
            if spec["type"] == "COMBO" and extras > 0 and i < len(values) and isinstance(values[i], str):
                i += 1
                extras -= 1
        if spec["upload"] and extras > 0 and i < len(values) and values[i] in UPLOAD_BUTTON_VALUES:
            i += 1
            extras -= 1
    return out


def convert(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    include_meta: bool = True,
    ui_only_types: Iterable[str] = (),
) -> dict[str, dict[str, Any]]:
    """Return the API prompt `{node_id: {"class_type", "inputs", "_meta"}}` for a UI workflow."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise ConversionError("workflows with subgraphs are not supported")
    skip_types = UI_ONLY_TYPES | set(ui_only_types)
    nodes = {int(n["id"]): n for n in workflow.get("nodes") or []}
    links = _links_by_id(workflow)

    def input_link(node: Mapping[str, Any], slot: int) -> dict[str, Any] | None:
        """The link feeding input `slot` of `node`, if any."""
        inputs = node.get("inputs") or []
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        return links.get(int(inputs[slot]["link"]))

    def resolve(link: dict[str, Any], want_type: Any, seen: set[tuple[int, int]]) -> tuple[str, Any] | None:
        """Follow a link to a real output: ('link', [id, slot]), ('value', v) for primitives, or None."""
        origin_id, origin_slot = int(link["origin_id"]), int(link["origin_slot"])
        if (origin_id, origin_slot) in seen:
            raise ConversionError(f"link cycle through node {origin_id}")
        seen.add((origin_id, origin_slot))
        origin = nodes.get(origin_id)
        if origin is None:
            return None
        otype = origin.get("type")
        if otype in PRIMITIVE_TYPES:
            vals = origin.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if origin.get("mode") == MODE_BYPASS:
            idx = _bypass_slot(origin, origin_slot, want_type)
            nxt = input_link(origin, idx) if idx >= 0 else None
            return resolve(nxt, want_type, seen) if nxt else None
        if otype in REROUTE_TYPES:
            nxt = input_link(origin, 0)
            return resolve(nxt, want_type, seen) if nxt else None
        return ("link", [str(origin_id), origin_slot])

    def _bypass_slot(node: Mapping[str, Any], slot: int, want_type: Any) -> int:
        """The input a bypassed node passes through to output `slot` (frontend rules), or -1."""
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else want_type
        if want_type in ("*", "", None):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        if slot < len(inputs):
            t = inputs[slot].get("type")
            if _valid_connection(t, out_type) and _valid_connection(t, want_type):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == want_type:
                return i
        for i, inp in enumerate(inputs):
            if _valid_connection(inp.get("type"), out_type) and _valid_connection(inp.get("type"), want_type):
                return i
        return -1

    prompt: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    for node_id in sorted(nodes):
        node = nodes[node_id]
        ntype = node.get("type")
        if node.get("mode") in (MODE_MUTED, MODE_BYPASS) or ntype in skip_types:
            continue
        node_def = object_info.get(ntype)
        if node_def is None:
            unknown.append(f"{node_id}:{ntype}")
            continue
        inputs = _assign_widget_values(node.get("widgets_values"), widget_specs(node_def))
        for slot, inp in enumerate(node.get("inputs") or []):
            link = input_link(node, slot)
            if link is None:
                continue
            resolved = resolve(link, inp.get("type"), set())
            name = inp["name"]
            if resolved is None:
                if not inp.get("widget"):
                    inputs.pop(name, None)
            else:
                inputs[name] = resolved[1]
        entry: dict[str, Any] = {"inputs": inputs, "class_type": ntype}
        if include_meta:
            entry["_meta"] = {"title": node.get("title") or node_def.get("display_name") or ntype}
        prompt[str(node_id)] = entry
    if unknown:
        raise ConversionError(f"node types unknown to the server: {', '.join(unknown)}")
    # Like the frontend: drop links to nodes that were removed (muted, or unresolved bypasses).
    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


def convert_file(path: str | Path, server_url: str, include_meta: bool = True) -> dict[str, dict[str, Any]]:
    """Load a UI workflow file and convert it with the server's /object_info."""
    workflow = json.loads(Path(path).read_text(encoding="utf-8"))
    return convert(workflow, fetch_object_info(server_url), include_meta=include_meta)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the API JSON for a UI workflow file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflow", help="UI-format workflow JSON file")
    ap.add_argument("--server", required=True, help="running ComfyUI, e.g. http://127.0.0.1:8188")
    ap.add_argument("--no-meta", action="store_true", help="omit the _meta titles")
    ap.add_argument("-o", "--output", help="write here instead of stdout")
    args = ap.parse_args(argv)
    try:
        api = convert_file(args.workflow, args.server, include_meta=not args.no_meta)
    except (ConversionError, requests.RequestException, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(api, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
