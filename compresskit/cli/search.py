"""``compresskit search``: its arguments, what it runs and what it prints (``harness.search`` does the work).
Only the standard library loads at the top, so ``compresskit --help`` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from compresskit.cli.arguments import positive_int


def _budget(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of mAP points, e.g. 1.0, not {text!r}") from None


def add_search_command(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``search`` sub-command; ``command`` makes a sub-parser as the others are made."""
    search = command(commands, "search", "the fastest variant within a mAP budget, every technique",
                     _search, description="Chains of per-part structured pruning, a fine-tune with or without "
                     "distillation (and the BatchNorm head where the teacher has one), then int8 in every "
                     "registered runtime, proposed by Optuna and measured against the fp32 detector's ONNX Runtime "
                     "core in the same run. Cheap proxy first (a short fine-tune, a val slice), the full fine-tune "
                     "and the whole val split for the survivors. Writes OUT/results.json, OUT/search.db (resumable: "
                     "rerun the same command), OUT/front_<objective>.png, OUT/recipe.json, OUT/summary.md and the "
                     "chosen artifact in OUT/chosen/.")
    search.add_argument("--preset", default="teacher", help="the detector to compress (a preset)")
    search.add_argument("--checkpoint", type=Path, help="a checkpoint of that preset (default: the shipped one)")
    search.add_argument("--data", type=Path, metavar="SPLIT",
                        help="a dataset of your own (a `compresskit data split` folder) the checkpoint was "
                             "fine-tuned on (default: the profile's data)")
    search.add_argument("--max-map-drop", type=_budget, default=1.0, metavar="POINTS",
                        help="the budget: mAP points (0-100 scale) below the fp32 detector, above 0")
    search.add_argument("--objective", choices=("latency", "size", "macs"), default="latency",
                        help="what the chosen variant minimises")
    search.add_argument("--time-budget", type=_budget, default=60.0, metavar="MINUTES",
                        help="no new chain starts once less time is left than a chain takes")
    search.add_argument("--trials", type=positive_int, help="at most this many chains (default: as time allows)")
    search.add_argument("--runtimes", nargs="+", default=["auto"], metavar="RUNTIME",
                        help="int8 runtimes to try (default: auto, every registered one)")
    search.add_argument("--proxy-steps", type=positive_int, default=60, help="fine-tune steps of the cheap rung")
    search.add_argument("--full-steps", type=positive_int, default=300, help="fine-tune steps of the full rung")
    search.add_argument("--runs", type=positive_int, default=30, help="timed latency pairs per record")
    search.add_argument("--storage", metavar="URL",
                        help="an Optuna storage shared by several machines (e.g. postgresql://...; default: "
                             "sqlite in OUT)")
    search.add_argument("--restart", action="store_true",
                        help="start again instead of resuming OUT's search (default: resume it)")
    search.add_argument("--replay", type=Path, metavar="RECIPE",
                        help="rebuild the chain of a recipe.json and measure it (default: search)")
    search.add_argument("--out", type=Path, default=Path("runs/search"), help="output folder")


def _search(args: argparse.Namespace) -> int:
    from compresskit.harness.search import SearchConfig, replay, search

    if args.replay is not None:
        record = replay(args.replay, args.out, runs=args.runs, progress=True)
        paired = record["paired_latency"]
        print(f"{record['id']}: mAP x100 {100 * record['map']:.1f}, x{paired['speedup']:.2f} "
              f"[{paired['interval'][0]:.2f}-{paired['interval'][1]:.2f}] faster than {paired['baseline']}; "
              f"records in {args.out / 'results.json'}")
        return 0
    runtimes = "auto" if args.runtimes == ["auto"] else tuple(args.runtimes)
    config = SearchConfig(max_map_drop=args.max_map_drop, objective=args.objective,
                          time_budget_minutes=args.time_budget, max_trials=args.trials, runtimes=runtimes,
                          proxy_steps=args.proxy_steps, full_steps=args.full_steps, runs=args.runs)
    result = search(args.preset, args.out, config, checkpoint=args.checkpoint, data_dir=args.data,
                    storage=args.storage, restart=args.restart)
    return report_search(result)


def report_search(result) -> int:
    """Print where a search's front, summary, recipe and artifact are; the exit status: 1 when no variant stayed
    within the budget ahead of the fp32 detector (``compresskit search`` and ``compresskit study --search`` end
    alike)."""
    print(f"front: {result.files['front']}; summary: {result.files['summary']}")
    if result.chosen is None:
        print("no variant within the budget beats the fp32 detector; see the summary", flush=True)
        return 1
    print(f"chosen: {result.chosen['id']}; recipe: {result.files['recipe']}; artifact in {result.files['artifact']}")
    return 0
