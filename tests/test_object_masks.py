"""Box masks from detections over frames, object identity and selection, mask algebra, pixel morphology."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editctrl_core.checks import NonFiniteError
from editctrl_core.edit.masks import pixel_mask_to_token_mask
from editctrl_core.perception.detection import Detection, Detections
from editctrl_core.perception.object_masks import (
    MAX_OBJECTS,
    box_mask,
    cap_notice,
    cap_objects,
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
    union_box_mask,
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


def _compare_oracle(box: tuple[float, float, float, float], height: int, width: int) -> torch.Tensor:
    """Pixel j is covered when j + 1 > x1 and j < x2 (compared on a float32 pixel grid), written out directly."""
    xs = torch.arange(width, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32)
    cols = (xs + 1 > box[0]) & (xs < box[2])
    rows = (ys + 1 > box[1]) & (ys < box[3])
    return (rows[:, None] & cols[None, :]).float()


@settings(max_examples=300, deadline=None)
@given(st.tuples(*[st.floats(min_value=-1e6, max_value=1e6) | st.integers(-3, 40).map(float)
                   | st.integers(0, 40).map(lambda v: v - 1e-9) | st.integers(0, 40).map(lambda v: v + 1e-7)] * 4))
def test_box_mask_fills_exactly_the_pixels_the_comparison_covers(box: tuple[float, float, float, float]) -> None:
    """Filling the box's pixel span gives the same mask as comparing every pixel edge, for any edges."""
    assert torch.equal(box_mask(box, 24, 32), _compare_oracle(box, 24, 32))


def test_box_mask_refuses_non_finite_edges() -> None:
    """A NaN or infinite edge is a clear error, not an empty or full mask."""
    with pytest.raises(NonFiniteError, match="box coordinate is nan"):
        box_mask((float("nan"), 0, 4, 4), 8, 8)
    with pytest.raises(NonFiniteError, match="inf"):
        box_mask((0, 0, float("inf"), 4), 8, 8)


def test_union_box_mask_equals_the_union_of_the_object_masks() -> None:
    """The one-mask union equals the union of per-object masks, for all objects and for a selection."""
    for shape in ((9, 32, 64), (9, 64, 128), (12, 20, 30)):
        masks = objects_to_masks(_clip(), *shape)
        assert torch.equal(union_box_mask(_clip(), *shape), union_masks(masks))
        assert torch.equal(union_box_mask(_clip(), *shape, names=["cup", "person#1"]),
                           mask_union(masks["cup"], masks["person#1"]))
    only = objects_to_masks(_clip(), 9, 32, 64, names=["cup"])
    assert list(only) == ["cup"] and torch.equal(only["cup"], objects_to_masks(_clip(), 9, 32, 64)["cup"])
    with pytest.raises(ValueError, match="keyframe 8 but the clip has only 5 frames"):
        union_box_mask(_clip(), 5, 32, 64)
    with pytest.raises(KeyError, match="available"):
        union_box_mask(_clip(), 9, 32, 64, names=["dog"])


def _many(count: int, labels: tuple[str, ...] = ("disc",)) -> Detections:
    """`count` 2x2 boxes per label on keyframes 0 and 4, one per column, the same boxes on both keyframes."""
    frames = {k: [Detection(label, (float(i % 60), float(i // 60), i % 60 + 2.0, i // 60 + 2.0))
                  for label in labels for i in range(count)] for k in (0, 4)}
    return Detections(64, 64, frames, num_frames=5)


def test_objects_to_masks_refuses_more_than_max_objects() -> None:
    """Per-object masks for more than MAX_OBJECTS objects are refused with their memory cost, before any is drawn."""
    many = _many(MAX_OBJECTS + 1)
    with pytest.raises(ValueError, match=rf"{MAX_OBJECTS + 1} objects would need {MAX_OBJECTS + 1} masks of 5x64x64 "
                                         r"\(0\.0 GiB\); at most 256"):
        objects_to_masks(many, 5, 64, 64)
    assert len(objects_to_masks(many, 5, 64, 64, names=["disc#1", "disc#257"])) == 2


def test_cap_objects_keeps_each_labels_leftmost_objects_in_turn() -> None:
    """Over the cap, labels take turns keeping their leftmost objects; kept objects keep their names and boxes."""
    dets = _many(300, labels=("disc", "cup"))
    dets.frames[4].append(Detection("star", (60.0, 60.0, 62.0, 62.0)))
    before = {t.name: t.boxes for t in object_tracks(dets)}
    capped, dropped = cap_objects(dets)
    tracks = object_tracks(capped)
    names = [t.name for t in tracks]
    assert len(tracks) == MAX_OBJECTS and len(dropped) == 601 - MAX_OBJECTS
    # rank 0 of disc, cup and star, then ranks 1.. of disc and cup in turn: 128 discs, 127 cups and the star
    assert names == [f"disc#{n}" for n in range(1, 129)] + [f"cup#{n}" for n in range(1, 128)] + ["star"]
    assert all(t.boxes == before[t.name] for t in tracks), "a kept object keeps its identity and boxes"
    assert dropped[:2] == ["disc#129", "disc#130"] and dropped[-1] == "cup#300" and "star" not in dropped
    assert capped.raw == dets.raw and capped.num_frames == 5 and dets.count() == 1201
    same, none = cap_objects(capped)
    assert same is capped and none == []
    note = cap_notice(MAX_OBJECTS, dropped)
    assert note.startswith(f"kept {MAX_OBJECTS} of 601 objects (at most {MAX_OBJECTS}")
    assert f"dropped {len(dropped)}: {dropped[0]}," in note and "(+" in note and "prompt_mode" in note
    assert cap_notice(3, []) == ""
