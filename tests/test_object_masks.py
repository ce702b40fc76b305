"""Box masks from detections over frames, object identity and selection, mask algebra, pixel morphology."""

from __future__ import annotations

import pytest
import torch

from editctrl_core.detection import Detection, Detections
from editctrl_core.masks import pixel_mask_to_token_mask
from editctrl_core.object_masks import (
    box_mask,
    dilate_mask,
    erode_mask,
    keyframe_boxes,
    mask_intersect,
    mask_subtract,
    mask_union,
    object_tracks,
    objects_to_masks,
    preview_detections,
    select_objects,
    tracks_for,
    union_masks,
)


def _clip() -> Detections:
    """Two people (one moves right between keyframes 0 and 8) and a cup seen only on keyframe 8."""
    return Detections(64, 32, {
        0: [Detection("person", (40, 0, 50, 20)), Detection("Person", (0, 0, 10, 20))],
        8: [Detection("person", (8, 0, 18, 20)), Detection("cup", (50, 20, 60, 30)),
            Detection("person", (40, 4, 50, 24))],
    }, num_frames=9)


def test_box_mask_covers_exactly_the_overlapped_pixels() -> None:
    """Integer boxes fill [x1, x2) x [y1, y2); fractional edges include every partly covered pixel."""
    m = box_mask((2, 1, 5, 3), 6, 8)
    assert m.sum() == 3 * 2 and m[1:3, 2:5].all()
    f = box_mask((2.5, 1.2, 4.1, 2.9), 6, 8)
    assert torch.equal(f.nonzero()[:, 1].unique(), torch.tensor([2, 3, 4]))
    assert torch.equal(f.nonzero()[:, 0].unique(), torch.tensor([1, 2]))


def test_tracks_follow_label_and_left_to_right_rank() -> None:
    """Same label + same rank is one object; several instances get '#n' names; a lone label keeps its name."""
    tracks = object_tracks(_clip())
    assert [t.name for t in tracks] == ["person#1", "person#2", "cup"]
    assert tracks[0].boxes == {0: (0.0, 0.0, 10.0, 20.0), 8: (8.0, 0.0, 18.0, 20.0)}
    assert tracks[1].boxes == {0: (40.0, 0.0, 50.0, 20.0), 8: (40.0, 4.0, 50.0, 24.0)}
    assert tracks[2].boxes == {8: (50.0, 20.0, 60.0, 30.0)}
    assert keyframe_boxes(tracks) == {0: [(0.0, 0.0, 10.0, 20.0), (40.0, 0.0, 50.0, 20.0), None],
                                      8: [(8.0, 0.0, 18.0, 20.0), (40.0, 4.0, 50.0, 24.0), (50.0, 20.0, 60.0, 30.0)]}
    assert [t.name for t in tracks_for(_clip(), ["cup"])] == ["cup"]
    with pytest.raises(KeyError, match="available"):
        tracks_for(_clip(), ["dog"])


def test_objects_to_masks_interpolates_between_keyframes_and_holds_outside() -> None:
    """Frame 4 of a 0→8 move is halfway; an object seen only on keyframe 8 is held back to frame 0."""
    masks = objects_to_masks(_clip(), 9, 32, 64)
    assert set(masks) == {"person#1", "person#2", "cup"}
    walker = masks["person#1"]
    assert walker.shape == (9, 32, 64) and walker.dtype == torch.float32
    assert torch.equal(walker[0], box_mask((0, 0, 10, 20), 32, 64))
    assert torch.equal(walker[4], box_mask((4, 0, 14, 20), 32, 64))
    assert torch.equal(walker[8], box_mask((8, 0, 18, 20), 32, 64))
    assert torch.equal(masks["cup"][0], masks["cup"][8])


