"""Box prompts → silhouettes with transformers' SAM, SAM2 and SAM3 (tracker), image or video models.

Families (``SamBundle.family``):

* ``sam`` — `SamModel` (image).
* ``sam2`` — `Sam2Model` (image); ``sam2_video`` — `Sam2VideoModel` (propagates through the clip).
* ``sam3`` — `Sam3TrackerModel` (image); ``sam3_video`` — `Sam3TrackerVideoModel` (propagates).
  SAM3's *concept* model `Sam3Model` is not used: it always needs a text prompt and treats boxes as exemplars
  of a concept (it returns every instance that looks alike), not as "segment the object in this box". The
  official SAM3 checkpoint also holds the tracker weights, which these classes load from the same folder.

Image models segment each keyframe and carry the silhouette to the frames between keyframes by moving and
scaling it with the object's box (boxes interpolated/held exactly as in `object_masks`). Video models add the
box prompts on every keyframe where an object appears and propagate forward and backward through all frames,
one object per pass (objects first seen on a later keyframe are then tracked backwards from there too).
Keyframe silhouettes are clipped to their box grown by a margin; an empty silhouette falls back to the box.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .detection import Box
from .object_masks import MAX_OBJECTS, ObjectTrack, box_mask
from .qwen import frame_to_uint8, read_model_type, resolve_dtype, safetensors_problem

logger = logging.getLogger(__name__)

SAM_FAMILIES: tuple[str, ...] = ("sam", "sam2", "sam2_video", "sam3", "sam3_video")
VIDEO_FAMILIES: tuple[str, ...] = ("sam2_video", "sam3_video")


class SamLoadError(RuntimeError):
    """A SAM folder that cannot be loaded (missing, unsupported model type)."""


@dataclass(eq=False)
class SamBundle:
    """A loaded SAM-family model + processor and where it runs."""

    model: Any
    processor: Any
    family: str
    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def is_video(self) -> bool:
        """Whether the model propagates masks across frames."""
        return self.family in VIDEO_FAMILIES

    def require_model(self) -> Any:
        """The model on its run device; raises if it was unloaded."""
        if self.model is None:
            raise RuntimeError(f"SAM model {self.name!r} was unloaded; load it again")
        if next(self.model.parameters()).device != self.device:
            self.model.to(self.device)
        return self.model

    def offload(self, device: str | torch.device = "cpu") -> None:
        """Move the weights off the run device until the next use."""
        if self.model is not None:
            self.model.to(device)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def unload(self) -> None:
        """Drop the weights and free their memory."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _classes(family: str) -> tuple[type, type]:
    """(model class, processor class) of a family."""
    import transformers as tf

    table = {
        "sam": (tf.SamModel, tf.SamProcessor),
        "sam2": (tf.Sam2Model, tf.Sam2Processor),
        "sam2_video": (tf.Sam2VideoModel, tf.Sam2VideoProcessor),
        "sam3": (tf.Sam3TrackerModel, tf.Sam3TrackerProcessor),
        "sam3_video": (tf.Sam3TrackerVideoModel, tf.Sam3TrackerVideoProcessor),
    }
    if family not in table:
        raise SamLoadError(f"unknown SAM family {family!r}; expected one of {SAM_FAMILIES}")
    return table[family]


MODEL_TYPE_FAMILIES: dict[str, tuple[str, str | None]] = {
    "sam": ("sam", None),
    "sam2": ("sam2", "sam2_video"),
    "sam2_video": ("sam2", "sam2_video"),
    "sam3_tracker": ("sam3", "sam3_video"),
    "sam3_tracker_video": ("sam3", "sam3_video"),
    "sam3_video": ("sam3", "sam3_video"),
    "sam3": ("sam3", "sam3_video"),
}


