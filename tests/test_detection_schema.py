"""Strict schemas for every JSON input: saved DETECTIONS values and grounding answers, size and nesting limits."""

from __future__ import annotations

import json
import math
import time
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editctrl_core.perception.detection import (
    ANSWER_EXAMPLE,
    MAX_JSON_CHARS,
    MAX_JSON_DEPTH,
    SAVED_EXAMPLE,
    Detection,
    DetectionParseError,
    Detections,
    DetectionsDroppedWarning,
    DetectionsFormatError,
    box_iou,
    json_depth,
    json_limit_problem,
    merge_duplicates,
    parse_grounding_answer,
    to_frame_detections,
)


def _saved(**changes: Any) -> dict[str, Any]:
    """A valid saved detections value (the disc of the detect workflow) with top-level keys replaced."""
    value: dict[str, Any] = {"width": 192, "height": 128, "num_frames": 25, "family": "qwen2_5_vl",
                             "frames": {"0": [{"label": "disc", "box": [49.0, 39.0, 95.0, 85.0], "score": None}],
                                        "24": [{"label": "disc", "box": [81.0, 67.0, 127.0, 113.0], "score": 0.5}]},
                             "raw": {"0": "[]"}}
    value.update(changes)
    return value


def _with_box(box: list[Any], **item: Any) -> dict[str, Any]:
    """A saved value whose keyframe-0 detection has this box (and these extra item fields)."""
    return _saved(frames={"0": [{"label": "disc", "box": box, "score": None, **item}]})


def _refused(value: Any) -> str:
    """The DetectionsFormatError message for a saved value given as JSON text (fails when it is accepted)."""
    text = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(DetectionsFormatError) as info:
        Detections.from_json(text)
    message = str(info.value)
    assert SAVED_EXAMPLE in message, "every schema error shows an example of the right form"
    return message


def test_a_valid_saved_value_round_trips() -> None:
    """The valid value reads back to the same detections and writes the same JSON."""
    dets = Detections.from_json(json.dumps(_saved()))
    assert dets.keyframes == [0, 24] and dets.num_frames == 25 and dets.raw == {0: "[]"}
    assert dets.frames[24] == [Detection("disc", (81.0, 67.0, 127.0, 113.0), 0.5)]
    assert Detections.from_json(dets.to_json()) == dets
    assert json.loads(SAVED_EXAMPLE) and Detections.from_json(SAVED_EXAMPLE).count() == 1


@pytest.mark.parametrize(("field", "value", "says"), [
    ("width", 0, "'width' is 0; write a whole number >= 1"),
    ("width", -768, "'width' is -768"),
    ("height", 0, "'height' is 0"),
    ("width", 1.5, "'width' is 1.5"),
    ("width", "768", "'width' is \"768\""),
    ("height", True, "'height' is true"),
    ("num_frames", 0, "'num_frames' is 0"),
])
def test_frame_size_and_clip_length_must_be_positive_whole_numbers(field: str, value: Any, says: str) -> None:
    """Width 0 used to divide by zero in the masks; now every size field is a positive whole number."""
    assert says in _refused(_saved(**{field: value}))


@pytest.mark.parametrize(("box", "says"), [
    ("[NaN, 39, 95, 85]", "not a finite number"),
    ("[49, 39, Infinity, 85]", "not a finite number"),
    ("[49, -Infinity, 95, 85]", "not a finite number"),
    ("[49, 39, 1e999, 85]", "not a finite number"),
    ("[49, 39, " + "9" * 400 + ", 85]", "not a finite number"),
    ('[49, 39, "95", 85]', "not a finite number"),
    ("[49, 39, 95]", "write 4 numbers [x1, y1, x2, y2]"),
    ('"49, 39, 95, 85"', "write 4 numbers"),
    ("[95, 39, 49, 85]", "of size -46 x 46; boxes need x2 > x1 and y2 > y1"),
    ("[49, 85, 95, 39]", "of size 46 x -46"),
    ("[49, 39, 49, 85]", "of size 0 x 46"),
    ("[49, 39, 193, 85]", "outside the 192x128 frame"),
    ("[-1, 39, 95, 85]", "outside the 192x128 frame"),
])
def test_boxes_must_be_finite_ordered_and_inside_the_frame(box: str, says: str) -> None:
    """NaN used to fail as 'cannot convert float NaN'; a negative width was accepted. Both are refused by name."""
    text = ('{"width": 192, "height": 128, "num_frames": 25, '
            '"frames": {"0": [{"label": "disc", "box": ' + box + ', "score": null}]}}')
    message = _refused(text)
    assert says in message and "keyframe 0, detection 0 ('disc')" in message


