"""Text conditioning: the conditioning type and the text-encoder stacks (the tiny one and LTX-2's)."""
