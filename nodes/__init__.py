"""ComfyUI nodes of the EditCtrl pack: thin wrappers that validate, convert types, report progress and call the core."""

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
