"""The commands that do the kit's work, run for real through ``main`` on tiny data (``--max-iters``, few timing
runs): train, prune, bench and reproduce each write what they promise, and it loads and reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from compresskit import harness
from compresskit.cli import main
from compresskit.models import load_checkpoint
from compresskit.prune import core_macs
from compresskit.report import read_results

pytestmark = pytest.mark.slow


def test_train_writes_a_shipped_style_checkpoint(tiny_embedded, tmp_path, capsys):
    code = main(["train", "--preset", "student", "--data", str(tiny_embedded), "--epochs", "1", "--max-iters", "2",
                 "--out", str(tmp_path)])
    assert code == 0
    model, label_map, meta = load_checkpoint(tmp_path / "student.pt")
    saved = json.loads((tmp_path / "student.json").read_text())
    assert meta["train_config"]["epochs"] == 1 and saved["val_metrics"] == meta["val_metrics"]
    assert 0.0 <= meta["val_metrics"]["map"] <= 1.0 and label_map.num_classes == 7
    assert "student.pt" in capsys.readouterr().out


def test_prune_writes_a_smaller_detector_that_loads(tiny_embedded, tmp_path):
    code = main(["prune", "--preset", "teacher", "--ratio", "0.5", "--data", str(tiny_embedded), "--epochs", "1",
                 "--max-iters", "2", "--out", str(tmp_path), "--name", "half"])
    assert code == 0
    pruned, _, meta = load_checkpoint(tmp_path / "half.pt")
    assert core_macs(pruned) == meta["macs_after"] and meta["macs_after"] <= 0.5 * meta["macs_before"]
    assert meta["prune_config"]["ratio"] == 0.5 and 0.0 <= meta["val_metrics"]["map"] <= 1.0


def test_bench_writes_paired_baseline_records(tiny_profile, tmp_path, capsys):
    code = main(["bench", "--runs", "3", "--reports", str(tmp_path)])
    assert code == 0
    records = {r["id"]: r for r in read_results(tmp_path)["records"]}
    assert set(records) == {"baseline/teacher/eager", "baseline/teacher/ort-fp32", "baseline/student/eager",
                            "baseline/student/ort-fp32"}
    assert records["baseline/student/ort-fp32"]["paired_latency"]["baseline"] == "baseline/student/eager"
    assert all(r["profile"] == "embedded" for r in records.values())
    out = capsys.readouterr().out
    assert "mAP x100" in out and str(tmp_path) in out


def test_reproduce_runs_every_study_and_draws_the_figures(tiny_profile, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness.pruning, "UNSTRUCTURED_AMOUNTS", (0.5,))
    out = tmp_path / "reproduced"
    # The quantization studies need more train images than the tiny set has; they have their own tests.
    assert main(["reproduce", "--out", str(out), "--runs", "3", "--only", "baselines", "pruning"]) == 0
    records = read_results(out)["records"]
    lessons = {r["lesson"] for r in records}
    assert lessons == {"01_baseline_detectors", "02_pruning"}
    assert {p.name for p in (out / "figures").iterdir()} == {"pareto_latency.png", "pareto_size.png",
                                                             "pareto_macs.png", "sparsity.png"}
    assert "| pruning-accuracy |" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert "[1/2] baselines" in printed and "[2/2] pruning" in printed


def test_reproduce_only_combined_writes_records_figure_summary_and_the_snippets(tiny_profile, tmp_path, monkeypatch):
    monkeypatch.setattr(harness.combined, "CALIBRATION_IMAGES", 4)  # the tiny train split has a few images
    monkeypatch.setattr(harness.combined, "FP32_ONLY_CALIBRATION", 2)
    out = tmp_path / "combined"
    assert main(["reproduce", "--out", str(out), "--runs", "3", "--only", "combined"]) == 0
    records = {r["id"]: r for r in read_results(out)["records"]}
    for stages in harness.combined.ROUTES.values():
        for stage in stages:
            assert records[stage.record]["baseline"] == (harness.combined.TEACHER_EAGER
                                                         if stage.record == harness.combined.TEACHER_ORT
                                                         else harness.combined.TEACHER_ORT)
    final = records[harness.combined.FINAL_TEACHER]
    assert final["technique"] == "combined" and final["runtime"] == "onnxruntime"
    assert final["macs"] < 0.3 * records[harness.combined.TEACHER_ORT]["macs"]
    assert final["config"]["prune_config"]["ratio"] == 0.5 and final["config"]["kd_config"]["method"] == "both"
    assert set(records[harness.combined.TEACHER_EAGER]["config"]["errata"]) == {"prune", "quantize_dynamic",
                                                                                "kd_loss", "pretrained"}
    assert (out / "figures" / "combined.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "## Combined pipeline" in summary and "| prune -> distil -> int8 | int8 |" in summary
    assert "## The article's snippets, run" in summary and "'FCOS' object has no attribute 'weight'" in summary
    assert "| combined-size |" in summary


def test_quantize_writes_the_int8_artifact_and_a_measured_summary(tiny_profile, tmp_path, capsys):
    code = main(["quantize", "--preset", "student", "--calibration-images", "4", "--runs", "3", "--out",
                 str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "student-int8.json").read_text())
    assert summary["calibration_images"] == 4 and summary["size_ratio"] > 3.0
    assert summary["paired_latency"]["baseline"] == "quantize/student/ort-fp32"
    assert (tmp_path / "student-int8.onnx").stat().st_size == summary["size_bytes"]["int8"]
    assert {r["id"] for r in read_results(tmp_path)["records"]} == {"quantize/student/ort-fp32",
                                                                   "quantize/student/ort-int8"}
    assert "x" in capsys.readouterr().out


def test_quantize_auto_ships_the_fastest_int8_core_within_the_budget_and_says_why(tiny_profile, tmp_path, capsys,
                                                                                  monkeypatch):
    from compresskit.harness import auto_int8

    # ONNX Runtime and OpenVINO only: the PT2E path compiles for a minute and has tests of its own.
    monkeypatch.setattr(auto_int8, "_INT8_PATHS", {runtime: auto_int8._INT8_PATHS[runtime]
                                                   for runtime in ("onnxruntime", "openvino")})
    code = main(["quantize", "--preset", "student", "--runtime", "auto", "--max-drop", "100", "--calibration-images",
                 "4", "--runs", "3", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "student-int8.json").read_text())
    auto = summary["auto"]
    assert summary["runtime"] == "auto" and auto["yardstick"] == "quantize/student/ort-fp32"
    assert [candidate["runtime"] for candidate in auto["candidates"]] == ["onnxruntime", "openvino"]
    fastest = max(auto["candidates"], key=lambda candidate: candidate["speedup"])
    assert summary["picked"] == auto["picked"] == fastest["runtime"]  # a 100-point budget keeps every candidate
    assert Path(summary["artifact"]).is_file() and summary["artifact"] == summary["artifacts"][summary["picked"]]
    records = {r["id"]: r for r in read_results(tmp_path)["records"]}
    assert set(records) == {"quantize/student/ort-fp32", "quantize/student/auto/ort-int8",
                            "quantize/student/auto/ov-int8"}
    chosen = [record for record in records.values() if (record.get("config") or {}).get("chosen")]
    assert [record["id"] for record in chosen] == [fastest["record"]]
    assert chosen[0]["config"]["auto"]["reason"].startswith(f"{fastest['runtime']} is the fastest")
    assert "<- picked" in capsys.readouterr().out


def test_quantize_refuses_to_replace_model_files_it_did_not_write(tiny_profile, tmp_path, capsys):
    theirs = tmp_path / "student-int8.xml"
    theirs.write_text("<net>someone else's model</net>")
    code = main(["quantize", "--preset", "student", "--runtime", "openvino", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not the kit's" in err and "student-int8.xml" in err and "Traceback" not in err
    assert theirs.read_text() == "<net>someone else's model</net>" and sorted(tmp_path.iterdir()) == [theirs]


def test_quantize_for_openvino_writes_the_int8_ir_and_a_measured_summary(tiny_profile, tmp_path, capsys):
    code = main(["quantize", "--preset", "student", "--runtime", "openvino", "--calibration-images", "4", "--runs",
                 "3", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "student-int8.json").read_text())
    assert summary["runtime"] == "openvino" and summary["artifact"].endswith("student-int8.xml")
    assert summary["paired_latency"]["baseline"] == "quantize/student/ov-fp32" and summary["size_ratio"] > 2.0
    ir = tmp_path / "student-int8.xml"
    assert ir.stat().st_size + ir.with_suffix(".bin").stat().st_size == summary["size_bytes"]["int8"]
    records = {r["id"]: r for r in read_results(tmp_path)["records"]}
    assert set(records) == {"quantize/student/ov-fp32", "quantize/student/ov-int8"}
    assert {record["runtime"] for record in records.values()} == {"openvino"}
    assert "faster than the fp32 core" in capsys.readouterr().out


@pytest.mark.parametrize(("arguments", "named"), [
    (["--accuracy-control"], "--runtime openvino"),  # onnxruntime has no accuracy control
    (["--runtime", "openvino", "--accuracy-control", "--max-drop", "0"], "above 0"),
    (["--runtime", "openvino", "--max-drop", "0.3"], "add --accuracy-control"),
    (["--runtime", "openvino", "--method", "entropy"], "drop --method"),
    (["--runtime", "auto", "--accuracy-control"], "--runtime openvino"),
    (["--runtime", "auto", "--max-drop", "0"], "above 0"),
    (["--runtime", "auto", "--max-drop", "101"], "at most 100"),
    (["--runtime", "auto", "--method", "percentile"], "drop --method"),
])
def test_quantize_refuses_bad_combinations_with_one_message(arguments, named, tiny_profile, tmp_path, capsys):
    code = main(["quantize", "--preset", "student", "--calibration-images", "2", "--out", str(tmp_path / "q"),
                 *arguments])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()  # nothing written


# The command in a process of its own, as a user runs it (a fresh process: torch.compile's caches and workers start
# as a user's do), on the tiny dataset.
QUANTIZE_IN_ITS_OWN_PROCESS = """
import os, runpy, sys
runpy.run_path(os.environ["COMPRESSKIT_TEST_WARNING_POLICY"])  # the suite's deprecation policy (conftest.py)
from compresskit import harness
from compresskit.cli import main
from compresskit.data import load_split

