"""``auto``'s choice, on records with made-up timings and mAPs: the fastest int8 runtime within the mAP budget,
told with every candidate's numbers; nothing measured, so each case is exact."""

from __future__ import annotations

import pytest

from compresskit.errors import ConfigError
from compresskit.harness.auto_int8 import choose_int8, int8_runtimes, mark_choice, register_int8_path

YARDSTICK = {"id": "q/ort-fp32", "runtime": "onnxruntime", "map": 0.80}


def int8(runtime: str, speedup: float, map_: float, interval=None) -> dict:
    low, high = interval or (speedup * 0.95, speedup * 1.05)
    return {"id": f"q/{runtime}-int8", "runtime": runtime, "map": map_, "baseline": YARDSTICK["id"],
            "paired_latency": {"baseline": YARDSTICK["id"], "speedup": speedup, "interval": [low, high]}}


def test_the_fastest_within_the_budget_wins_and_the_reason_gives_every_candidate():
    records = [int8("onnxruntime", 2.1, 0.797), int8("openvino", 3.4, 0.785), int8("torch-compile", 2.6, 0.796)]
    choice = choose_int8(records, YARDSTICK, max_map_drop_points=1.0)
    assert choice.picked == "torch-compile"  # openvino is faster but loses 1.5 points
    assert [candidate.runtime for candidate in choice.candidates] == ["onnxruntime", "openvino", "torch-compile"]
    reason = choice.reason()
    assert reason.startswith("torch-compile is the fastest int8 runtime within 1 mAP points of q/ort-fp32 (x2.60")
    assert "0.40 mAP points lost" in reason and "openvino x3.40" in reason and "(over budget)" in reason
    assert "onnxruntime x2.10" in reason
    assert choose_int8(records, YARDSTICK, max_map_drop_points=2.0).picked == "openvino"


def test_a_tie_in_speed_goes_to_the_smaller_drop_and_no_candidate_within_the_budget_picks_none():
    tied = [int8("onnxruntime", 2.5, 0.790), int8("openvino", 2.5, 0.798)]
    assert choose_int8(tied, YARDSTICK, 1.0).picked == "openvino"
    none = choose_int8(tied, YARDSTICK, 0.1)
    assert none.picked is None and none.picked_candidate is None
    assert none.reason().startswith("no int8 runtime stayed within 0.1 mAP points of q/ort-fp32")
    assert none.as_dict()["picked"] is None and len(none.as_dict()["candidates"]) == 2


def test_the_budget_can_be_held_against_another_record_than_the_speed_yardstick():
    # a small detector timed against the teacher's core, its int8 cost held against its own fp32 core
    own_fp32 = {"id": "q/small-fp32", "runtime": "onnxruntime", "map": 0.60}
    records = [int8("onnxruntime", 4.0, 0.595), int8("openvino", 4.2, 0.601)]
    assert choose_int8(records, YARDSTICK, 1.0).picked is None  # 20 points below the teacher
    choice = choose_int8(records, YARDSTICK, 1.0, accuracy_reference=own_fp32)
    assert choice.picked == "openvino" and choice.as_dict()["accuracy_reference"] == "q/small-fp32"
    assert "0.10 mAP points gained" in choice.reason() and "of q/small-fp32" in choice.reason()


@pytest.mark.parametrize("budget", [0, -1, 100.5, float("nan"), "1"])
def test_a_budget_outside_0_to_100_points_is_one_message(budget):
    with pytest.raises(ConfigError, match="budget"):
        choose_int8([int8("onnxruntime", 2.0, 0.8)], YARDSTICK, budget)


def test_a_candidate_timed_against_another_record_is_refused():
    stray = int8("openvino", 3.0, 0.8)
    stray["baseline"] = stray["paired_latency"]["baseline"] = "q/elsewhere"
    with pytest.raises(Exception, match="compare it with its own baseline"):
        choose_int8([stray], YARDSTICK, 1.0)


def test_the_pick_is_marked_in_its_record_and_every_int8_runtime_is_a_candidate():
    record = int8("openvino", 3.0, 0.8)
    choice = choose_int8([record], YARDSTICK, 1.0)
    mark_choice(record, choice)
    assert record["config"]["chosen"] is True and record["config"]["auto"]["picked"] == "openvino"
    assert int8_runtimes() == ("onnxruntime", "openvino", "torch-compile")
    with pytest.raises(ConfigError, match="unknown runtime"):
        register_int8_path("tensorrt", "trt", lambda *args: None)
    assert int8_runtimes(any_shape=True) == ("onnxruntime", "openvino")  # PT2E runs its one export shape only


def test_parts_kept_in_float_leave_out_the_paths_that_cannot_and_each_path_that_can_keeps_them(student, tmp_path):
    from compresskit.data import profile_split
    from compresskit.harness.auto_int8 import Int8Settings, int8_path, measure_int8_candidates

    assert int8_runtimes(keep_float=True) == ("onnxruntime", "openvino")  # the kit's PT2E quantizes every part
    with pytest.raises(ConfigError, match="cannot keep /head/ in float"):
        measure_int8_candidates(None, None, None, tmp_path / "x", "yardstick", "q", runtimes=["torch-compile"],
                                settings=Int8Settings(keep_float=("/head/",)))
    detector, label_map = student
    calibration = profile_split("train", label_map=label_map)
    for runtime in ("onnxruntime", "openvino"):
        path = int8_path(runtime)
        whole = path.build(detector, calibration, tmp_path / f"{runtime}-whole", Int8Settings(calibration_images=2))
        headless = path.build(detector, calibration, tmp_path / f"{runtime}-head",
                              Int8Settings(calibration_images=2, keep_float=("/head/",)))
        # the head's weights stay fp32: the shipped core grows (its float convs hold four bytes a weight)
        sizes = [sum(file.stat().st_size for file in build.files) for build in (whole, headless)]
        assert sizes[1] > sizes[0] * 1.1, (runtime, sizes)
