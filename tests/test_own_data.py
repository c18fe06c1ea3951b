"""``compresskit study``: the compression study on a detector fine-tuned on a dataset of your own — records in the
results schema (profile ``custom``), Pareto figures, a rerun that replaces only its own records, and bad data
stopped with the check's messages before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compresskit.cli import main
from compresskit.data.example_export import write_example_export
from compresskit.data.split import SplitConfig, split_dataset
from compresskit.engine import TrainConfig
from compresskit.engine.recipes import train_preset
from compresskit.report import read_results


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory) -> tuple[Path, Path]:
    """A split example export and a student fine-tuned on it for two steps: ``(checkpoint, dataset folder)``."""
    root = tmp_path_factory.mktemp("own")
    annotations = write_example_export(root / "export", images=16)
    split_dataset(annotations, root / "export" / "images", root / "split", SplitConfig(val_fraction=0.25, seed=0))
    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0)
    checkpoint = train_preset("student", root / "ft", data_dir=root / "split", config=config,
                              max_iters_per_epoch=2, progress=False, init="shipped")
    return checkpoint, root / "split"


@pytest.mark.slow
def test_study_writes_every_variant_and_its_figures(fine_tuned, tmp_path, capsys):
    checkpoint, data = fine_tuned
    out = tmp_path / "reports"
    arguments = ["study", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--finetune-steps", "2", "--runs", "3", "--calibration-images", "4"]
    assert main(arguments) == 0
    records = {record["id"]: record for record in read_results(out)["records"]}
    assert set(records) == {f"custom/student/{name}" for name in
                            ("eager", "ort-fp32", "ort-int8", "finetuned/eager", "finetuned/ort-fp32",
                             "structured/eager", "structured/ort-fp32", "structured/ort-int8")}
    assert {record["profile"] for record in records.values()} == {"custom"}
    assert {record["lesson"] for record in records.values()} == {"07_your_own_dataset"}
    base, pruned = records["custom/student/eager"], records["custom/student/structured/eager"]
    combined = records["custom/student/structured/ort-int8"]
    assert pruned["macs"] < base["macs"] and pruned["params"] < base["params"]
    # The pruned variants are compared with the unpruned detector fine-tuned for the same steps (the control).
    control = records["custom/student/finetuned/eager"]
    assert pruned["baseline"] == control["id"] and control["baseline"] == base["id"]
    assert pruned["config"]["finetune_steps"] == control["config"]["finetune_steps"] == 2
    assert control["macs"] == base["macs"] and control["train_seconds"] > 0
    assert combined["technique"] == "combined" and combined["baseline"] == "custom/student/finetuned/ort-fp32"
    assert combined["size_bytes"] < records["custom/student/ort-int8"]["size_bytes"] < base["size_bytes"]
    assert all(0.0 <= record["map"] <= 1.0 for record in records.values())
    assert combined["config"]["dataset"] == data.name and combined["config"]["study"]["finetune_steps"] == 2
    for axis in ("latency", "size", "macs"):
        assert (out / "figures" / f"pareto_{axis}.png").stat().st_size > 10_000
    assert not (out / "work").exists()  # the fine-tunes' checkpoints go once every record is written
    # Another study in the same results file survives a rerun; other settings are refused rather than mixed in,
    # and --restart replaces this study's records.
    other = dict(base, id="custom/other/eager", baseline=None, paired_latency=None)
    document = read_results(out)
    document["records"].append(other)
    (out / "results.json").write_text(json.dumps(document))
    changed = arguments[:-2] + ["--calibration-images", "2"]
    assert main(changed) == 2
    assert "calibration_images 4 there, 2 now" in capsys.readouterr().err
    assert main(changed + ["--restart"]) == 0
    rerun = read_results(out)["records"]
    assert len(rerun) == 9 and "custom/other/eager" in [record["id"] for record in rerun]
    assert {record["config"]["study"]["calibration_images"] for record in rerun
            if record["id"].startswith("custom/student/")} == {2}


@pytest.mark.slow
def test_an_interrupted_study_keeps_its_records_and_resumes(fine_tuned, tmp_path, monkeypatch, capsys):
    from compresskit.harness.variant import Study

    checkpoint, data = fine_tuned
    out = tmp_path / "reports"
    arguments = ["study", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--finetune-steps", "2", "--runs", "3", "--calibration-images", "4"]
    measure = Study.measure

    def interrupted_at_the_pruned_variant(self, detector, record_id, *args, **kwargs):
        if record_id == "custom/student/structured/ort-fp32":
            raise KeyboardInterrupt
        return measure(self, detector, record_id, *args, **kwargs)

    monkeypatch.setattr(Study, "measure", interrupted_at_the_pruned_variant)
    assert main(arguments) == 130
    assert "6 records of this study are kept" in capsys.readouterr().err
    first = {record["id"]: record for record in read_results(out)["records"]}
    assert len(first) == 6 and "custom/student/structured/eager" in first
    assert list((out / "work").glob("*/last.pt"))  # the fine-tunes can resume

    monkeypatch.setattr(Study, "measure", measure)
    assert main(arguments) == 0
    assert "resuming the study" in capsys.readouterr().out
    second = {record["id"]: record for record in read_results(out)["records"]}
    assert len(second) == 8
    for record_id, record in first.items():  # kept as they were, not measured again
        assert second[record_id] == record
    assert second["custom/student/structured/ort-int8"]["baseline"] == "custom/student/finetuned/ort-fp32"
    assert not (out / "work").exists()


def test_study_refuses_a_dataset_with_errors_and_writes_nothing(fine_tuned, tmp_path, capsys):
    checkpoint, data = fine_tuned
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        document = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        if split == "val":
            document["annotations"][0]["category_id"] = 42  # a category the file does not define
        (broken / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
        (broken / split).symlink_to(data / split, target_is_directory=True)
    out = tmp_path / "reports"
    code = main(["study", "--checkpoint", str(checkpoint), "--data", str(broken), "--out", str(out)])
    message = capsys.readouterr().err
    assert code == 2 and "42" in message and "instances_val.json" in message
    assert not out.exists()
    code = main(["train", "--preset", "student", "--data", str(broken), "--out", str(tmp_path / "ft")])
    assert code == 2 and "42" in capsys.readouterr().err and not (tmp_path / "ft").exists()


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory) -> tuple[Path, Path]:
    """Like a phone export: large landscape photos (1024x686), category id 0, an unused category; a student
    fine-tuned on them for two steps. ``(checkpoint, dataset folder)``."""
    root = tmp_path_factory.mktemp("photos")
    annotations = write_example_export(root / "export", images=12, sizes=((1024, 686),))
    split_dataset(annotations, root / "export" / "images", root / "split", SplitConfig(val_fraction=0.25, seed=0))
    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0)
    checkpoint = train_preset("student", root / "ft", data_dir=root / "split", config=config,
                              max_iters_per_epoch=2, progress=False, init="shipped")
    return checkpoint, root / "split"


def test_macs_are_counted_at_what_the_core_sees_not_at_the_photo_size(large_photos, tmp_path, capsys):
    from compresskit.data import load_split
    from compresskit.engine import make_loader
    from compresskit.harness import Study
    from compresskit.measure import count_macs
    from compresskit.models import load_checkpoint
    from compresskit.models.core import ExportableCore, core_input_size, example_batch

    checkpoint, data = large_photos
    detector, label_map, _ = load_checkpoint(checkpoint)
    val_set = load_split("val", data, label_map=label_map)
    image = val_set[0][0]
    assert tuple(image.shape[-2:]) == (686, 1024)
    # The detector's transform scales the long side to 320 and pads to a multiple of 32.
    assert core_input_size(detector, image) == (224, 320)
    at_core = count_macs(ExportableCore(detector), example_batch((224, 320)))
    at_photo = count_macs(ExportableCore(detector), example_batch((686, 1024)))
    assert at_photo > 8 * at_core

    # evaluate and a study's record give the same number, and say at which size it was counted.
    assert main(["evaluate", "--preset", "student", "--checkpoint", str(checkpoint), "--data", str(data),
                 "--json", str(tmp_path / "metrics.json")]) == 0
    printed = capsys.readouterr().out
    assert f"{at_core:,}" in printed and "224 x 320" in printed
    assert json.loads((tmp_path / "metrics.json").read_text())["macs"] == at_core
    study = Study(lesson="test", model="student", profile="custom", runs=2, label_map=label_map,
                  val_loader=make_loader(val_set, batch_size=2, train=False))
    record = study.measure(detector, "photos/student/eager", technique="baseline", evaluate_map=False)
    assert record["macs"] == at_core and record["macs_input"] == [224, 320]
    assert record["latency_ms"]["input"] == [686, 1024]  # latency is end to end, from the photo itself


def test_messages_on_your_own_data_name_the_cause_and_the_next_command(large_photos, tiny_embedded, tmp_path,
                                                                      capsys):
    checkpoint, data = large_photos
    export = data.parent / "export"
    # The raw export where a split folder belongs.
    assert main(["train", "--preset", "student", "--data", str(export), "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert "is not a split folder" in err and "annotations.json" in err and "compresskit data split" in err
    assert not (tmp_path / "ft").exists()
    # A checkpoint of one preset passed as another: refused, naming the right one.
    assert main(["evaluate", "--preset", "teacher", "--checkpoint", str(checkpoint), "--data", str(data)]) == 2
    assert "holds a student detector, not a teacher: pass --preset student" in capsys.readouterr().err
    # A file that is no checkpoint: no advice to load it unsafely.
    assert main(["study", "--checkpoint", str(data / "manifest.json"), "--data", str(data), "--out",
                 str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch file" in err and "weights_only" not in err and not (tmp_path / "study").exists()
    # A detector trained on other categories: both sets named, the dataset not blamed.
    assert main(["evaluate", "--preset", "student", "--checkpoint", str(checkpoint), "--data",
                 str(tiny_embedded)]) == 2
    err = capsys.readouterr().err
    assert "disagree on categories" in err and "0 disc" in err and "add it to" not in err


def test_a_tiny_val_split_is_warned_with_the_difference_it_can_resolve(tmp_path, capsys):
    annotations = write_example_export(tmp_path / "export", images=48)
    assert main(["data", "split", str(annotations), "--images", str(tmp_path / "export" / "images"), "--out",
                 str(tmp_path / "split"), "--val-fraction", "0.05"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    val = manifest["splits"]["val"]
    assert val["images"] < 25
    assert f"val has only {val['images']} images ({val['boxes']} boxes)" in out
    assert f"about {100 / val['boxes']:.1f} mAP points" in out


@pytest.mark.slow
def test_study_with_auto_measures_each_int8_runtime_and_marks_the_pick(fine_tuned, tmp_path, capsys):
    checkpoint, data = fine_tuned
    out = tmp_path / "reports"
    arguments = ["study", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--finetune-steps", "0", "--runs", "3", "--calibration-images", "4", "--val-images", "4",
                 "--runtime", "auto", "--max-drop", "100"]
    assert main(arguments) == 0
    records = {record["id"]: record for record in read_results(out)["records"]}
    # own images come in many sizes: only runtimes whose int8 core runs any size are candidates (not PT2E)
    for prefix in ("custom/student/", "custom/student/structured/"):
        candidates = {f"{prefix}int8/ort-int8", f"{prefix}int8/ov-int8"}
        assert candidates <= set(records) and f"{prefix}ort-int8" not in records
        chosen = [records[i] for i in candidates if records[i]["config"].get("chosen")]
        assert len(chosen) == 1 and chosen[0]["config"]["auto"]["picked"] == chosen[0]["runtime"]
        fastest = max(chosen[0]["config"]["auto"]["candidates"], key=lambda candidate: candidate["speedup"])
        assert chosen[0]["runtime"] == fastest["runtime"]  # a 100-point budget keeps every candidate
    assert records["custom/student/int8/ov-int8"]["baseline"] == "custom/student/ort-fp32"
    assert main(arguments[:-4] + ["--runtime", "torch-compile"]) == 2  # its one export shape
    assert "runs images of any size" in capsys.readouterr().err
