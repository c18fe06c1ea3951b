"""``compresskit reproduce``: every study, headless, through the same functions the lessons call.

Writes ``OUT/results.json``, ``OUT/figures/*.png`` (:func:`~compresskit.harness.figures.draw_figures`) and
``OUT/summary.md`` (every record and the lessons' targets), and prints a table of every record; :func:`check_results`
compares a results file with the committed reference. Within one run each distinct variant is evaluated once
(one :class:`~compresskit.harness.reuse.ReuseCache` shared by every study); every record's latency is still
measured in its own study. The committed reference (``reports/`` of the repository) is only written on purpose
(``update_reference=True``). Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compresskit.data.files import atomic_write_json
from compresskit.errors import CompressKitError
from compresskit.harness.backbones import backbone_study
from compresskit.harness.baselines import baseline_study
from compresskit.harness.combined import combined_study
from compresskit.harness.coverage import COCO_GAPS
from compresskit.harness.distillation import distillation_study
from compresskit.harness.figures import draw_figures
from compresskit.harness.pruning import pruning_study
from compresskit.harness.quantization import quantization_study, sensitivity_study
from compresskit.harness.summary import write_summary
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.search import reference_search_study
from compresskit.harness.variant import Study

if TYPE_CHECKING:
    from compresskit.report import CheckOutcome


def _reference_search(**settings) -> Study:
    """The committed reference search's chosen variant, re-measured from the artifact it shipped."""
    if REFERENCE_DIR is None:
        raise CompressKitError("the search study re-measures the reference search committed with the repository "
                               "(reports/search); run reproduce from a checkout, or leave the search study out "
                               "(--only ...)")
    return reference_search_study(reference=REFERENCE_DIR / "search", **settings)


# name -> study function; each takes (profile, val_images, runs, progress, log, reuse) and returns a Study.
STUDIES: dict[str, Callable[..., Study]] = {"baselines": baseline_study, "pruning": pruning_study,
                                            "quantization": quantization_study,
                                            "quantization_sensitivity": sensitivity_study,
                                            "distillation": distillation_study, "backbones": backbone_study,
                                            "combined": combined_study, "search": _reference_search}
DEFAULT_OUT = Path("runs") / "reproduce"
PROGRESS_NAME = "reproduce-progress.json"  # studies an unfinished run has done (see reproduce)


def _repository_reports() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root / "reports" if (root / "pyproject.toml").is_file() and (root / "reports").is_dir() else None


REFERENCE_DIR = _repository_reports()  # the committed reference, when the package runs from a checkout


def is_reference(out: Path | str) -> bool:
    """True when ``out`` is the committed reference folder."""
    return REFERENCE_DIR is not None and Path(out).resolve() == REFERENCE_DIR.resolve()


