"""``compresskit search`` on the tiny dataset: a two-chain search with one-step fine-tunes writes the records, the
front, the recipe, the summary and the chosen artifact; a rerun resumes instead of searching again; the recipe
replays to the same variant; bad settings are one message. Mechanics, not accuracy: the budget here is wide."""

from __future__ import annotations

import json

import pytest

from compresskit.cli import main
from compresskit.errors import ConfigError
from compresskit.harness import search as search_module
from compresskit.harness.search import Recipe, SearchConfig, part_ratios_for, search
from compresskit.report import read_results

TINY = dict(max_map_drop=100.0, time_budget_minutes=30, max_trials=2, runtimes=("onnxruntime", "openvino"),
            proxy_steps=1, full_steps=2, batch_size=4, proxy_val_images=4, calibration_images=2, runs=3)


@pytest.fixture
def tiny_search(tiny_profile, monkeypatch):
    monkeypatch.setattr(search_module, "RESOLUTION_POINTS", 100.0)  # the tiny dataset's 8 val images judge nothing
    return tiny_profile


@pytest.mark.slow
def test_a_search_writes_its_front_recipe_summary_and_artifact_and_resumes(tiny_search, tmp_path, capsys):
    out = tmp_path / "search"
    result = search("student", out, SearchConfig(**TINY), log=None)
    records = {record["id"]: record for record in read_results(out)["records"]}
    chains = {record_id.split("/")[2] for record_id in records if record_id.startswith("search/student/t")}
    assert chains == {"t000", "t001"}  # the first two enqueued chains
    for chain in chains:
        assert {f"search/student/{chain}/{name}" for name in ("ort-fp32", "ort-int8", "ov-int8")} <= set(records)
    assert all(record["baseline"] == "search/student/ort-fp32" for record_id, record in records.items()
               if record_id.startswith("search/student/t"))
    # The first chain is int8 alone: its fp32 core is the detector itself, not fine-tuned, so it detects the same.
    untouched = records["search/student/t000/ort-fp32"]
    assert untouched["train_seconds"] == 0 and untouched["map"] == records["search/student/ort-fp32"]["map"]
    assert records["search/student/t001/ort-fp32"]["train_seconds"] > 0  # pruned 30 %, then fine-tuned
    chosen = [record for record in records.values() if (record.get("config") or {}).get("chosen")]
    assert [record["id"] for record in chosen] == [result.chosen["id"]]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["detector"] == "student" and recipe["full_steps"] == 2 and recipe["stages"]
    assert (out / "front_latency.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "**Chosen**" in summary and result.chosen["id"] in summary
    assert any((out / "chosen").iterdir())
    assert not (out / "work").exists()
    # The same command again: the finished trials and records are kept, nothing is measured again.
    again = search("student", out, SearchConfig(**TINY), log=None)
    assert again.chosen["id"] == result.chosen["id"]
    assert {record["id"]: record["latency_ms"] for record in read_results(out)["records"]} == {
        record_id: record["latency_ms"] for record_id, record in records.items()}
    # Other settings are refused rather than mixed in.
    with pytest.raises(ConfigError, match="other settings"):
        search("student", out, SearchConfig(**{**TINY, "full_steps": 3}), log=None)
    # The recipe replays to the same variant: same MACs and size, and nearly the same mAP (on 8 val images one
    # detection moves mAP by tenths of a point; the 0.2-point check on the full val split is the reference's).
    assert main(["search", "--replay", str(out / "recipe.json"), "--runs", "3", "--out", str(tmp_path / "replay")]) == 0
    replayed = [record for record in read_results(tmp_path / "replay")["records"]
                if record["id"] != "replay/student/ort-fp32"]
    assert len(replayed) == 1 and replayed[0]["macs"] == result.chosen["macs"]
    assert replayed[0]["size_bytes"] == pytest.approx(result.chosen["size_bytes"], rel=0.01)
    assert abs(replayed[0]["map"] - result.chosen["map"]) <= 0.01
    # `reproduce` re-measures the choice from the artifact it shipped: the same file gives the same detections.
    study = search_module.reference_search_study(reference=out, runs=3)
    [remeasured] = [record for record in study.records if record["id"] == result.chosen["id"]]
    assert remeasured["map"] == result.chosen["map"] and remeasured["macs"] == result.chosen["macs"]
    assert remeasured["baseline"] == "search/student/ort-fp32" and remeasured["config"]["chosen"]
    # ... and the front's int8 variants faster than the choice (the budget ruled them out) from theirs (front/), each
    # giving the detections the search measured.
    shipped = {f"search/student/{path.stem.replace('-', '/', 1)}" for path in (out / "front").iterdir()
               if path.suffix in (".onnx", ".xml", ".pt2")}
    assert result.chosen["id"] not in shipped and all(record_id.endswith("-int8") for record_id in shipped)
    assert all(records[record_id]["paired_latency"]["speedup"] > result.chosen["paired_latency"]["speedup"]
               for record_id in shipped)
    again_measured = {record["id"]: record for record in study.records}
    assert all(again_measured[record_id]["map"] == records[record_id]["map"] for record_id in shipped)


@pytest.mark.parametrize(("change", "named"), [
    ({"max_map_drop": 0}, "above 0"), ({"max_map_drop": 101}, "at most 100"), ({"objective": "energy"}, "objective"),
    ({"runtimes": ("tensorrt",)}, "unknown int8 runtime"), ({"time_budget_minutes": 0}, "minutes"),
    ({"proxy_steps": 5, "full_steps": 2}, "at least proxy_steps"),
])
def test_bad_settings_are_one_message(change, named):
    with pytest.raises(ConfigError, match=named):
        SearchConfig(**{**TINY, **change})


def test_a_time_budget_too_small_for_one_chain_says_how_much_it_needs(tiny_search, tmp_path, capsys):
    code = main(["search", "--preset", "student", "--time-budget", "0.01", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "one chain takes about" in err and "--time-budget" in err and "Traceback" not in err


def test_a_val_split_too_small_for_the_budget_is_refused_with_its_size(tiny_profile, tmp_path, capsys):
    code = main(["search", "--preset", "student", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "has 8 images" in err and "at least 200 val boxes" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_part_ratios_spread_the_trunk_ratio_over_its_stages(student):
    detector, _ = student
    ratios = part_ratios_for(detector, trunk=0.3, fpn=0.0, head=0.2)
    assert ratios["head"] == 0.2 and "fpn" not in ratios
    assert {name for name, ratio in ratios.items() if ratio == 0.3} >= {"layer1", "layer4"}


def test_a_file_that_is_not_a_recipe_is_one_message(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text("{\"part_ratios\": 3}")
    with pytest.raises(ConfigError, match="not a recipe"):
        Recipe.read(path)


def test_an_unpruned_chain_without_distillation_is_its_start_as_it_is_unless_an_older_recipe_fine_tuned_it(
        student, tmp_path):
    import torch

    detector, _ = student
    recipe = Recipe(detector="student", source="student", checkpoint=None, part_ratios={}, kd=False, proxy_steps=1,
                    full_steps=4, batch_size=2, lr=0.01, seed=0, runtime="onnxruntime", int8=True,
                    calibration_images=2, fine_tune_unpruned=False)
    built, seconds = search_module.build_chain(detector, recipe, detector, None, tmp_path / "work", 4)
    assert seconds == 0.0 and built is not detector and not (tmp_path / "work").exists()
    assert all(torch.equal(value, detector.state_dict()[name]) for name, value in built.state_dict().items())
    # A recipe written before the field existed fine-tuned its unpruned chain; read back, it still does.
    older = {key: value for key, value in recipe.as_dict().items() if key not in ("fine_tune_unpruned", "keep_float")}
    (tmp_path / "recipe.json").write_text(json.dumps(older))
    read = Recipe.read(tmp_path / "recipe.json")
    assert read.fine_tune_unpruned and read.keep_float == [] and search_module._fine_tuned(read)


def _open_the_search_storage_with_the_others(url, barrier):
    barrier.wait()
    search_module._open_storage(url)


def test_workers_started_together_on_a_new_database_all_open_it(tmp_path):
    # Two workers started at once on a new database race to create Optuna's tables; without a retry the loser dies
    # on the schema's version row (about one start in two here, with four workers).
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(4):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_the_search_storage_with_the_others, args=(url, barrier))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]


SEARCH_IN_ITS_OWN_PROCESS = """
import os, runpy, sys
runpy.run_path(os.environ["COMPRESSKIT_TEST_WARNING_POLICY"])  # the suite's deprecation policy (conftest.py)
from compresskit import harness
from compresskit.data import load_split
from compresskit.harness import search

data = sys.argv[1]
harness.loading.profile_split = lambda split, profile, label_map, train_transforms=None: load_split(
    split, data, train_transforms=train_transforms, label_map=label_map)
search.RESOLUTION_POINTS = 100.0
config = search.SearchConfig(max_map_drop=100.0, time_budget_minutes=30, max_trials=2, runtimes=("onnxruntime",),
                             proxy_steps=1, full_steps=2, batch_size=4, proxy_val_images=4, calibration_images=2,
                             runs=3)
search.search("student", sys.argv[2], config, storage=sys.argv[3], log=None)
"""


@pytest.mark.slow
def test_two_processes_search_one_study_through_a_shared_storage(tiny_embedded, tmp_path):
    import os
    import subprocess
    import sys

    import optuna

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", SEARCH_IN_ITS_OWN_PROCESS, str(tiny_embedded),
                                 str(tmp_path / f"worker{index}"), storage], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COMPRESSKIT_PROFILE": "embedded"})
               for index in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    [summary] = optuna.study.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    numbers = [trial.number for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(numbers) >= 2 and len(set(numbers)) == len(numbers)
    # each chain was measured by one process only: the two shared the study's trials instead of repeating them
    chains = [{record["id"].split("/")[2] for record in read_results(tmp_path / f"worker{index}")["records"]
               if record["id"].startswith("search/student/t")} for index in range(2)]
    assert len(chains[0] | chains[1]) >= 2 and not chains[0] & chains[1]


@pytest.fixture
def own_fine_tuned(tmp_path, monkeypatch) -> tuple:
    """A split example export (category ids 0, 3, 7) and a student fine-tuned on it for two steps."""
    from compresskit.data.example_export import write_example_export
    from compresskit.data.split import SplitConfig, split_dataset
    from compresskit.engine import TrainConfig
    from compresskit.engine.recipes import train_preset

    monkeypatch.setattr(search_module, "RESOLUTION_POINTS", 100.0)  # 4 val images: mechanics only
    annotations = write_example_export(tmp_path / "export", images=12)
    split_dataset(annotations, tmp_path / "export" / "images", tmp_path / "split",
                  SplitConfig(val_fraction=0.34, seed=0))
    checkpoint = train_preset("student", tmp_path / "ft", data_dir=tmp_path / "split",
                              config=TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0),
                              max_iters_per_epoch=2, progress=False, init="shipped")
    return checkpoint, tmp_path / "split"


@pytest.mark.slow
def test_a_search_on_your_own_data_reads_it_through_the_checkpoints_label_map_and_replays(own_fine_tuned, tmp_path):
    checkpoint, data = own_fine_tuned
    out = tmp_path / "search"
    arguments = ["search", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--trials", "1",
                 "--runtimes", "onnxruntime", "--proxy-steps", "1", "--full-steps", "1", "--runs", "3",
                 "--max-map-drop", "100"]
    assert main(arguments) == 0
    records = {record["id"]: record for record in read_results(out)["records"]}
    assert {"search/student/ort-fp32", "search/student/t000/ort-int8"} <= set(records)
    assert {record["profile"] for record in records.values()} == {"custom"}
    recipe = Recipe.read(out / "recipe.json")
    assert recipe.data == str(data) and recipe.checkpoint == str(checkpoint)
    assert main(["search", "--replay", str(out / "recipe.json"), "--runs", "3", "--out", str(tmp_path / "replay")]) == 0
    replayed = [record for record in read_results(tmp_path / "replay")["records"] if "/ort-fp32" not in record["id"]]
    assert len(replayed) == 1 and replayed[0]["profile"] == "custom"
    # The same search on another dataset in the same folder is another search: refused, not mixed in.
    annotations = data / "annotations" / "instances_val.json"
    document = json.loads(annotations.read_text())
    document["annotations"] = document["annotations"][1:]
    annotations.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="other settings"):
        search("student", out, SearchConfig(**{**TINY, "runtimes": ("onnxruntime",), "max_trials": 1,
                                                 "proxy_steps": 1, "full_steps": 1}),
               checkpoint=checkpoint, data_dir=data, log=None)


def test_a_search_on_your_own_data_needs_its_checkpoint_and_clean_data(own_fine_tuned, tmp_path, capsys):
    checkpoint, data = own_fine_tuned
    assert main(["search", "--data", str(data), "--out", str(tmp_path / "s")]) == 2
    assert "pass --checkpoint FILE" in capsys.readouterr().err
    annotations = data / "annotations" / "instances_val.json"
    document = json.loads(annotations.read_text())
    document["annotations"][0]["category_id"] = 42
    annotations.write_text(json.dumps(document))
    assert main(["search", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "42" in err and "instances_val.json" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_study_with_search_refuses_a_val_split_too_small_before_the_study_runs(own_fine_tuned, tmp_path, monkeypatch,
                                                                            capsys):
    checkpoint, data = own_fine_tuned
    monkeypatch.setattr(search_module, "RESOLUTION_POINTS", 0.5)
    code = main(["study", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "study"),
                 "--search", "20"])
    err = capsys.readouterr().err
    assert code == 2 and "has 4 images" in err and "--val-fraction" in err and not (tmp_path / "study").exists()
