"""ComfyUI-EditCtrl: prompt-guided, mask-local video editing on LTX-2 (SCD + EditCtrl + TMA).

ComfyUI imports this folder as the pack. Outside ComfyUI (plain Python, pytest collecting the repository) there is
no `comfy_api` and the node mappings stay empty; the library lives in `editctrl_core`.

`WEB_DIRECTORY` is the browser extension (object picker, mask-overlay player, node reports); every node also works
headless without it. On first load the pack writes its demo clip `input/editctrl_demo.mp4` (about 35 kB, only when
missing; `EDITCTRL_NO_DEMO_CLIP=1` turns this off), so the `example_workflows/editctrl_tiny_picker_edit.json`
template runs from the Run button on a fresh install.
"""

import importlib.util
import logging
import os

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"
DEMO_CLIP = "editctrl_demo.mp4"


def write_demo_clip(input_dir: str) -> str | None:
    """Write the demo clip into `input_dir` if it is missing and return its path; a failure is logged, not raised."""
    path = os.path.join(input_dir, DEMO_CLIP)
    if os.environ.get("EDITCTRL_NO_DEMO_CLIP") == "1" or os.path.exists(path) or not os.path.isdir(input_dir):
        return None
    try:
        from .editctrl_core.media.synthetic import write_demo_clip as write

        return str(write(path))
    except Exception as err:  # noqa: BLE001 - a missing demo clip must never stop the pack from loading
        logging.getLogger("editctrl").warning("EditCtrl: could not write the demo clip %s: %s", path, err)
        return None


if importlib.util.find_spec("comfy_api") is not None:
    import folder_paths

    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, comfy_entrypoint  # noqa: F401

    write_demo_clip(folder_paths.get_input_directory())

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
