"""How SCD-trained weights record the split options they were trained with (LoRA and adapter file metadata).

Kept apart from `scd.py` so the adapter file format can read it without importing the model code.
"""

from __future__ import annotations

from typing import Any

PREFIX_MODES = ("one_way", "bidirectional")
ENCODER_MODES = ("frame_causal", "bidirectional")
#: Metadata keys of SCD-trained weights that record the split's options (our trainer writes them).
SCD_METADATA = {"prefix": "scd_prefix", "shift": "scd_shift", "encoder": "scd_encoder"}
#: What weights trained before these options were recorded used: the SCD paper's next-frame shift, causal encoder.
LEGACY_SCD_OPTIONS = {"shift": True, "causal": True}


def options_from_metadata(metadata: dict[str, str]) -> dict[str, object]:
    """The SCDOptions changes a LoRA/adapter file's metadata asks for: its prefix mode, next-frame shift and encoder
    attention; files trained before the last two were recorded get the legacy values they were trained with."""
    if not any(key in metadata for key in (*SCD_METADATA.values(), "split_layer")):
        return {}
    changes: dict[str, object] = dict(LEGACY_SCD_OPTIONS)
    prefix = metadata.get(SCD_METADATA["prefix"])
    if prefix is not None:
        if prefix not in PREFIX_MODES:
            raise ValueError(f"unknown SCD prefix mode {prefix!r} in the metadata (known: {', '.join(PREFIX_MODES)}); "
                             "the file may come from a newer version of the pack")
        changes["prefix"] = prefix
    shift = metadata.get(SCD_METADATA["shift"])
    if shift is not None:
        if shift not in ("true", "false"):
            raise ValueError(f"{SCD_METADATA['shift']} must be 'true' or 'false' in the metadata; got {shift!r}")
        changes["shift"] = shift == "true"
    encoder = metadata.get(SCD_METADATA["encoder"])
    if encoder is not None:
        if encoder not in ENCODER_MODES:
            raise ValueError(f"unknown SCD encoder attention {encoder!r} in the metadata (known: "
                             f"{', '.join(ENCODER_MODES)})")
        changes["causal"] = encoder == "frame_causal"
    return changes


def options_metadata(options: Any) -> dict[str, str]:
    """The metadata that records `options` in a trained file (the inverse of `options_from_metadata`)."""
    return {SCD_METADATA["prefix"]: options.prefix, SCD_METADATA["shift"]: str(options.shift).lower(),
            SCD_METADATA["encoder"]: ENCODER_MODES[0] if options.causal else ENCODER_MODES[1]}
