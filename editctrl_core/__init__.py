"""EditCtrl core library: LTX-2 SCD split, sparse mask-local edit sampling, masks, blending, adapters.

Plain Python + torch; never imports ComfyUI, so it serves the nodes, the training module and scripts alike.
"""

__version__ = "0.1.0"
