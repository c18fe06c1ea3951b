"""The console script: exit codes and messages instead of tracebacks, help texts, light start-up.

Commands that would train, evaluate or measure a detector are checked against stand-in modules (installed in
``sys.modules`` for one test): what is under test is the command line (parsing, validation, which function gets
which arguments, what is printed), not the work behind it, which has its own tests.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from compresskit import cli, settings
from compresskit.cli import main

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("data", "train", "prune", "distill", "quantize", "search", "evaluate", "bench", "study", "reproduce",
            "figures")


def _stub_module(monkeypatch, name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)
    return module


class _Calls:
    """A stand-in function that records its calls and returns a fixed value (or raises a fixed error)."""

    def __init__(self, result=None, error: BaseException | None = None) -> None:
        self.calls, self.result, self.error = [], result, error

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result


def _one_error_line(err: str) -> str:
    """The one ``error:`` line of stderr; fails on a traceback or on several messages."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


# --------------------------------------------------------------------------------------------- real commands
def test_data_embedded_writes_the_coco_layout(tmp_path, capsys):
    assert main(["data", "embedded", "--out", str(tmp_path), "--train-images", "3", "--val-images", "2"]) == 0
    assert json.loads((tmp_path / "annotations/instances_val.json").read_text())["images"][1]["id"] == 2
    assert "ready" in capsys.readouterr().out


