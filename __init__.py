"""ComfyUI-EditCtrl: prompt-guided, mask-local video editing on LTX-2 (SCD + EditCtrl + TMA)."""

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

NODE_CLASS_MAPPINGS = {node.define_schema().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.define_schema().node_id: node.define_schema().display_name for node in NODES}


class EditCtrlExtension(ComfyExtension):
    """V3 entry point (ComfyUI uses NODE_CLASS_MAPPINGS when both exist; both list the same nodes)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> EditCtrlExtension:
    return EditCtrlExtension()


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "comfy_entrypoint"]
