"""ComfyUI nodes of the EditCtrl pack: thin wrappers that validate, convert types, report progress and call the core.

Every `*_nodes.py` module here exports `NODES`, a list of V3 node classes; they are collected in module order.
"""

import importlib
import pkgutil

from comfy_api.latest import ComfyExtension, io

from .common import register_folders


def _collect() -> list[type[io.ComfyNode]]:
    """All node classes of the `*_nodes` modules of this package (sorted by module name, then listing order)."""
    found: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_nodes"):
            found += importlib.import_module(f"{__name__}.{info.name}").NODES
    return found


register_folders()
NODES = _collect()
NODE_CLASS_MAPPINGS = {node.define_schema().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.define_schema().node_id: node.define_schema().display_name for node in NODES}


class EditCtrlExtension(ComfyExtension):
    """V3 entry point (ComfyUI uses NODE_CLASS_MAPPINGS when both exist; both list the same nodes)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> EditCtrlExtension:
    return EditCtrlExtension()