data = sys.argv[1]
harness.loading.profile_split = lambda split, profile, label_map, train_transforms=None: load_split(
    split, data, train_transforms=train_transforms, label_map=label_map)
sys.exit(main(sys.argv[2:]))
"""


def test_quantize_torchao_with_qat_writes_both_int8_programs_and_a_training_record(tiny_embedded, tmp_path):
    import subprocess
    import sys

    import torch

    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401 (registers the ops torch.export.load reads back)

    finished = subprocess.run(
        [sys.executable, "-c", QUANTIZE_IN_ITS_OWN_PROCESS, str(tiny_embedded), "quantize", "--preset", "student",
         "--runtime", "torchao", "--qat-steps", "1", "--calibration-images", "2", "--runs", "3", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "COMPRESSKIT_PROFILE": "embedded"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((tmp_path / "student-int8.json").read_text())
    assert set(summary["map"]) == {"fp32", "ptq", "qat"}
    assert summary["paired_latency"]["qat"]["baseline"] == "quantization/student/compile-fp32"
    for key in ("ptq", "qat"):  # the shipped int8 programs load back with torch.export
        program = torch.export.load(summary["artifacts"][key])
        assert any(node.target == torch.ops.quantized_decomposed.dequantize_per_channel.default
                   for node in program.graph.nodes)
        assert summary["size_bytes"][key] == Path(summary["artifacts"][key]).stat().st_size
    assert summary["qat_config"]["max_iters_per_epoch"] == 1 and len(summary["history"]) == 1
    assert summary["val_metrics"]["map"] == summary["map"]["qat"]  # usable as a training record
    assert "command" in summary and summary["trained_on"] and summary["environment"]["isa"]
    records = {r["id"]: r for r in read_results(tmp_path)["records"]}
    assert records["quantization/student/pt2e-qat-int8"]["technique"] == "qat"
    assert "faster than the compiled fp32 core" in finished.stdout


def test_qat_needs_the_torchao_runtime(tiny_profile, tmp_path, capsys):
    code = main(["quantize", "--preset", "student", "--qat-steps", "1", "--out", str(tmp_path)])
    assert code == 2 and "--runtime torchao" in capsys.readouterr().err


def test_quantize_refuses_more_calibration_images_than_the_train_split(tiny_profile, tmp_path, capsys):
    code = main(["quantize", "--preset", "student", "--calibration-images", "25", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "only 24" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx")), "nothing half-written"


def test_quantize_names_a_corrupt_checkpoint(tiny_profile, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    code = main(["quantize", "--preset", "student", "--checkpoint", str(broken), "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "broken.pt" in err and "Traceback" not in err
