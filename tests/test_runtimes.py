"""Runtimes are one registry: a runtime registered in a few lines is measured by a Study, accepted in records and
offered by the command line, with nothing else edited; an unknown name gets one error listing the known ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from compresskit import harness
from compresskit.cli import build_parser
from compresskit.data import load_split
from compresskit.engine import make_loader, val_subset
from compresskit.models import EMBEDDED_PRESETS, build_detector
from compresskit.models.core import ExportableCore
from compresskit.report import ResultsFileError, read_results, write_records
from compresskit.runtimes import (OnnxCore, Runtime, UnknownRuntimeError, get_runtime, register_runtime,
                                  runtime_names, unregister_runtime)

BUILT_IN = ("torch-eager", "torch-compile", "onnxruntime", "openvino")


class NoGradEager(Runtime):
    """The detector's own core, run under ``torch.no_grad``: a runtime in a few lines."""

    name = "toy-no-grad"

    def version(self) -> str:
        return torch.__version__

    def core_for(self, detector, *, threads: int, artifact_dir: Path, record_id: str):
        core = ExportableCore(detector)

        def run(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return core(batch)

        return run


@pytest.fixture
def toy_runtime():
    runtime = register_runtime(NoGradEager())
    yield runtime
    unregister_runtime(runtime.name)


@pytest.fixture(scope="module")
def tiny_study_parts(tiny_embedded):
    torch.manual_seed(0)
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    val = load_split("val", tiny_embedded)
    return detector, make_loader(val_subset(val, 2), batch_size=2, train=False), val.label_map


def _quantize_runtime_choices() -> tuple[str, ...]:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    option = next(action for action in commands.choices["quantize"]._actions if "--runtime" in action.option_strings)
    return tuple(option.choices)


def _study(parts, **settings) -> harness.Study:
    _, loader, label_map = parts
    return harness.Study(lesson="test", model="student", profile="embedded", val_loader=loader,
                         label_map=label_map, runs=2, **settings)


def test_the_built_in_runtimes_are_registered_in_order():
    assert runtime_names()[:4] == BUILT_IN
    assert all(get_runtime(name).name == name for name in BUILT_IN)


def test_a_registered_runtime_is_measured_recorded_and_offered_by_the_cli(toy_runtime, tiny_study_parts, tmp_path):
    detector = tiny_study_parts[0]
    study = _study(tiny_study_parts)
    eager = study.measure(detector, "toy/eager", technique="baseline", warmup=1)
    toy = study.measure(detector, "toy/no-grad", technique="baseline", runtime=toy_runtime.name, warmup=1)
    assert toy["runtime"] == "toy-no-grad" and toy["paired_latency"]["baseline"] == eager["id"]
    assert toy["map"] == eager["map"]  # the same computation, without autograd
    assert toy["size_bytes"] == eager["size_bytes"]  # the default artifact: the detector's state_dict
    records = read_results(write_records(study.records, reports_dir=tmp_path))["records"]
    assert [record["runtime"] for record in records] == ["torch-eager", "toy-no-grad"]
    args = build_parser().parse_args(["quantize", "--runtime", "toy-no-grad"])
    assert args.runtime == "toy-no-grad"
    assert "toy-no-grad" in _quantize_runtime_choices()


def test_after_unregistering_the_runtime_is_gone_everywhere(toy_runtime):
    unregister_runtime(toy_runtime.name)
    try:
        assert toy_runtime.name not in runtime_names() and toy_runtime.name not in _quantize_runtime_choices()
        with pytest.raises(SystemExit):
            build_parser().parse_args(["quantize", "--runtime", toy_runtime.name])
    finally:
        register_runtime(toy_runtime)  # the fixture unregisters it


def test_an_unknown_runtime_gets_one_error_listing_the_registered_ones(tiny_study_parts):
    detector = tiny_study_parts[0]
    with pytest.raises(UnknownRuntimeError, match="unknown runtime 'tensorrt'; the registered runtimes are "
                                                  "torch-eager, torch-compile, onnxruntime, openvino"):
        _study(tiny_study_parts).measure(detector, "toy/tensorrt", technique="baseline", runtime="tensorrt")
    with pytest.raises(UnknownRuntimeError, match="torch-eager, torch-compile, onnxruntime, openvino"):
        harness.runner_for(detector, "toy/tensorrt", "tensorrt")
    with pytest.raises(ResultsFileError, match="unknown runtime 'tensorrt'.*torch-eager, torch-compile, onnxruntime"):
        from compresskit.report import make_record

        make_record(id="x", lesson="test", profile="embedded", technique="baseline", model="student",
                    runtime="tensorrt", metrics=None)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_runtime(type(get_runtime("torch-eager"))())


def test_evaluation_identity_names_only_what_is_known_to_compute_the_same(tiny_study_parts, tmp_path):
    detector = tiny_study_parts[0]
    eager, onnx = get_runtime("torch-eager"), get_runtime("onnxruntime")
    assert eager.evaluation_identity(detector, ExportableCore(detector)) is not None
    assert eager.evaluation_identity(detector, lambda batch: ExportableCore(detector)(batch)) is None
    assert get_runtime("torch-compile").evaluation_identity(detector, ExportableCore(detector)) is None
    core = onnx.core_for(detector, threads=1, artifact_dir=tmp_path, record_id="toy/ort fp32")
    assert isinstance(core, OnnxCore) and core.path == tmp_path / "toy_ort_fp32.onnx"
    assert onnx.artifact(detector, core) == core.path and onnx.core_threads(core) == 1
    again = onnx.core_from_artifact(core.path, threads=1)
    assert onnx.evaluation_identity(detector, again) == onnx.evaluation_identity(detector, core) is not None
