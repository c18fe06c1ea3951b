"""``compresskit reproduce`` interrupted keeps the studies it finished and resumes with the next one; an
interrupted run with other settings is refused instead of mixed with a new one. The studies are toys that return
ready-made records, so the test checks the bookkeeping alone in well under a second."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

import compresskit.harness.reproduce  # noqa: F401 (the module, not the function the package exports)
from compresskit.cli import main
from compresskit.report import make_record, read_results

reproduce_module = sys.modules["compresskit.harness.reproduce"]


def _toy_study(name: str, calls: list[str], interrupt: set[str]):
    def study(**settings):
        calls.append(name)
        if name in interrupt:
            interrupt.discard(name)  # interrupted once, like a Ctrl-C during the study
            raise KeyboardInterrupt
        record = make_record(id=f"{name}/toy", lesson="toy", profile="embedded", technique="baseline", model="toy",
                             runtime="torch-eager", metrics={"map": 0.5}, config={"runs": settings["runs"]})
        return SimpleNamespace(records=[record])
    return study


@pytest.fixture
def toy_studies(monkeypatch):
    calls: list[str] = []
    interrupt = {"second"}
    studies = {name: _toy_study(name, calls, interrupt) for name in ("first", "second", "third")}
    monkeypatch.setattr(reproduce_module, "STUDIES", studies)
    monkeypatch.setattr(reproduce_module, "write_derived", lambda out, log=print: out)
    return calls


def test_an_interrupted_reproduce_keeps_finished_studies_and_resumes_with_the_next(toy_studies, tmp_path, capsys):
    out = tmp_path / "run"
    arguments = ["reproduce", "--out", str(out), "--runs", "3"]
    assert main(arguments) == 130
    message = capsys.readouterr().err
    assert "1 finished studies are kept" in message and "resume with the second study" in message
    assert [record["id"] for record in read_results(out)["records"]] == ["first/toy"]
    assert (out / reproduce_module.PROGRESS_NAME).is_file()

    # Other settings are refused, naming the difference, and change nothing.
    assert main(["reproduce", "--out", str(out), "--runs", "5"]) == 2
    assert "runs 3 there, 5 now" in capsys.readouterr().err
    assert toy_studies == ["first", "second"]

    assert main(arguments) == 0
    assert toy_studies == ["first", "second", "second", "third"]  # the first study is not run again
    assert "first: 1 records kept from the interrupted run" in capsys.readouterr().out
    assert [record["id"] for record in read_results(out)["records"]] == ["first/toy", "second/toy", "third/toy"]
    assert not (out / reproduce_module.PROGRESS_NAME).exists()  # a finished run leaves nothing to resume

    assert main(arguments + ["--restart"]) == 0  # a finished run, started again, runs every study
    assert toy_studies[4:] == ["first", "second", "third"]


def test_restart_starts_over_after_an_interrupted_run_with_other_settings(toy_studies, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "--out", str(out), "--runs", "3"]) == 130
    assert main(["reproduce", "--out", str(out), "--runs", "5", "--restart"]) == 0
    assert toy_studies == ["first", "second", "first", "second", "third"]
    assert {record["config"]["runs"] for record in read_results(out)["records"]} == {5}


def test_reproduce_under_the_coco_profile_leaves_out_the_studies_without_coco_detectors(monkeypatch, tmp_path):
    calls: list[str] = []
    names = ("baselines", "distillation", "combined", "quantization")
    monkeypatch.setattr(reproduce_module, "STUDIES", {name: _toy_study(name, calls, set()) for name in names})
    monkeypatch.setattr(reproduce_module, "write_derived", lambda out, log=print: out)
    lines: list[str] = []
    reproduce_module.reproduce(tmp_path / "coco", profile="coco", runs=3, progress=False, log=lines.append)
    assert calls == ["baselines", "quantization"]
    left_out = [line for line in lines if "left out" in line]
    assert len(left_out) == 2 and "distiller" in left_out[0] and "On COCO today" in left_out[1]
    reproduce_module.reproduce(tmp_path / "named", studies=["distillation"], profile="coco", runs=3, progress=False,
                               log=lines.append)
    assert calls[-1] == "distillation"  # asked for by name, it runs (and the real study stops with its message)
