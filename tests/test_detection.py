"""Grounding answer parsing (property-based), coordinate mapping for both Qwen families, clamping, merging."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editctrl_core.perception.detection import (
    Detection,
    DetectionParseError,
    Detections,
    DetectionsDroppedWarning,
    DetectionTruncatedWarning,
    box_iou,
    clamp_box,
    grounding_prompt,
    merge_duplicates,
    parse_grounding_answer,
    qwen3_box_to_frame,
    qwen25_box_to_frame,
    to_frame_detections,
)

labels = st.text(min_size=1, max_size=16).map(str.strip).filter(bool)
coords = st.one_of(st.integers(min_value=-50, max_value=5000),
                   st.floats(min_value=-50, max_value=5000, allow_nan=False, allow_infinity=False))
boxes = st.tuples(coords, coords, coords, coords)
items = st.lists(st.tuples(labels, boxes), min_size=1, max_size=6)
prose = st.text(alphabet=st.characters(blacklist_characters="[]{}`\"\\", blacklist_categories=("Cs",)), max_size=40)


def _item_json(label: str, box: tuple, ensure_ascii: bool, trailing: bool) -> str:
    """One grounding object as Qwen writes it, optionally with a trailing comma inside."""
    body = f'"bbox_2d": {json.dumps(list(box))}, "label": {json.dumps(label, ensure_ascii=ensure_ascii)}'
    return "{" + body + (", " if trailing else "") + "}"


def _serialise(pairs: list, form: str, ensure_ascii: bool, before: str, after: str) -> str:
    """Serialise items in one of the answer forms Qwen produces."""
    trailing = form == "trailing_commas"
    inner = ",\n  ".join(_item_json(label, box, ensure_ascii, trailing) for label, box in pairs)
    listing = "[\n  " + inner + (",\n" if trailing else "\n") + "]"
    if form == "fenced":
        return f"{before}\n```json\n{listing}\n```\n{after}"
    if form == "one_per_line":
        return before + "\n" + "\n".join(_item_json(label, box, ensure_ascii, False) for label, box in pairs) + after
    return before + listing + after


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items, st.sampled_from(["bare", "fenced", "trailing_commas", "one_per_line"]), st.booleans(), prose, prose)
def test_parser_round_trips_every_form(pairs: list, form: str, ensure_ascii: bool, before: str, after: str) -> None:
    """Any labels/boxes serialised in any of the answer forms parse back exactly, in order."""
    text = _serialise(pairs, form, ensure_ascii, before, after)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DetectionTruncatedWarning)
        parsed = parse_grounding_answer(text)
    assert [(d.label, d.box) for d in parsed] == [(label, tuple(float(v) for v in box)) for label, box in pairs]
    assert all(d.score is None for d in parsed)


@settings(max_examples=100, deadline=None)
@given(items, st.data())
def test_truncated_list_keeps_complete_items_and_warns(pairs: list, data: st.DataObject) -> None:
    """A list cut anywhere inside its last item keeps exactly the complete items before it, with a warning."""
    complete = [_item_json(label, box, True, False) for label, box in pairs]
    last = complete[-1]
    cut = data.draw(st.integers(min_value=1, max_value=len(last) - 1))
    text = "```json\n[" + ", ".join(complete[:-1] + [last[:cut]])
    if len(pairs) == 1:
        with pytest.raises(DetectionParseError, match="cut off"):
            parse_grounding_answer(text)
        return
    with pytest.warns(DetectionTruncatedWarning):
        parsed = parse_grounding_answer(text)
    assert [(d.label, d.box) for d in parsed] == [(label, tuple(float(v) for v in box)) for label, box in pairs[:-1]]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_only_ever_raises_detection_parse_error(text: str) -> None:
    """Arbitrary text either parses to detections with 4 finite coordinates or raises DetectionParseError."""
    try:
        parsed = parse_grounding_answer(text)
    except DetectionParseError as err:
        assert err.text == text
        assert "Model answer was:" in str(err)
        return
    for det in parsed:
        assert isinstance(det.label, str) and len(det.box) == 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list('[]{}",:0123456789 abx_2dbox') + ['"bbox_2d"', '"label"']), max_size=80))
def test_json_like_garbage_never_crashes(tokens: list) -> None:
    """Bracket/quote soup near the grounding grammar never escapes as anything but DetectionParseError."""
    text = "".join(tokens)
    try:
        parse_grounding_answer(text)
    except DetectionParseError:
        pass


def test_non_json_error_shows_the_text() -> None:
    """A plain-prose answer raises with the answer visible in the message."""
    with pytest.raises(DetectionParseError, match="I cannot see any objects"):
        parse_grounding_answer("I cannot see any objects in this picture.")


def test_long_error_text_is_shortened() -> None:
    """The error shows a prefix of a long answer and says how much was left out."""
    with pytest.raises(DetectionParseError) as info:
        parse_grounding_answer("x" * 1000)
    assert "(+700 chars)" in str(info.value)
    assert len(str(info.value)) < 500


def test_other_keys_scores_nesting_and_single_object() -> None:
    """Alternative key names, scores, a wrapping object and a single bare object are understood."""
    parsed = parse_grounding_answer('{"objects": [{"bbox": [1, 2, 3, 4], "name": "cup", "confidence": 0.9}, '
                                    '{"bbox_2d": ["5", "6", "7", "8"], "category": "plate"}]}')
    assert [(d.label, d.box, d.score) for d in parsed] == [("cup", (1.0, 2.0, 3.0, 4.0), 0.9),
                                                           ("plate", (5.0, 6.0, 7.0, 8.0), None)]
    single = parse_grounding_answer('The cat: {"bbox_2d": [1, 2, 3, 4], "label": "cat"}.')
    assert [(d.label, d.box) for d in single] == [("cat", (1.0, 2.0, 3.0, 4.0))]


def test_empty_list_is_no_detections_and_stray_bracket_in_prose() -> None:
    """'[]' means nothing found; an unbalanced brace in prose does not hide the JSON after it."""
    assert parse_grounding_answer("```json\n[]\n```") == []
    with pytest.warns(DetectionTruncatedWarning):
        parsed = parse_grounding_answer('Note {see below}: { here [{"bbox_2d": [1, 2, 3, 4], "label": "a"}]')
    assert [d.label for d in parsed] == ["a"]


def test_cut_off_single_object_is_an_error_not_a_box() -> None:
    """A single object cut after its box is not mistaken for a complete detection."""
    with pytest.raises(DetectionParseError, match="cut off"):
        parse_grounding_answer('```json\n{"bbox_2d": [1, 2, 3, 4], "label": "ca')


def test_qwen25_mapping_on_known_grids() -> None:
    """Absolute coordinates of the resized input map back through image_grid_thw exactly."""
    assert qwen25_box_to_frame((0, 0, 280, 196), (1, 14, 20), 1280, 720) == (0.0, 0.0, 1280.0, 720.0)
    assert qwen25_box_to_frame((140, 98, 210, 147), (1, 14, 20), 1280, 720) == (640.0, 360.0, 960.0, 540.0)
    assert qwen25_box_to_frame((28, 28, 56, 56), (1, 4, 6), 90, 60, patch_size=14) == pytest.approx(
        (28 * 90 / 84, 28 * 60 / 56, 56 * 90 / 84, 56 * 60 / 56))


def test_qwen3_mapping_is_relative_thousandths() -> None:
    """Qwen3-VL coordinates are thousandths of the frame, independent of any grid."""
    assert qwen3_box_to_frame((0, 0, 1000, 1000), 1280, 720) == (0.0, 0.0, 1280.0, 720.0)
    assert qwen3_box_to_frame((250, 500, 750, 1000), 640, 480) == (160.0, 240.0, 480.0, 480.0)


def test_to_frame_detections_clamps_orders_and_drops_degenerate() -> None:
    """Boxes are corner-ordered, clamped to the frame; zero-area and sub-pixel boxes are dropped."""
    raw = [Detection("a", (-50, -10, 2000, 300)), Detection("b", (300, 200, 100, 50)),
           Detection("c", (10, 10, 10, 90)), Detection("d", (5000, 10, 6000, 20)), Detection("e", (20, 20, 20.5, 80))]
    with pytest.warns(DetectionsDroppedWarning, match=r"left out 3 box\(es\).*1000x500 frame, e.g. 'c'"):
        out = to_frame_detections(raw, "qwen3_vl", 1000, 500, merge_iou=None)
    assert [(d.label, d.box) for d in out] == [("a", (0.0, 0.0, 1000.0, 150.0)), ("b", (100.0, 25.0, 300.0, 100.0))]
    assert clamp_box((-1, 5, 7, 900), 100, 100) == (0.0, 5.0, 7.0, 100.0)
    with pytest.raises(ValueError, match="image_grid_thw"):
        to_frame_detections(raw, "qwen2_5_vl", 100, 100)


def test_merge_duplicates_same_label_only_and_keeps_best_score() -> None:
    """Same-label boxes above the IoU threshold merge into the best-scored one; other labels never merge."""
    dets = [Detection("cat", (0, 0, 100, 100), 0.5), Detection("Cat ", (2, 2, 100, 100), 0.9),
            Detection("dog", (0, 0, 100, 100), 0.1), Detection("cat", (200, 200, 300, 300), None),
            Detection("cat", (0, 0, 60, 100), None)]
    merged = merge_duplicates(dets, iou_threshold=0.7)
    assert [(d.label, d.score) for d in merged] == [("Cat ", 0.9), ("dog", 0.1), ("cat", None), ("cat", None)]
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert len(merge_duplicates(dets, iou_threshold=0.99)) == 5


def test_detections_json_round_trip() -> None:
    """DETECTIONS survives JSON (keyframe keys, scores, raw answers) unchanged."""
    dets = Detections(640, 360, {0: [Detection("cat", (1.5, 2, 3, 4), 0.25)], 16: []}, num_frames=17,
                      family="qwen2_5_vl", raw={0: "[...]", 16: "[]"})
    back = Detections.from_json(json.dumps(json.loads(dets.to_json())))
    assert back == dets
    assert back.keyframes == [0, 16] and back.labels() == ["cat"] and back.count() == 1


def test_prompts_are_the_official_forms() -> None:
    """The grounding prompts follow the Qwen cookbooks for each family and mode."""
    assert grounding_prompt("qwen2_5_vl", "text", text="wine glass") == (
        "Outline the position of each wine glass and output all the coordinates in JSON format.")
    assert grounding_prompt("qwen2_5_vl", "categories", ["cat", "dog", "cat"]).endswith(
        "The category set includes cat, dog.")
    assert '"person, car"' in grounding_prompt("qwen3_vl", "categories", ["person", "car"])
    assert "JSON" in grounding_prompt("qwen3_vl", "all")
    with pytest.raises(ValueError, match="non-empty"):
        grounding_prompt("qwen2_5_vl", "text", text="  ")


@pytest.mark.parametrize("text", [
    '[{"bbox_2d": [' + "9" * 400 + ', 1, 2, 3], "label": "a"}]',
    "[" + "9" * 5000 + "]",
    '{"bbox_2d": [1, 2, 3, 4], "score": ' + "9" * 400 + "}",
    "[" * 3000 + "]" * 3000,
    '[{"bbox_2d": [1, 2, 3, "nan"]}, {"bbox_2d": [1, 2, 3, 1e999]}]',
])
def test_pathological_numbers_and_nesting(text: str) -> None:
    """Overflowing numbers, NaN/inf and very deep nesting give DetectionParseError or finite boxes, nothing else."""
    try:
        parsed = parse_grounding_answer(text)
    except DetectionParseError:
        return
    assert parsed and all(all(abs(v) < 1e300 for v in d.box) for d in parsed)
    assert all(d.score is None for d in parsed)
