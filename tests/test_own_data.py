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
