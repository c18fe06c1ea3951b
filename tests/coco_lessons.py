"""What the coco-profile lesson tests share: every lesson runs to its end under ``COMPRESSKIT_PROFILE=coco``,
offline: a COCO-shaped local install, small subset recipes and torchvision weight files with random values
(``offline_coco``).
Every cell runs; a cell tagged ``accuracy-claim`` asserts what the real pretrained weights achieve, so only its
AssertionError is tolerated here (random weights cannot meet it); any other error fails the test. Each record says
the profile it was measured on: ``coco``, or ``embedded`` for a study whose detectors exist for the embedded data
only (``harness.coverage``), which the lesson then says, or ``custom`` for lesson 07, which measures the export it
writes whatever the profile (the coco profile's stand-in weights give its third init, ``coco-pretrained``, a
file to start from)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nbformat
from nbclient import NotebookClient

from offline_coco import offline_coco_environment

from compresskit.report import read_results

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ACCURACY_CLAIM = "accuracy-claim"


# lesson -> (profiles its records name: none when it writes no records, stand-in images). Lesson 01 draws the
# predictions of val images 3, 7 and 11 (48 images: 12 in val); lesson 08's search wants 200 val boxes before it
# starts (320 images: 80 in val).
LESSONS = {"00_setup_and_data": (set(), 48), "01_baseline_detectors": ({"coco"}, 48),
           "02_pruning": ({"coco"}, 48), "03_quantization": ({"coco"}, 48), "04_distillation": (set(), 48),
           "05_lightweight_backbones": (set(), 48), "06_combined_pipeline": ({"embedded"}, 48),
           "07_your_own_dataset": ({"custom"}, 48),  # its own export: the coco profile changes only its third init
           "08_compression_under_a_budget": (set(), 320)}  # 08's search writes into a scratch folder
LEFT_FOR_EMBEDDED = {"04_distillation", "05_lightweight_backbones", "06_combined_pipeline"}  # harness.coverage


def coco_environments(tmp_path_factory) -> Callable[[int], dict[str, str]]:
    """The stand-in's environment for a number of images, built once per size (a test module's fixture)."""
    built: dict[int, dict[str, str]] = {}

    def environment(images: int) -> dict[str, str]:
        if images not in built:
            # Random weights: the mechanics, at 128 px (a sixth of the pixels of 320 px).
            built[images] = offline_coco_environment(tmp_path_factory.mktemp(f"offline-coco-{images}"), images=images)
            built[images]["COMPRESSKIT_COCO_IMAGE_SIZE"] = "128"
        return built[images]

    return environment


def _text_outputs(notebook) -> str:
    return "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))


def unexpected_errors(notebook) -> list[str]:
    """Errors of an executed notebook, except AssertionErrors in cells tagged ``accuracy-claim``."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type != "error":
                continue
            if output.ename == "AssertionError" and ACCURACY_CLAIM in cell.metadata.get("tags", []):
                continue
            found.append(f"cell {index}: {output.ename}: {output.evalue}")
    return found


def run_under_coco(lesson: str, offline_coco, tmp_path: Path, monkeypatch) -> None:
    """Execute ``lesson`` under the stand-in and check its errors, records and notes (see the module doc)."""
    profiles, images = LESSONS[lesson]
    for name, value in offline_coco(images).items():
        monkeypatch.setenv(name, value)  # the kernel starts with this process's environment
    monkeypatch.setenv("COMPRESSKIT_REPORTS", str(tmp_path / "reports"))
    notebook = nbformat.read(NOTEBOOKS / f"{lesson}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    assert unexpected_errors(notebook) == []
    written = tmp_path / "reports" / "results.json"
    assert written.exists() == bool(profiles), f"{lesson} should write its records" if profiles else written
    if profiles:
        assert {record["profile"] for record in read_results(tmp_path / "reports")["records"]} == profiles
    if lesson in LEFT_FOR_EMBEDDED:  # the lesson said why its study left the coco profile
        assert "runs on the embedded profile" in _text_outputs(notebook)
    if lesson == "04_distillation":  # its section 5 distilled the coco pair itself, through the teacher's boxes
        assert "teacher: RetinaNet, student: SSD" in _text_outputs(notebook)
    if lesson == "08_compression_under_a_budget":  # its live search ran on the coco student
        assert "# compresskit search: student" in _text_outputs(notebook)
