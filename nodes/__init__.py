"""ComfyUI nodes of the EditCtrl pack: thin wrappers that validate, convert types, report progress and call the core."""

from comfy_api.latest import ComfyExtension, io

from .common import register_folders
from .edit_nodes import EditCtrlBlendSettings, EditCtrlComposite, EditCtrlSampler, EditCtrlVAEDecode, EditCtrlVAEEncode
from .mask_nodes import EditCtrlMaskOverlay, EditCtrlRectMask
from .model_nodes import EditCtrlModelLoader, EditCtrlTextEncode, EditCtrlTextEncoderLoader

NODES = [
    EditCtrlModelLoader,
    EditCtrlTextEncoderLoader,
    EditCtrlTextEncode,
    EditCtrlVAEEncode,
    EditCtrlSampler,
    EditCtrlBlendSettings,
    EditCtrlVAEDecode,
    EditCtrlComposite,
    EditCtrlRectMask,
    EditCtrlMaskOverlay,
]

register_folders()

NODE_CLASS_MAPPINGS = {node.define_schema().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.define_schema().node_id: node.define_schema().display_name for node in NODES}


class EditCtrlExtension(ComfyExtension):
    """V3 entry point (ComfyUI uses NODE_CLASS_MAPPINGS when both exist; both list the same nodes)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> EditCtrlExtension:
    return EditCtrlExtension()