def family_for(model_type: str, video: bool | None = None) -> str:
    """Which family loads a checkpoint of `model_type`: video=None picks the video model when there is one."""
    if model_type not in MODEL_TYPE_FAMILIES:
        raise SamLoadError(f"config model_type {model_type!r} is not a supported SAM checkpoint; "
                           f"supported: {sorted(MODEL_TYPE_FAMILIES)}")
    image, vid = MODEL_TYPE_FAMILIES[model_type]
    if video is False or (video is None and vid is None):
        return image
    if vid is None:
        raise SamLoadError(f"{model_type!r} checkpoints have no video (propagation) model; use video=False")
    return vid


def load_sam(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
             video: bool | None = None) -> SamBundle:
    """Load a SAM / SAM2 / SAM3 checkpoint folder (transformers layout) with `local_files_only=True`.

    Only .safetensors weights are read; a folder with only pickles is a SamLoadError that says how to convert.
    """
    path = Path(path)
    if not path.is_dir():
        raise SamLoadError(f"SAM folder {path} does not exist")
    try:
        model_type = read_model_type(path)
    except RuntimeError as err:
        raise SamLoadError(str(err)) from err
    family = family_for(model_type, video)
    model_cls, proc_cls = _classes(family)
    problem = safetensors_problem(path, _classes(family_for(model_type))[0].__name__)
    if problem:
        raise SamLoadError(problem)
    torch_dtype = resolve_dtype(dtype, device)
    model = model_cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                      dtype=torch_dtype).eval().to(device)
    processor = proc_cls.from_pretrained(str(path), local_files_only=True)
    return SamBundle(model, processor, family, path.name, next(model.parameters()).device, torch_dtype)


def _tiny_parts(family: str) -> tuple[Any, Any]:
    """Tiny config and processor (real classes) for a family."""
    import transformers as tf

    if family == "sam":
        config = tf.SamConfig(
            vision_config={"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1],
                           "num_pos_feats": 16, "mlp_dim": 64},
            prompt_encoder_config={"hidden_size": 32, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
            mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                 "iou_head_hidden_dim": 32})
        image = tf.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                     mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
        return config, tf.SamProcessor(image)
    decoder = {"hidden_size": 128, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "iou_head_hidden_dim": 32}
    memory = {"memory_attention_hidden_size": 128, "memory_attention_num_layers": 1,
              "memory_attention_feed_forward_hidden_size": 64, "memory_encoder_hidden_size": 128,
              "memory_encoder_output_channels": 64, "mask_downsampler_embed_dim": 128, "memory_fuser_embed_dim": 128,
              "memory_fuser_intermediate_dim": 64, "num_maskmem": 3}
    if family in ("sam2", "sam2_video"):
        size = 64
        vision = {"backbone_config": {"model_type": "sam2_hiera_det_model", "hidden_size": 8, "image_size": [size, size],
                                      "patch_stride": [4, 4], "patch_kernel_size": [7, 7], "patch_padding": [3, 3],
                                      "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [8, 16, 32, 64],
                                      "num_attention_heads_per_stage": [1, 1, 2, 2],
                                      "window_size_per_stage": [4, 4, 2, 2], "global_attention_blocks": [3],
                                      "window_positional_embedding_background_size": [4, 4]},
                  "backbone_channel_list": [64, 32, 16, 8], "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]],
                  "fpn_hidden_size": 128}
        prompt = {"hidden_size": 128, "image_size": size, "patch_size": 16, "mask_input_channels": 4}
        image = tf.Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": 16, "width": 16})
        if family == "sam2":
            return tf.Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder), \
                tf.Sam2Processor(image)
        config = tf.Sam2VideoConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                                    image_size=size, memory_attention_rope_feat_sizes=[4, 4], **memory)
        video = tf.Sam2VideoVideoProcessor(size={"height": size, "width": size})
        return config, tf.Sam2VideoProcessor(image_processor=image, video_processor=video)
    if family in ("sam3", "sam3_video"):
        size = 56
        vision = {"backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": size,
                                      "patch_size": 14, "window_size": 2, "global_attn_indexes": [1],
                                      "pretrain_image_size": size},
                  "fpn_hidden_size": 128, "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]]}
        prompt = {"hidden_size": 128, "image_size": size, "patch_size": 14, "mask_input_channels": 4}
        image = tf.Sam3ImageProcessor(size={"height": size, "width": size}, mask_size={"height": 16, "width": 16})
        if family == "sam3":
            return tf.Sam3TrackerConfig(vision_config=vision, prompt_encoder_config=prompt,
                                        mask_decoder_config=decoder), tf.Sam3TrackerProcessor(image)
        config = tf.Sam3TrackerVideoConfig(vision_config=vision, prompt_encoder_config=prompt,
                                           mask_decoder_config=decoder, image_size=size, **memory)
        video = tf.Sam2VideoVideoProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3)
        return config, tf.Sam3TrackerVideoProcessor(image_processor=image, video_processor=video)
    raise ValueError(f"unknown SAM family {family!r}; expected one of {SAM_FAMILIES}")


