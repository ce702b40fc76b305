"""ComfyUI-EditCtrl: prompt-guided, mask-local video editing on LTX-2 (SCD + EditCtrl + TMA).

ComfyUI imports this folder as the pack. Outside ComfyUI (plain Python, pytest collecting the repository) there is
no `comfy_api` and the node mappings stay empty; the library lives in `editctrl_core`.
"""

import importlib.util

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, comfy_entrypoint  # noqa: F401

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