@pytest.mark.parametrize(("frames", "num_frames", "says"), [
    ({"-3": []}, 25, "keyframe -3; keyframes count from 0"),
    ({"25": []}, 25, "keyframe 25 but 'num_frames' is 25 (valid: 0..24)"),
    ({"400": []}, 25, "keyframe 400"),
    ({"first": []}, 25, "key 'first', which is not a frame number"),
    ({"0": [], "00": []}, 25, "keyframe 0 appears twice"),
    ({"0": {"label": "disc"}}, 25, "keyframe 0 holds an object; write a list of detections"),
])
def test_keyframes_must_lie_in_the_clip(frames: dict[str, Any], num_frames: int, says: str) -> None:
    """Keyframe -3 used to pass and fail later as an IndexError in SAM Refine; now it is refused where it is read."""
    assert says in _refused(_saved(frames=frames, num_frames=num_frames, raw={}))


def test_keyframes_are_checked_against_the_clip_the_detections_meet() -> None:
    """A saved value without num_frames is checked against the clip it is used with (the node's check)."""
    dets = Detections.from_json(json.dumps(_saved(num_frames=None)))
    dets.check_clip(25)
    with pytest.raises(ValueError, match=r"keyframe 24 but the clip has only 10 frames \(keyframes must lie in 0..9\)"):
        dets.check_clip(10)


@pytest.mark.parametrize(("value", "says"), [
    ([1, 2], "the saved detections are a list, not an object"),
    (_saved(colour="red"), "unknown key(s) ['colour']"),
    ({k: v for k, v in _saved().items() if k != "width"}, "missing key(s) ['width']"),
    (_saved(frames=[]), "'frames' is a list; write an object mapping keyframes"),
    (_saved(family=3), "'family' is 3"),
    (_saved(raw={"0": 5}), "'raw' keyframe 0 holds the number 5"),
    (_saved(raw=[]), "'raw' is a list"),
    (_with_box([49, 39, 95, 85], colour="red"), "unknown key(s) ['colour']"),
    (_saved(frames={"0": [{"label": " ", "box": [1, 2, 3, 4]}]}), "has label ' '"),
    (_saved(frames={"0": [{"box": [1, 2, 3, 4]}]}), "has label None"),
    (_saved(frames={"0": ["disc"]}), "keyframe 0, detection 0 is a string"),
])
def test_structure_errors_say_where(value: Any, says: str) -> None:
    """Wrong types, unknown and missing keys are named with their place in the value."""
    assert says in _refused(value)


@pytest.mark.parametrize("score", ["NaN", "Infinity", "1e999", '"high"', "true"])
def test_scores_must_be_finite_or_null(score: str) -> None:
    """A score is a finite number or null."""
    text = json.dumps(_saved(frames={})).replace('"frames": {}', '"frames": {"0": [{"label": "disc", '
                                                                   '"box": [1, 2, 3, 4], "score": ' + score + '}]}')
    assert "write a finite number or null" in _refused(text)


