"""``compresskit reproduce``: every study, headless, through the same functions the lessons call.

Writes ``OUT/results.json`` and ``OUT/figures/*.png`` and prints a table of every record. The committed reference
(``reports/`` of the repository) is only written on purpose (``update_reference=True``).
Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from compresskit.harness.backbones import backbone_study
from compresskit.harness.baselines import baseline_study
from compresskit.harness.distillation import distillation_study
from compresskit.harness.pruning import pruning_study
from compresskit.harness.quantization import quantization_study, sensitivity_study
from compresskit.harness.variant import Study

# name -> study function; each takes (profile, val_images, runs, progress, log) and returns a Study.
STUDIES: dict[str, Callable[..., Study]] = {"baselines": baseline_study, "pruning": pruning_study,
                                            "quantization": quantization_study,
                                            "quantization_sensitivity": sensitivity_study,
                                            "distillation": distillation_study, "backbones": backbone_study}
DEFAULT_OUT = Path("runs") / "reproduce"


def _repository_reports() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root / "reports" if (root / "pyproject.toml").is_file() and (root / "reports").is_dir() else None


REFERENCE_DIR = _repository_reports()  # the committed reference, when the package runs from a checkout


def is_reference(out: Path | str) -> bool:
    """True when ``out`` is the committed reference folder."""
    return REFERENCE_DIR is not None and Path(out).resolve() == REFERENCE_DIR.resolve()


def reproduce(out: Path | str = DEFAULT_OUT, *, studies: list[str] | tuple[str, ...] | None = None,
              profile: str | None = None, runs: int = 30, val_images: int | None = None, progress: bool = True,
              update_reference: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run ``studies`` (default: all of ``STUDIES``) into ``out/results.json`` and redraw ``out/figures/``.

    Args:
        out: results folder; the committed reference folder only with ``update_reference=True``.
        profile: data profile (default ``COMPRESSKIT_PROFILE``).
        runs: timed runs per record; val_images: evaluate on the first N val images (None: all).
    Returns:
        The path of the results file.
    """
    from compresskit.errors import CompressKitError
    from compresskit.report import format_records_table, plot_pareto, read_results, write_records

    out = Path(out)
    if is_reference(out) and not update_reference:
        raise CompressKitError(f"{out} holds the committed reference results; pass --update-reference to "
                               "replace them, or choose another --out")
    names = list(studies or STUDIES)
    unknown = [name for name in names if name not in STUDIES]
    if unknown:
        raise CompressKitError(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    records: list[dict] = []
    for index, name in enumerate(names, start=1):
        started = time.perf_counter()
        log(f"[{index}/{len(names)}] {name} study ...")
        sizes = {} if val_images is None else {"val_images": val_images}  # else each study's own default
        study = STUDIES[name](profile=profile, runs=runs, progress=progress, log=log if progress else None, **sizes)
        records += study.records
        log(f"[{index}/{len(names)}] {name}: {len(study.records)} records in {time.perf_counter() - started:.0f} s")
    results = write_records(records, reports_dir=out)
    everything = read_results(results)["records"]  # an --only run merges into the file: draw all it now holds
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for axis in ("latency", "size", "macs"):
        figure = plot_pareto(everything, x=axis, title=f"mAP against {axis}, every measured variant")
        figure.savefig(figures / f"pareto_{axis}.png", dpi=120)
    log(format_records_table(records))
    log(f"results: {results.resolve()}; figures: {figures.resolve()}")
    return results