def test_data_check_reports_problems_without_traceback(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "missing.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, -3, 4]}],
        "categories": [{"id": 1, "name": "a"}]}))
    assert main(["data", "check", str(tmp_path / "bad.json"), "--images", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    printed = captured.out + captured.err  # the listing's stream is data.check's choice
    assert "missing.jpg" in printed and "annotation id=1" in printed and "Traceback" not in printed


def test_data_check_passes_the_real_coco_fixture(coco_tiny, capsys):
    code = main(["data", "check", str(coco_tiny / "annotations/instances_train2017.json"),
                 "--images", str(coco_tiny / "train2017")])
    assert code == 0, capsys.readouterr().out


def test_offline_coco_download_is_one_clear_message(tmp_path, capsys):
    code = main(["data", "coco", "--out", str(tmp_path / "subset"), "--split", "val2017", "--images", "2",
                 "--annotations-url", "http://127.0.0.1:9/annotations_trainval2017.zip"])
    err = capsys.readouterr().err
    assert code == 2 and "offline" in _one_error_line(err).lower()
    assert not (tmp_path / "subset").exists()


def test_evaluate_prints_and_writes_metrics(tiny_embedded, tmp_path, capsys):
    from compresskit.models import shipped_checkpoint

    if not shipped_checkpoint("student").exists():
        pytest.skip("no shipped student checkpoint")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--preset", "student", "--data", str(tiny_embedded), "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert {"map", "map50", "map_small", "map_medium", "map_large", "params", "macs"} <= set(written)
    assert written["images"] == 8
    assert f"{written['map']:.4f}" in next(line for line in capsys.readouterr().out.splitlines()
                                           if line.startswith("mAP (0-1)"))


def test_embedded_parts_are_what_detector_parts_returns_for_the_presets():
    # The CLI checks --part-ratio against EMBEDDED_PARTS before loading a model; it must name the real parts.
    from compresskit.models import load_preset
    from compresskit.prune.structured import EMBEDDED_PARTS, detector_parts

    for preset in ("teacher", "student"):
        model, _, _ = load_preset(preset)
        assert tuple(detector_parts(model)) == EMBEDDED_PARTS, preset


# --------------------------------------------------------------------------------------------- user errors
@pytest.mark.parametrize("argv, named", [
    (["prune", "--part-ratio", "layer9=0.5"], ["layer9", "stem", "layer4", "fpn", "head"]),
    (["prune", "--part-ratio", "layer4"], ["--part-ratio", "PART=RATIO", "'layer4'"]),
    (["prune", "--part-ratio", "layer4=1.5"], ["--part-ratio", "[0, 1)", "'1.5'"]),
    (["prune", "--ratio", "1.0"], ["--ratio", "[0, 1)", "'1.0'"]),
    (["prune", "--ratio", "-0.5"], ["--ratio", "[0, 1)", "'-0.5'"]),
    (["prune", "--ratio", "half"], ["--ratio", "'half'"]),
    (["prune", "--epochs", "0"], ["--epochs", "positive", "'0'"]),
    (["prune", "--name", "../elsewhere"], ["--name", "'../elsewhere'"]),
    (["train", "--preset", "teacher", "--max-iters", "-3"], ["--max-iters", "positive", "'-3'"]),
    (["train", "--preset", "tiny"], ["--preset", "'tiny'"]),
    (["train", "--backbone", "vgg_huge"], ["--backbone", "'vgg_huge'", "mobilenet_v3_large", "shufflenet_v2_x1_0"]),
    (["train", "--preset", "teacher", "--backbone", "mobilenet_v2"], ["--backbone", "--preset"]),
    (["train", "--backbone", "mobilenet_v2", "--width-mult", "0"], ["--width-mult", "> 0", "'0'"]),
    (["distill", "--method", "logits"], ["--method", "'logits'", "both"]),
    (["distill", "--temperature", "-1"], ["--temperature", "> 0"]),
    (["distill", "--teacher", "big"], ["--teacher", "'big'"]),
    (["bench", "--runs", "0"], ["--runs", "positive"]),
    (["reproduce", "--runs", "many"], ["--runs", "'many'"]),
    (["data", "embedded", "--out", "x", "--seed", "-1"], ["--seed", ">= 0", "'-1'"]),
    (["data", "coco", "--out", "x", "--split", "val2017", "--images", "0"], ["--images", "positive"]),
    (["evaluate"], ["--preset"]),
    (["compress"], ["'compress'"]),
])
def test_a_bad_argument_is_one_message_and_exit_2(argv, named, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert all(word in line for word in named), line
    assert captured.out == ""


def test_an_unknown_profile_stops_every_command_before_it_runs(monkeypatch, capsys):
    evaluate_preset = _Calls(result={})
    _stub_module(monkeypatch, "compresskit.engine.recipes", evaluate_preset=evaluate_preset)
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "nonsense")
    assert main(["evaluate", "--preset", "student"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "COMPRESSKIT_PROFILE" in line and "'nonsense'" in line and "embedded, coco" in line
    assert evaluate_preset.calls == []


def test_a_missing_user_path_is_one_message(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(missing))
    _stub_module(monkeypatch, "compresskit.engine.recipes", evaluate_preset=_Calls(error=error))
    assert main(["evaluate", "--preset", "student", "--checkpoint", str(missing)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(missing) in line and "No such file" in line


def test_an_out_path_below_a_file_is_one_message(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    code = main(["data", "embedded", "--out", str(tmp_path / "a_file" / "data"), "--train-images", "1",
                 "--val-images", "1"])
    assert code == 2
    assert "a_file" in _one_error_line(capsys.readouterr().err)


def test_a_missing_path_the_user_did_not_give_keeps_its_traceback(monkeypatch):
    # The kit's own files going missing is a bug to report, not a user error to paper over.
    error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/nonexistent/kit/internal.json")
    _stub_module(monkeypatch, "compresskit.engine.recipes", evaluate_preset=_Calls(error=error))
    with pytest.raises(FileNotFoundError):
        main(["evaluate", "--preset", "student"])


# --------------------------------------------------------------------------------------------- command wiring
def test_train_passes_the_overrides(monkeypatch, tmp_path, capsys):
    @dataclass
    class Recipe:
        epochs: int = 12
        lr: float = 0.01

    train_preset = _Calls(result=tmp_path / "teacher.pt")
    _stub_module(monkeypatch, "compresskit.engine.recipes", TRAIN_RECIPES={"teacher": Recipe()},
                 train_preset=train_preset)
    assert main(["train", "--preset", "teacher", "--epochs", "3", "--max-iters", "2", "--out", str(tmp_path)]) == 0
    (args, kwargs), = train_preset.calls
    assert args == ("teacher", tmp_path)
    assert kwargs["config"] == Recipe(epochs=3) and kwargs["max_iters_per_epoch"] == 2 and kwargs["data_dir"] is None
    assert kwargs["min_steps"] is None  # the embedded dataset: the recipe as it is
    assert str(tmp_path / "teacher.pt") in capsys.readouterr().out
    # Own data and no --epochs: a minimum number of steps; --epochs given: exactly those.
    assert main(["train", "--preset", "teacher", "--data", str(tmp_path), "--out", str(tmp_path)]) == 0
    assert train_preset.calls[-1][1]["min_steps"] == settings.MIN_OWN_DATA_STEPS
    assert main(["train", "--preset", "teacher", "--data", str(tmp_path), "--epochs", "2", "--out", str(tmp_path)]) == 0
    assert train_preset.calls[-1][1]["min_steps"] is None


def test_a_small_dataset_gets_enough_epochs_for_the_minimum_steps():
    from compresskit.engine import TrainConfig
    from compresskit.engine.recipes import schedule_for

    recipe = TrainConfig(epochs=8, batch_size=16)
    # 46 images at batch 16 are 3 steps an epoch: the recipe's 8 epochs would be 24 steps.
    assert schedule_for(recipe, 46, min_steps=200).epochs == 67
    assert schedule_for(recipe, 46, min_steps=200, max_iters_per_epoch=2).epochs == 100
    assert schedule_for(recipe, 2000, min_steps=200).epochs == 8  # never fewer epochs than the recipe's


def test_train_backbone_passes_the_backbone_and_its_recipe(monkeypatch, tmp_path, capsys):
    import compresskit.backbones as backbones

    train_backbone = _Calls(result=tmp_path / "backbone_mobilenet_v2.pt")
    monkeypatch.setattr(backbones, "train_backbone", train_backbone)
    assert main(["train", "--backbone", "mobilenet_v2", "--width-mult", "0.5", "--epochs", "2", "--out",
                 str(tmp_path)]) == 0
    (args, kwargs), = train_backbone.calls
    assert args == ("mobilenet_v2", tmp_path) and kwargs["width_mult"] == 0.5
    assert kwargs["config"].epochs == 2 and kwargs["config"].lr == backbones.TRAIN_RECIPE_BACKBONE.lr
    assert "backbone_mobilenet_v2.pt" in capsys.readouterr().out
    assert main(["train", "--preset", "student", "--width-mult", "0.5"]) == 2  # widths of a preset are fixed
    assert "--backbone only" in _one_error_line(capsys.readouterr().err)


def test_distill_builds_its_kd_config_from_the_options(monkeypatch, tmp_path):
    import compresskit.distill as distill

    distill_student = _Calls(result=tmp_path / "student_kd_logit.pt")
    monkeypatch.setattr(distill, "distill_student", distill_student)
    assert main(["distill", "--method", "logit", "--temperature", "4", "--epochs", "3", "--warmup-iters", "20",
                 "--out", str(tmp_path)]) == 0
    (args, kwargs), = distill_student.calls
    assert args == (tmp_path,) and kwargs["method"] == "logit" and kwargs["kd_config"].method == "logit"
    assert kwargs["kd_config"].temperature == 4 and kwargs["kd_config"].logit_weight == distill.KDConfig().logit_weight
    assert kwargs["train_config"].epochs == 3 and kwargs["train_config"].lr == distill.DISTILL_RECIPE.lr
    assert kwargs["train_config"].warmup_iters == 20


def test_distill_rejects_a_teacher_with_another_label_map(tiny_embedded, tmp_path, capsys):
    """A teacher trained on other categories cannot teach this student: one message, exit 2, nothing written."""
    from compresskit.data.dataset import LabelMap
    from compresskit.models import checkpoint_spec, load_checkpoint, save_checkpoint, shipped_checkpoint

    teacher, label_map, _ = load_checkpoint(shipped_checkpoint("teacher"))
    other = LabelMap(label_map.category_ids, label_map.labels, ("zebra",) + tuple(label_map.names[1:]))
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(foreign, teacher, checkpoint_spec(shipped_checkpoint("teacher")), other, meta={})
    out = tmp_path / "out"
    assert main(["distill", "--teacher-checkpoint", str(foreign), "--data", str(tiny_embedded), "--max-iters", "1",
                 "--epochs", "1", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "zebra" in line and "label" in line
    assert not list(out.glob("*.pt")) if out.exists() else True


def test_prune_kd_runs_the_distilled_recovery(monkeypatch, tmp_path):
    import copy

    import compresskit.prune as prune
    from compresskit.distill import Distiller, KDConfig
    from compresskit.models import load_preset

    prune_and_finetune = _Calls(result=tmp_path / "teacher_pruned_kd.pt")
    monkeypatch.setattr(prune, "prune_and_finetune", prune_and_finetune)
    assert main(["prune", "--kd", "--out", str(tmp_path)]) == 0
    assert main(["prune", "--out", str(tmp_path)]) == 0
    (args, kwargs), (_, plain) = prune_and_finetune.calls
    assert args == (tmp_path,) and kwargs["name"] == "teacher_pruned_kd" and kwargs["preset"] == "teacher"
    assert plain["name"] == "teacher_pruned" and plain["extra_training"] is None
    # The pruning recipe gets distillation from the unpruned teacher, with the default KD config.
    student, _, _ = load_preset("teacher")
    extra = kwargs["extra_training"](copy.deepcopy(student))
    assert isinstance(extra.loss, Distiller) and extra.loss.config == KDConfig()
    assert extra.modules is extra.loss.adapters and extra.record()["method"] == "both"


def test_prune_builds_its_configs_from_the_recipe_and_the_options(monkeypatch, tmp_path):
    import compresskit.prune as prune

    prune_and_finetune = _Calls(result=tmp_path / "mine.pt")
    monkeypatch.setattr(prune, "prune_and_finetune", prune_and_finetune)
    assert main(["prune"]) == 0
    assert main(["prune", "--ratio", "0.3", "--part-ratio", "layer4=0.6", "--part-ratio", "head=0.2", "--epochs", "2",
                 "--max-iters", "1", "--out", str(tmp_path), "--name", "mine"]) == 0
    (_, default), (_, chosen) = prune_and_finetune.calls
    assert default["prune_config"] == prune.PRUNE_RECIPE and default["train_config"] == prune.FINETUNE_RECIPE
    assert chosen["prune_config"].ratio == 0.3 and chosen["prune_config"].part_ratios == {"layer4": 0.6, "head": 0.2}
    assert chosen["train_config"].epochs == 2 and chosen["train_config"].lr == prune.FINETUNE_RECIPE.lr
    assert (chosen["name"], chosen["max_iters_per_epoch"], chosen["checkpoint"]) == ("mine", 1, None)


def test_evaluate_prints_map_as_0_to_1_and_writes_json(monkeypatch, tmp_path, capsys):
    metrics = {"preset": "student", "map": 0.51234, "map50": 0.8, "params": 1234567, "macs": 2500000000, "images": 8}
    evaluate_preset = _Calls(result=metrics)
    _stub_module(monkeypatch, "compresskit.engine.recipes", evaluate_preset=evaluate_preset)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--preset", "student", "--data", str(tmp_path), "--json", str(out)]) == 0
    assert evaluate_preset.calls == [(("student",), {"data_dir": tmp_path, "checkpoint": None})]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines if line.startswith("mAP (0-1)")] == ["0.5123"]
    assert any(line.startswith("MACs") and line.endswith("2,500,000,000") for line in lines)
    assert json.loads(out.read_text()) == metrics


def test_bench_passes_runs(monkeypatch):
    bench_baselines = _Calls(result=[])
    _stub_module(monkeypatch, "compresskit.harness.baselines", bench_baselines=bench_baselines)
    assert main(["bench", "--runs", "5"]) == 0
    assert bench_baselines.calls == [((), {"json_path": None, "reports": None, "runs": 5})]


# --------------------------------------------------------------------------------------------- reproduce
@pytest.fixture
def reference(monkeypatch, tmp_path):
    """A committed reference folder and a stand-in ``compresskit.harness.reproduce`` pointing at it."""
    folder = tmp_path / "repo" / "reports"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"schema": 1, "records": [{"id": "baseline/teacher/eager"}]}))
    run = _Calls(result=tmp_path / "results.json")
    _stub_module(monkeypatch, "compresskit.harness.reproduce", REFERENCE_DIR=folder, STUDIES=("baselines", "pruning"),
                 reproduce=run)
    monkeypatch.chdir(tmp_path)
    return folder, run


def test_reproduce_writes_under_runs_by_default(reference):
    folder, run = reference
    assert main(["reproduce"]) == 0
    assert run.calls == [((Path("runs/reproduce"),), {"studies": None, "profile": None, "runs": 30,
                                                    "update_reference": False, "restart": False})]


def test_reproduce_passes_only_and_runs(reference):
    folder, run = reference
    assert main(["reproduce", "--out", "mine", "--only", "pruning", "baselines", "--runs", "7"]) == 0
    assert run.calls == [((Path("mine"),), {"studies": ["pruning", "baselines"], "profile": None, "runs": 7,
                                                    "update_reference": False, "restart": False})]


def test_reproduce_rejects_an_unknown_study(reference, capsys):
    folder, run = reference
    assert main(["reproduce", "--only", "quantisation"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'quantisation'" in line and "baselines" in line and "pruning" in line
    assert run.calls == []


@pytest.mark.parametrize("where", ["reference", "relative path", "copy"])
def test_reproduce_into_the_reference_needs_update_reference(reference, where, tmp_path, capsys):
    folder, run = reference
    out = {"reference": folder, "relative path": Path("repo/reports")}.get(where)
    if where == "copy":
        out = tmp_path / "copy"
        shutil.copytree(folder, out)
    assert main(["reproduce", "--out", str(out)]) == 2
    assert "--update-reference" in _one_error_line(capsys.readouterr().err)
    assert run.calls == []
    assert main(["reproduce", "--out", str(out), "--update-reference"]) == 0
    assert run.calls == [((out,), {"studies": None, "profile": None, "runs": 30, "update_reference": True, "restart": False})]


def test_is_reference_folder_compares_records(tmp_path):
    reference = tmp_path / "reports"
    reference.mkdir()
    (reference / "results.json").write_text(json.dumps({"records": [{"id": "a", "map": 0.5}]}))
    other = tmp_path / "other"
    other.mkdir()
    assert not cli.is_reference_folder(other, reference)  # no results.json there
    (other / "results.json").write_text(json.dumps({"records": [{"id": "a", "map": 0.4}]}))
    assert not cli.is_reference_folder(other, reference)
    (other / "results.json").write_text(json.dumps({"records": [{"id": "a", "map": 0.5}]}))
    assert cli.is_reference_folder(other, reference)
    assert cli.is_reference_folder(reference / ".." / "reports", reference)
    assert not cli.is_reference_folder(reference, None)


# --------------------------------------------------------------------------------------------- help
def _subparsers(parser: argparse.ArgumentParser):
    """Every (sub-)command parser with its name, depth first."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _subparsers(child)


def test_top_level_help_lists_each_command_on_one_line(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps help to the terminal width
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listing = out.split("  COMMAND\n")[1].split("\n\n")[0].splitlines()
    summaries: dict[str, list[str]] = {}
    for line in listing:
        if line.startswith("    ") and not line.startswith("     "):  # a command name, maybe with its summary
            name, *summary = line.split(maxsplit=1)
            summaries[name] = summary
        else:  # a wrapped summary, or the summary of a long name, which argparse puts below it
            summaries[name].append(line.strip())
    assert {name: len(summary) for name, summary in summaries.items()} == dict.fromkeys(COMMANDS, 1), out
    assert "COMPRESSKIT_PROFILE" in out


def test_every_option_has_help_that_shows_its_default():
    formatter = cli._HelpFormatter(prog="compresskit")
    for prog, parser in _subparsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert action.help, (prog, action.dest)
            if action.option_strings and not action.required:
                assert "default" in formatter._get_help_string(action), (prog, action.dest)


@pytest.mark.parametrize("command, phrases", [(["evaluate"], ["mAP (0-1)", "0-1"]),
                                              (["bench"], ["x100", "0-1"])])
def test_help_says_which_map_convention_is_printed(command, phrases, capsys):
    assert main([*command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert all(phrase in out for phrase in phrases), out


def test_quantize_runtime_choices_come_from_the_runtime_registry(capsys):
    from compresskit.runtimes import runtime_names

    action = next(action for action in dict(_subparsers(cli.build_parser()))["compresskit quantize"]._actions
                  if "--runtime" in action.option_strings)
    assert tuple(action.choices) == (*runtime_names(), "torchao", "auto")
    # a registered runtime without an int8 path: one message before anything is loaded, exit 2
    assert main(["quantize", "--runtime", "torch-eager"]) == 2
    assert "no int8 path for runtime 'torch-eager'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- start-up cost
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_import_and_help_do_not_load_torch():
    probe = ("import sys, compresskit, compresskit.cli, compresskit.settings, compresskit.errors; "
             "compresskit.cli.build_parser().format_help(); "
             "print(sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_runs_as_a_module():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "compresskit.cli", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    print(f"python -m compresskit.cli --help: {time.perf_counter() - started:.2f} s")
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)


def test_submodules_load_on_first_access():
    result = _python("import sys, compresskit as ck; assert 'compresskit.errors' not in sys.modules; "
                     "print(ck.errors.CompressKitError.__name__, 'errors' in dir(ck), 'harness' in dir(ck)); "
                     "ck.no_such_module")
    assert result.stdout.split() == ["CompressKitError", "True", "True"]
    assert "AttributeError" in result.stderr and "no_such_module" in result.stderr


INTERRUPTED_IN_A_PROGRESS_BAR = """
import sys
from tqdm.auto import tqdm
from compresskit import cli

def interrupted(args):
    bar = tqdm.__new__(tqdm)
    bar.disable = False  # what a Ctrl-C inside tqdm's constructor leaves: a bar without its position
    raise KeyboardInterrupt("rerun the same command to resume after epoch 1 of 3")

cli._train = interrupted
sys.exit(cli.main(["train", "--preset", "student"]))
"""


def test_an_interrupt_inside_a_progress_bar_still_ends_with_the_one_line():
    finished = subprocess.run([sys.executable, "-c", INTERRUPTED_IN_A_PROGRESS_BAR], capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 130
    assert "AttributeError" not in finished.stderr and "Exception ignored" not in finished.stderr, finished.stderr
    assert finished.stderr.strip().splitlines()[-1] == ("compresskit: interrupted; rerun the same command to resume "
                                                        "after epoch 1 of 3")