def test_size_and_nesting_are_checked_before_parsing() -> None:
    """5 MB of '[' and deep nesting give a clear message at once (they used to raise a raw RecursionError)."""
    start = time.perf_counter()
    assert "5,000,000 characters long; at most 1,000,000" in _refused("[" * 5_000_000)
    assert f"nests more than {MAX_JSON_DEPTH} levels" in _refused("[" * 100_000 + "]" * 100_000)
    assert f"nests more than {MAX_JSON_DEPTH} levels" in _refused('{"width": ' + "[" * 40 + "]" * 40 + "}")
    elapsed = time.perf_counter() - start
    print(f"\nrefusing 5 MB of '[' and 200,000 nested brackets took {elapsed:.2f}s")
    assert elapsed < 10.0
    assert "not valid JSON" in _refused('{"width": 192,')
    assert json_limit_problem("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is None
    assert json_limit_problem(" " * MAX_JSON_CHARS) is None
    assert json_limit_problem(" " * (MAX_JSON_CHARS + 1)) is not None


def test_json_depth_ignores_brackets_in_strings() -> None:
    """Brackets inside strings (escaped quotes included) do not count; unbalanced closers do not go negative."""
    assert json_depth('[{"label": "[[[[", "box": [1, 2, 3, 4]}]') == 3
    assert json_depth(r'["a \" [[[[ \\", [[1]]]') == 3
    assert json_depth("]]]] [[1]]") == 2
    assert json_depth("no json here") == 0
    assert json_depth("[" * 50, limit=10) == 11


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a'), inner,
                                                                              max_size=3), max_leaves=20))
def test_json_depth_matches_the_parsed_value(value: Any) -> None:
    """On any JSON text, the bracket count equals the nesting depth of the value json.loads builds."""
    def depth(v: Any) -> int:
        """Nesting depth of a parsed JSON value."""
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    assert json_depth(json.dumps(value)) == depth(value)


@pytest.mark.parametrize(("answer", "says"), [
    ('[{"bbox_2d": [1, 2, 3, NaN], "label": "cup"}]', "which holds a value that is not a finite number"),
    ('[{"bbox_2d": [1, 2, 3, Infinity], "label": "cup"}]', "not a finite number"),
    ('[{"bbox_2d": [1, 2, 3, 1e999], "label": "cup"}]', "not a finite number"),
    ('[{"bbox_2d": [1, 2, 3, "nan"], "label": "cup"}]', "not a finite number"),
    ('[{"bbox_2d": [1, 2, 3], "label": "cup"}]', "write 4 numbers [x1, y1, x2, y2]"),
    ('[{"bbox_2d": "1, 2, 3, 4", "label": "cup"}]', "write 4 numbers"),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "cup", "score": NaN}]', "\"score\" is NaN; write a finite number"),
])
def test_answer_items_with_unusable_boxes_are_errors(answer: str, says: str) -> None:
    """A grounding item that names a box must give 4 finite numbers: it is reported, not silently dropped."""
    with pytest.raises(DetectionParseError) as info:
        parse_grounding_answer(answer)
    message = str(info.value)
    assert says in message and "item 'cup'" in message and ANSWER_EXAMPLE in message
    assert "Model answer was:" in message


def test_answer_size_and_nesting_limits() -> None:
    """A model answer over the size or nesting limit is refused before any parsing, with the right form shown."""
    start = time.perf_counter()
    for text, says in [("[" * 5_000_000, "5,000,000 characters long"), ("[" * 50_000, "nests more than"),
                       ('{"a": ' * 40 + ANSWER_EXAMPLE + "}" * 40, "nests more than")]:
        with pytest.raises(DetectionParseError) as info:
            parse_grounding_answer(text)
        assert says in str(info.value) and ANSWER_EXAMPLE in str(info.value)
    assert time.perf_counter() - start < 10.0
    nested = '{"a": ' * 20 + ANSWER_EXAMPLE + "}" * 20
    assert [d.label for d in parse_grounding_answer(nested)] == ["cup"]