def reproduce(out: Path | str = DEFAULT_OUT, *, studies: list[str] | tuple[str, ...] | None = None,
              profile: str | None = None, runs: int = 30, val_images: int | None = None, progress: bool = True,
              update_reference: bool = False, restart: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run ``studies`` (default: all of ``STUDIES``) into ``out/results.json``, then :func:`write_derived`.

    Each study's records are written as soon as it ends, and ``out/reproduce-progress.json`` lists the studies
    done (it goes when the run ends): an interrupted run, started again with the same settings, keeps the
    finished studies and goes on with the next.

    Args:
        out: results folder; the committed reference folder only with ``update_reference=True``.
        profile: data profile (default ``COMPRESSKIT_PROFILE``).
        runs: timed runs per record; val_images: evaluate on the first N val images (None: all).
        restart: run every study again even where an interrupted run with the same settings finished it; needed
            to start over after an interrupted run with other settings.
    Returns:
        The path of the results file.

    Raises:
        CompressKitError: an unknown study, the reference folder without ``update_reference``, or an interrupted
            run with other settings in ``out`` (and not ``restart``).
    """
    from compresskit.report import format_records_table, read_results, write_records

    out = Path(out)
    if is_reference(out) and not update_reference:
        raise CompressKitError(f"{out} holds the committed reference results; pass --update-reference to "
                               "replace them, or choose another --out")
    names = list(studies or STUDIES)
    unknown = [name for name in names if name not in STUDIES]
    if unknown:
        raise CompressKitError(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    from compresskit.settings import profile as current_profile

    if studies is None and (profile or current_profile()) != "embedded":
        # Every study by default: those without detectors for this profile are left out, each saying why (asked
        # for by name with --only, they stop with their own message instead).
        for name in [name for name in names if name in COCO_GAPS]:
            log(f"{name} study left out: {COCO_GAPS[name].reason()}")
            names.remove(name)

    settings = {"studies": names, "profile": profile or current_profile(), "runs": runs, "val_images": val_images}
    progress_file = out / PROGRESS_NAME
    done = {} if restart else _finished_studies(progress_file, settings)
    kept = {record["id"]: record for record in read_results(out)["records"]} if done else {}
    records: list[dict] = []
    reuse = ReuseCache()  # the fp32 teacher is in every study: its val pass runs once, not once per study
    for index, name in enumerate(names, start=1):
        if name in done and all(record_id in kept for record_id in done[name]):
            records += [kept[record_id] for record_id in done[name]]
            log(f"[{index}/{len(names)}] {name}: {len(done[name])} records kept from the interrupted run")
            continue
        started = time.perf_counter()
        log(f"[{index}/{len(names)}] {name} study ...")
        sizes = {} if val_images is None else {"val_images": val_images}  # else each study's own default
        try:
            study = STUDIES[name](profile=profile, runs=runs, progress=progress, log=log if progress else None,
                                  reuse=reuse, **sizes)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{len(done)} finished studies are kept in {out}; rerun the same command to "
                                    f"resume with the {name} study") from None
        records += study.records
        write_records(study.records, reports_dir=out)
        done[name] = [record["id"] for record in study.records]
        atomic_write_json(progress_file, {"settings": settings, "done": done}, indent=1)
        log(f"[{index}/{len(names)}] {name}: {len(study.records)} records in "
            f"{time.perf_counter() - started:.0f} s")
    results = out / "results.json"
    progress_file.unlink(missing_ok=True)
    log(format_records_table(records))
    write_derived(out, log=log)  # an --only run merges into the file: draw and summarise all it now holds
    return results


def _finished_studies(progress_file: Path, settings: dict) -> dict[str, list[str]]:
    """Studies an interrupted run with the same settings finished (name -> its record ids); a CompressKitError
    when the interrupted run had other settings."""
    try:
        progress = json.loads(progress_file.read_text(encoding="utf-8"))
        earlier, done = progress["settings"], dict(progress["done"])
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        raise CompressKitError(f"{progress_file} is not a progress file of compresskit reproduce; delete it, or "
                               "add --restart") from None
    if earlier != json.loads(json.dumps(settings)):
        differing = ", ".join(f"{key} {earlier.get(key)!r} there, {value!r} now" for key, value in settings.items()
                              if earlier.get(key) != value)
        raise CompressKitError(f"{progress_file.parent} holds an interrupted reproduce run with other settings "
                               f"({differing}); rerun with those to resume it, add --restart to run every study "
                               "again, or choose another --out")
    return done


def write_derived(out: Path | str, log: Callable[[str], None] = print) -> Path:
    """Redraw ``out/figures/`` and rewrite ``out/summary.md`` from ``out/results.json`` alone (no study runs).

    Returns:
        The path of the summary.
    """
    from compresskit.report import read_results

    out = Path(out)
    if not (out / "results.json").is_file():
        raise CompressKitError(f"no results.json in {out}; run `compresskit reproduce --out {out}` first")
    document = read_results(out)
    draw_figures(document, out / "figures", log=log)
    summary = write_summary(document, out)
    log(f"results: {(out / 'results.json').resolve()}; figures: {(out / 'figures').resolve()}; "
        f"summary: {summary.resolve()}")
    return summary


def check_results(out: Path | str, reference_dir: Path | str | None = None) -> "CheckOutcome":
    """Compare ``out/results.json`` with ``reference_dir/results.json`` (default: the committed reference).

    Returns:
        The :class:`~compresskit.report.CheckOutcome` (see :func:`~compresskit.report.check_against_reference`).

    Raises:
        CompressKitError: either results file is missing (the message says which and how to get it).
    """
    from compresskit.report import check_against_reference, read_results

    reference = Path(reference_dir) if reference_dir is not None else REFERENCE_DIR
    if reference is None:
        raise CompressKitError("no committed reference here (the package does not run from a checkout); pass "
                               "--reference DIR, a folder holding the reference results.json")
    for folder, what in ((Path(out), "results to check"), (reference, "reference results")):
        if not (folder / "results.json").is_file():
            raise CompressKitError(f"no results.json in {folder} ({what}); run `compresskit reproduce --out "
                                   f"{folder}` or give another folder")
    return check_against_reference(read_results(out), read_results(reference))