def tiny_sam(family: str = "sam2_video", seed: int = 0, device: str | torch.device = "cpu") -> SamBundle:
    """The `tiny` preset of a SAM family: real classes, tiny config, weights seeded by `seed`.

    The object-presence head is biased towards "present" so that random weights still produce masks
    (SAM2/SAM3 otherwise blank every frame whose random object score is negative).
    """
    config, processor = _tiny_parts(family)
    model_cls, _ = _classes(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    head = getattr(model.mask_decoder, "pred_obj_score_head", None)
    if head is not None:
        with torch.no_grad():
            head.proj_out.bias.fill_(10.0)
    model.to(device)
    return SamBundle(model, processor, family, f"tiny-{family}", next(model.parameters()).device, torch.float32)


def load_or_tiny(name_or_path: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                 video: bool | None = None) -> SamBundle:
    """`tiny-<family>` (e.g. `tiny-sam2_video`) gives the tiny preset; anything else is a local folder."""
    if name_or_path.startswith("tiny-") and name_or_path[5:] in SAM_FAMILIES:
        return tiny_sam(name_or_path[5:], device=device)
    return load_sam(name_or_path, device=device, dtype=dtype, video=video)


def _frames_uint8(frames: Any) -> np.ndarray:
    """[F,H,W,3] float 0..1 (or uint8) frames as a uint8 numpy array."""
    if isinstance(frames, torch.Tensor) or isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [F,H,W,3]; got shape {tuple(frames.shape)}")
        return np.stack([frame_to_uint8(frames[i]) for i in range(frames.shape[0])])
    return np.stack([frame_to_uint8(f) for f in frames])


def _tracks_from_boxes(boxes: Mapping[int, Sequence[Box | None]]) -> list[ObjectTrack]:
    """Per-object tracks from per-keyframe box lists aligned by object index."""
    count = max((len(v) for v in boxes.values()), default=0)
    tracks = [ObjectTrack(f"object {i}", "object") for i in range(count)]
    for k in sorted(boxes):
        for i, box in enumerate(boxes[k]):
            if box is not None:
                tracks[i].boxes[int(k)] = tuple(float(v) for v in box)
    return [t for t in tracks if t.boxes]


def _grown_box_mask(box: Box, height: int, width: int, margin: float, min_margin_px: float) -> torch.Tensor:
    """Box mask grown by max(min_margin_px, margin * longest box side) on every side."""
    pad = max(min_margin_px, margin * max(box[2] - box[0], box[3] - box[1]))
    return box_mask((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), height, width)


def warp_to_box(mask: torch.Tensor, src: Box, dst: Box) -> torch.Tensor:
    """Move and scale a [H,W] silhouette so that box `src` lands on box `dst` (nearest sampling)."""
    if tuple(src) == tuple(dst):
        return mask.clone()
    height, width = mask.shape
    sw = max(src[2] - src[0], 1e-6)
    sh = max(src[3] - src[1], 1e-6)
    sx = max(dst[2] - dst[0], 1e-6) / sw
    sy = max(dst[3] - dst[1], 1e-6) / sh
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    src_x = (xs - dst[0]) / sx + src[0]
    src_y = (ys - dst[1]) / sy + src[1]
    gx = (src_x / width) * 2 - 1
    gy = (src_y / height) * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out[0, 0]


def _post_process(bundle: SamBundle, pred_masks: torch.Tensor, inputs: Any, height: int, width: int,
                  threshold: float) -> torch.Tensor:
    """Low-res mask logits of one image → bool masks [N, H, W] at frame resolution."""
    proc = bundle.processor
    if bundle.family == "sam":
        out = proc.post_process_masks(pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
                                      inputs["reshaped_input_sizes"].cpu(), mask_threshold=threshold)
    else:
        out = proc.post_process_masks(pred_masks.float().cpu(), [[height, width]], mask_threshold=threshold)
    return out[0][:, 0].bool()


def _finish_keyframe(mask: torch.Tensor, box: Box, height: int, width: int, clip_margin: float | None,
                     min_margin_px: float, fallback_to_box: bool, where: str) -> torch.Tensor:
    """Clip a keyframe silhouette to its grown box; an empty one falls back to the box (with a warning)."""
    mask = mask.float()
    if clip_margin is not None:
        mask = mask * _grown_box_mask(box, height, width, clip_margin, min_margin_px)
    if fallback_to_box and mask.sum() == 0:
        warnings.warn(f"SAM returned an empty mask for {where}; using its box instead", stacklevel=3)
        mask = box_mask(box, height, width)
    return mask


def _refine_image(bundle: SamBundle, video: np.ndarray, tracks: list[ObjectTrack], threshold: float,
                  clip_margin: float | None, min_margin_px: float, fallback_to_box: bool) -> torch.Tensor:
    """Image-model path: segment each keyframe, then carry silhouettes to other frames by box motion."""
    model = bundle.require_model()
    frames, height, width = video.shape[:3]
    keys = sorted({k for t in tracks for k in t.boxes})
    silhouettes: dict[tuple[int, int], torch.Tensor] = {}
    for k in keys:
        present = [i for i, t in enumerate(tracks) if k in t.boxes]
        inputs = bundle.processor(images=[video[k]], input_boxes=[[list(tracks[i].boxes[k]) for i in present]],
                                  return_tensors="pt")
        model_inputs = {key: v.to(bundle.device) for key, v in inputs.items()
                        if key in ("pixel_values", "input_boxes")}
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(bundle.dtype)
        with torch.inference_mode():
            out = model(**model_inputs, multimask_output=False)
        masks = _post_process(bundle, out.pred_masks, inputs, height, width, threshold)
        for row, i in enumerate(present):
            silhouettes[(i, k)] = _finish_keyframe(masks[row], tracks[i].boxes[k], height, width, clip_margin,
                                                   min_margin_px, fallback_to_box, f"object {i} on keyframe {k}")
    result = torch.zeros(len(tracks), frames, height, width)
    for i, track in enumerate(tracks):
        own = sorted(track.boxes)
        for f in range(frames):
            k = min(own, key=lambda kk: (abs(kk - f), kk))
            result[i, f] = silhouettes[(i, k)] if f == k else warp_to_box(silhouettes[(i, k)], track.boxes[k],
                                                                           track.box_at(f))
    return result


def _refine_video(bundle: SamBundle, video: np.ndarray, tracks: list[ObjectTrack], threshold: float,
                  clip_margin: float | None, min_margin_px: float, fallback_to_box: bool,
                  track_clip_margin: float | None, cache_features: bool) -> torch.Tensor:
    """Video-model path: per object, prompt every keyframe it appears on, propagate both ways over all frames."""
    model = bundle.require_model()
    proc = bundle.processor
    frames, height, width = video.shape[:3]
    session = proc.init_video_session(video=video, inference_device=bundle.device, dtype=bundle.dtype,
                                      max_vision_features_cache_size=frames if cache_features else 1)
    result = torch.zeros(len(tracks), frames, height, width)

    def to_mask(pred_masks: torch.Tensor) -> torch.Tensor:
        """Low-res logits of the single tracked object → float [H,W] at frame resolution."""
        out = proc.post_process_masks([pred_masks.float().cpu()], [[height, width]], binarize=True,
                                      mask_threshold=threshold)[0]
        return out.reshape(-1, height, width)[0].float()

    for i, track in enumerate(tracks):
        session.reset_tracking_data()
        keys = sorted(track.boxes)
        for k in keys:
            proc.add_inputs_to_inference_session(inference_session=session, frame_idx=k, obj_ids=[1],
                                                 input_boxes=[[list(track.boxes[k])]])
            with torch.inference_mode():
                model(inference_session=session, frame_idx=k)
        seen: set[int] = set()
        for reverse in (False, True):
            for out in model.propagate_in_video_iterator(session, start_frame_idx=keys[0], reverse=reverse):
                f = int(out.frame_idx)
                if f in seen:
                    continue
                seen.add(f)
                mask = to_mask(out.pred_masks)
                if f in track.boxes:
                    mask = _finish_keyframe(mask, track.boxes[f], height, width, clip_margin, min_margin_px,
                                            fallback_to_box, f"object {i} on keyframe {f}")
                elif track_clip_margin is not None:
                    mask = mask * _grown_box_mask(track.box_at(f), height, width, track_clip_margin, min_margin_px)
                result[i, f] = mask
        missing = sorted(set(range(frames)) - seen)
        if missing:
            raise RuntimeError(f"SAM video propagation skipped frames {missing} for object {i}")
    return result


def refine_tracks(bundle: SamBundle, frames: Any, boxes: Mapping[int, Sequence[Box | None]], threshold: float = 0.0,
                  clip_margin: float | None = 0.1, min_margin_px: float = 4.0, fallback_to_box: bool = True,
                  track_clip_margin: float | None = None, cache_features: bool = True) -> torch.Tensor:
    """Per-object silhouettes [N, F, H, W] (float 0/1) from box prompts.

    `frames` is [F,H,W,3] float 0..1 (ComfyUI IMAGE). `boxes[k][i]` is object i's box (frame pixels) on keyframe
    k, or None where it is absent. Keyframe silhouettes are clipped to the box grown by
    max(min_margin_px, clip_margin x longest side) (None disables); empty ones fall back to the box.
    Video models may also clip propagated frames to the interpolated box grown by `track_clip_margin`.
    """
    video = _frames_uint8(frames)
    num_frames = video.shape[0]
    for k in boxes:
        if not 0 <= int(k) < num_frames:
            raise IndexError(f"box prompt on keyframe {k} but the clip has {num_frames} frames")
    tracks = _tracks_from_boxes(boxes)
    if not tracks:
        raise ValueError("refine needs at least one box prompt")
    if len(tracks) > MAX_OBJECTS:
        raise ValueError(f"{len(tracks)} objects would need {len(tracks)} SAM passes and masks of {num_frames} "
                         f"frames; at most {MAX_OBJECTS} are refined at once: select objects first")
    start = time.perf_counter()
    if bundle.is_video:
        out = _refine_video(bundle, video, tracks, threshold, clip_margin, min_margin_px, fallback_to_box,
                            track_clip_margin, cache_features)
    else:
        out = _refine_image(bundle, video, tracks, threshold, clip_margin, min_margin_px, fallback_to_box)
    logger.info("SAM %s refined %d object(s) over %d frames in %.2fs", bundle.family, len(tracks), num_frames,
                time.perf_counter() - start)
    return out


def refine(bundle: SamBundle, frames: Any, boxes: Mapping[int, Sequence[Box | None]], **kwargs: Any) -> torch.Tensor:
    """Union silhouette mask [F, H, W] (float 0/1) of all prompted objects; see `refine_tracks` for the options."""
    return refine_tracks(bundle, frames, boxes, **kwargs).amax(dim=0)