def test_unclosed_nesting_within_the_limits_is_read_once() -> None:
    """Thirty unclosed lists over 1 MB: each unclosed bracket is scanned once, so the error comes in seconds."""
    text = "[" * 30 + "1, " * 300_000
    start = time.perf_counter()
    with pytest.raises(DetectionParseError, match="cut off"):
        parse_grounding_answer(text)
    elapsed = time.perf_counter() - start
    print(f"\n30 unclosed lists, {len(text):,} chars: {elapsed:.2f}s")
    assert elapsed < 8.0, "one scan per unclosed bracket would take about 30 times one scan"


def test_answer_boxes_after_normalisation_have_positive_size() -> None:
    """Reversed corners are put in order; zero-size and outside boxes are left out with a warning, never kept."""
    raw = parse_grounding_answer('[{"bbox_2d": [95, 85, 49, 39], "label": "disc"}, '
                                 '{"bbox_2d": [10, 10, 10, 50], "label": "line"}, '
                                 '{"bbox_2d": [300, 10, 400, 50], "label": "far"}]')
    with pytest.warns(DetectionsDroppedWarning, match=r"left out 2 box\(es\).*192x128 frame, e.g. 'line'"):
        out = to_frame_detections(raw, "qwen2_5_vl", 192, 128, grid_thw=(1, 128, 192), patch_size=1)
    assert [(d.label, d.box) for d in out] == [("disc", (49.0, 39.0, 95.0, 85.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_frame_detections(raw[:1], "qwen3_vl", 192, 128)[0].width > 0


@pytest.mark.parametrize(("width", "height"), [(0, 128), (192, 0), (-5, 128)])
def test_frame_size_for_answers_must_be_positive(width: int, height: int) -> None:
    """Mapping answers onto a frame of no size is an error, not a division by zero."""
    with pytest.raises(ValueError, match=f"the frame size must be positive; got {width}x{height}"):
        to_frame_detections([Detection("a", (1, 2, 3, 4))], "qwen3_vl", width, height)


def _merge_oracle(detections: list[Detection], threshold: float) -> list[Detection]:
    """The pairwise merge rule, written out directly: best score first, skip any same-label box over the IoU."""
    order = sorted(range(len(detections)),
                   key=lambda i: (-(detections[i].score if detections[i].score is not None else -math.inf), i))
    kept: list[int] = []
    for i in order:
        same = [j for j in kept if " ".join(detections[j].label.lower().split()) ==
                " ".join(detections[i].label.lower().split())]
        if not any(box_iou(detections[j].box, detections[i].box) > threshold for j in same):
            kept.append(i)
    return [detections[i] for i in sorted(kept)]


edge = st.integers(min_value=0, max_value=40).map(float) | st.floats(min_value=0, max_value=40)
boxes = st.tuples(edge, edge, edge, edge).map(lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]),
                                                          max(b[1], b[3])))
dets = st.lists(st.builds(Detection, st.sampled_from(["cup", "Cup ", "dog"]), boxes,
                          st.none() | st.floats(min_value=0, max_value=1)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(dets, st.sampled_from([0.0, 0.3, 0.7, 0.99]))
def test_vectorised_merge_equals_the_pairwise_rule(detections: list[Detection], threshold: float) -> None:
    """The vectorised duplicate merge keeps exactly the detections the pairwise rule keeps."""
    assert merge_duplicates(detections, threshold) == _merge_oracle(detections, threshold)


def test_merging_ten_thousand_boxes_is_fast() -> None:
    """10,000 boxes of one label (the probe's case) merge in seconds, not the minutes of a pairwise Python loop."""
    grid = [Detection("disc", (float(x), float(y), x + 4.0, y + 4.0)) for x in range(100) for y in range(100)]
    start = time.perf_counter()
    merged = merge_duplicates(grid)
    elapsed = time.perf_counter() - start
    print(f"\nmerge_duplicates over 10,000 boxes: {elapsed:.2f}s")
    assert len(merged) == 10_000 and elapsed < 30.0