def test_objects_to_masks_rescales_to_another_resolution_and_token_grid() -> None:
    """Masks at twice the detection resolution scale the boxes; they map onto LTX's token grid."""
    masks = objects_to_masks(_clip(), 9, 64, 128)
    assert torch.equal(masks["cup"][8], box_mask((100, 40, 120, 60), 64, 128))
    tokens = pixel_mask_to_token_mask(masks["cup"])
    assert tokens.shape == (2, 2, 4)
    assert tokens[:, 1, 3].all() and tokens.sum() == 2
    with pytest.raises(ValueError, match="keyframe 8"):
        objects_to_masks(_clip(), 5, 32, 64)


def test_select_by_label_index_and_text() -> None:
    """Label matches all its instances, indices count from either end, text matches by words."""
    masks = objects_to_masks(_clip(), 9, 32, 64)
    assert list(select_objects(masks, labels=["PERSON"])) == ["person#1", "person#2"]
    assert list(select_objects(masks, labels=["person#2"])) == ["person#2"]
    assert list(select_objects(masks, indices=[-1, 0])) == ["person#1", "cup"]
    assert list(select_objects(masks, text="the cup")) == ["cup"]
    assert list(select_objects(masks, labels=["cup"], indices=[1])) == ["person#2", "cup"]
    with pytest.raises(KeyError, match="available"):
        select_objects(masks, labels=["dog"])
    with pytest.raises(IndexError):
        select_objects(masks, indices=[3])


def test_mask_algebra() -> None:
    """Union/intersect/subtract are max/min/a*(1-b); shapes must match."""
    a = box_mask((0, 0, 4, 4), 8, 8)[None]
    b = box_mask((2, 2, 6, 6), 8, 8)[None]
    assert mask_union(a, b).sum() == 16 + 16 - 4
    assert mask_intersect(a, b).sum() == 4
    assert mask_subtract(a, b).sum() == 12 and mask_subtract(a, b)[0, 3, 3] == 0
    assert torch.equal(union_masks({"a": a, "b": b}), mask_union(a, b))
    with pytest.raises(ValueError, match="shapes differ"):
        mask_union(a, b[0])
    with pytest.raises(ValueError, match="select at least one"):
        union_masks({})


def test_dilate_and_erode_in_pixels() -> None:
    """Dilation by r grows a box by r on each side; erosion shrinks it; erosion does not eat the frame border."""
    m = box_mask((5, 5, 10, 10), 20, 20)[None]
    assert torch.equal(dilate_mask(m, 2), box_mask((3, 3, 12, 12), 20, 20)[None])
    assert torch.equal(erode_mask(m, 1), box_mask((6, 6, 9, 9), 20, 20)[None])
    assert torch.equal(dilate_mask(m, -1), erode_mask(m, 1))
    assert torch.equal(erode_mask(dilate_mask(m, 3), 3), m)
    edge = box_mask((0, 0, 6, 20), 20, 20)
    assert torch.equal(erode_mask(edge, 2), box_mask((0, 0, 4, 20), 20, 20))
    assert erode_mask(m, 3).sum() == 0


def test_preview_draws_outlines_on_keyframes_only() -> None:
    """One preview image per keyframe; box outlines take the object's colour, the inside stays untouched."""
    frames = torch.zeros(9, 32, 64, 3)
    preview = preview_detections(frames, _clip())
    assert preview.shape == (2, 32, 64, 3)
    cup = (50, 20, 60, 30)
    assert preview[0, cup[1], cup[0]].sum() == 0
    assert torch.allclose(preview[1, cup[1], cup[0] + 5], torch.tensor([64, 128, 255]) / 255.0)
    big = Detections(64, 32, {3: [Detection("car", (4, 2, 60, 30))]})
    single = preview_detections(frames, big, line_width=1)
    assert single.shape == (1, 32, 64, 3)
    assert torch.allclose(single[0, 29, 30], torch.tensor([255, 64, 64]) / 255.0)
    assert single[0, 26, 50].sum() == 0 and single[0, 1, 30].sum() == 0
