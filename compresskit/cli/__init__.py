"""The ``compresskit`` console script: thin sub-commands over the package, arguments checked at the boundary.

A problem a user can fix (bad argument, unknown profile, missing path, bad data, no network) prints one message and
exits 2, never a traceback. Only the standard library and the light ``settings``/``errors`` load at the top, so
``--help`` answers at once; each command imports torch and friends when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from compresskit import settings
from compresskit.cli.arguments import (CHECKPOINTS_OUT, PATH_ERRORS, PATH_OPTIONS, PRESETS, REPRODUCE_OUT, LazyChoices,
                                       file_stem, kd_method, non_negative_int, open_fraction, part_ratio,
                                       positive_float, positive_int, pruning_ratio)
from compresskit.cli.commands import (_bench, _data_check, _data_coco, _data_coco_split, _data_embedded, _data_split,
                                      _distill, _evaluate, _figures, _prune, _reproduce, _study, _train,
                                      format_metrics, is_reference_folder)
from compresskit.cli.quantize import add_quantize_command
from compresskit.cli.search import add_search_command
from compresskit.errors import CompressKitError

__all__ = ["LazyChoices", "build_parser", "file_stem", "format_metrics", "is_reference_folder", "main",
           "non_negative_int", "part_ratio", "positive_int", "pruning_ratio"]


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default (options whose
    default is None say in words what happens without them) or the option is required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing_to_show = any(action.default is value for value in (None, False, argparse.SUPPRESS)) or \
            action.default == []
        if "default" in text or action.required or not action.option_strings or nothing_to_show:
            return text
        return f"{text} (default: %(default)s)"


def _command(commands: Any, name: str, summary: str, run: Callable[[argparse.Namespace], int] | None = None,
             description: str | None = None) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=description or summary,
                                 formatter_class=_HelpFormatter)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def _add_data_commands(commands: Any) -> None:
    data = _command(commands, "data", "make, download or check COCO-format datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    embedded = _command(data_commands, "embedded", "generate the embedded dataset (offline, deterministic)",
                        _data_embedded)
    embedded.add_argument("--out", type=Path, required=True, help="folder to write the COCO-format dataset into")
    embedded.add_argument("--seed", type=non_negative_int, default=0, help="one seed gives the same dataset")
    embedded.add_argument("--train-images", type=positive_int, default=2000, help="images in the train split")
    embedded.add_argument("--val-images", type=positive_int, default=300, help="images in the val split")
    coco = _command(data_commands, "coco", "build a COCO 2017 subset (download, or copy from a local install)",
                    _data_coco)
    coco.add_argument("--out", type=Path, required=True, help="folder to write the subset into")
    coco.add_argument("--split", choices=["train2017", "val2017"], required=True, help="COCO split to sample")
    coco.add_argument("--images", type=positive_int, required=True, help="number of images to take")
    coco.add_argument("--categories", nargs="+", metavar="NAME",
                      help="COCO category names to keep (default: all 80)")
    coco.add_argument("--seed", type=non_negative_int, default=0, help="seed of the image selection")
    coco.add_argument("--annotations-url", help="URL of annotations_trainval2017.zip (default: the official one)")
    coco.add_argument("--images-base-url", default="http://images.cocodataset.org",
                      help="replaces http://images.cocodataset.org in each image's coco_url (a mirror)")
    coco.add_argument("--coco-root", type=Path,
                      help="an existing local COCO 2017 install to copy from (default: download)")
    coco_split = _command(data_commands, "coco-split", "the coco profile's pinned train and val subsets as one "
                          "split folder (what train, prune, study and search take as --data)", _data_coco_split)
    coco_split.add_argument("--out", type=Path, required=True, help="the split folder to write")
    coco_split.add_argument("--coco-root", type=Path,
                            help="an existing local COCO 2017 install to copy from (default: $COMPRESSKIT_COCO_ROOT, "
                                 "else download)")
    check = _command(data_commands, "check", "validate a COCO-format dataset; list each problem and its fix",
                     _data_check, description="Validate a COCO-format dataset. Exit status 0: usable (warnings "
                                              "allowed); 1: errors, each listed with the record and the fix.")
    check.add_argument("annotations", type=Path, help="the COCO annotation JSON file")
    check.add_argument("--images", type=Path, required=True, help="folder that file_name entries are relative to")
    split = _command(data_commands, "split", "split one COCO file + image folder into the kit's train/val layout",
                     _data_split, description="Split a COCO export (one annotation file and its image folder) into "
                     "annotations/instances_{train,val}.json with train/ and val/ image folders, deterministic from "
                     "the seed, rarest category first into val, near-duplicate groups kept on one side. Runs "
                     "`data check` first and refuses a dataset with errors; images are linked or copied, never "
                     "moved; a manifest records what went where.")
    split.add_argument("annotations", type=Path, help="the COCO annotation JSON file")
    split.add_argument("--images", type=Path, required=True, help="folder that file_name entries are relative to")
    split.add_argument("--out", type=Path, required=True, help="a new (or empty) folder for the split dataset")
    split.add_argument("--val-fraction", type=open_fraction, default=0.2, help="share of the images put in val")
    split.add_argument("--seed", type=non_negative_int, default=0, help="one seed gives the same split")
    split.add_argument("--group-by", metavar="REGEX",
                       help="images whose file_name gives the same match (its first group, if any) stay on one side, "
                            r"e.g. '^(.+)_frame\d+' for video frames (default: every image alone)")
    split.add_argument("--copy", action="store_true", help="copy the images (default: hard links where possible)")


def _add_model_commands(commands: Any) -> None:
    train = _command(commands, "train", "train a detector: from scratch, or fine-tune a shipped/COCO one",
                     _train, description="Train a preset detector with its shipped recipe, or (--backbone) the "
                                         "teacher's FPN and FCOS head on a torchvision classification trunk with the "
                                         "backbone recipe; seeded. --init shipped fine-tunes the shipped preset "
                                         "on a dataset's own categories instead of starting from scratch; --init "
                                         "coco-pretrained fine-tunes the coco profile's COCO-pretrained torchvision "
                                         "detector for the preset (RetinaNet for the teacher, SSDlite for the "
                                         "student) on --data. It prints epochs x steps before it starts. "
                                         "Interrupted (Ctrl-C, a sleeping laptop, a killed job), the same command "
                                         "resumes from the last finished epoch: OUT/NAME-run/last.pt is written "
                                         "after every epoch and removed once the checkpoint is shipped; the "
                                         "checkpoint's metadata lists the epochs it resumed after. The shipped "
                                         "detectors learned the embedded dataset's synthetic shapes: on "
                                         "photographs --init shipped overfits early, so fine-tune from "
                                         "--init coco-pretrained there.")
    target = train.add_mutually_exclusive_group(required=True)
    target.add_argument("--preset", choices=PRESETS,
                        help="which preset detector to train (no default: give --preset or --backbone)")
    target.add_argument("--backbone", choices=LazyChoices("compresskit.backbones", "BACKBONES"),
                        help="train the teacher's design on this trunk, one of %(choices)s (no default: give --preset "
                             "or --backbone)")
    train.add_argument("--width-mult", type=positive_float,
                       help="width multiplier of the trunk, for backbones that have one (default: 1.0)")
    train.add_argument("--out", type=Path, default=CHECKPOINTS_OUT, help="folder for the checkpoint")
    train.add_argument("--data", type=Path, help="dataset folder (default: the embedded dataset)")
    train.add_argument("--init", choices=("scratch", "shipped", "coco-pretrained"), default="scratch",
                       help="--preset only. scratch: seeded random weights; shipped: start from the shipped "
                            "detector (weights that fit are kept, the class logits re-initialised for the dataset's "
                            "categories); coco-pretrained: fine-tune torchvision's COCO-pretrained detector of the "
                            "coco profile on --data (needs --data and its cached or downloadable weights, see "
                            "COMPRESSKIT_WEIGHTS; class-sized layers re-initialised)")
    train.add_argument("--epochs", type=positive_int,
                       help="override the recipe's epochs (default: the recipe's; with --data, enough epochs for at "
                            f"least {settings.MIN_OWN_DATA_STEPS} optimiser steps on that dataset, printed before "
                            "training)")
    train.add_argument("--max-iters", type=positive_int,
                       help="cap iterations per epoch for a smoke run (default: no cap)")

    prune = _command(commands, "prune", "structurally prune a shipped detector and fine-tune it", _prune)
    prune.add_argument("--preset", choices=PRESETS, default="teacher", help="which shipped detector to prune")
    prune.add_argument("--ratio", type=pruning_ratio,
                       help="fraction of channels to remove, in [0, 1) (default: the shipped recipe's)")
    prune.add_argument("--part-ratio", type=part_ratio, action="append", default=[], metavar="PART=RATIO",
                       help="ratio for one part of the detector, e.g. layer4=0.6 (a wrong PART lists the valid "
                            "ones); repeatable (default: --ratio for every part)")
    prune.add_argument("--epochs", type=positive_int, help="fine-tune epochs (default: the shipped recipe's)")
    prune.add_argument("--checkpoint", type=Path, help="start from this checkpoint (default: the shipped one)")
    prune.add_argument("--out", type=Path, default=CHECKPOINTS_OUT, help="folder for the pruned checkpoint")
    prune.add_argument("--name", type=file_stem, default="teacher_pruned", help="checkpoint file name, without .pt")
    prune.add_argument("--data", type=Path, help="dataset folder (default: the embedded dataset)")
    prune.add_argument("--max-iters", type=positive_int,
                       help="cap iterations per epoch for a smoke run (default: no cap)")

    # const is not a string, so argparse hands it over as it is: True means "the kit's default for this detector".
    prune.add_argument("--kd", nargs="?", const=True, type=kd_method, metavar="METHOD",
                       help="fine-tune with distillation from the unpruned detector: logit, feature, both (FCOS "
                            "detectors) or boxes (any detector); --kd alone: both for FCOS, boxes for any other "
                            "(default: no distillation)")

    distill = _command(commands, "distill", "train a student with knowledge distillation from a teacher", _distill,
                       description="Train a student (same initialisation and data order as its own recipe) with "
                                   "distillation from a teacher, and write the checkpoint with its per-step log. "
                                   "logit, feature and both pair FCOS heads location by location (the embedded "
                                   "detectors); boxes adds the teacher's confident detections that no label covers "
                                   "to each step's targets, between any two detectors with the same categories "
                                   "(the coco profile's RetinaNet and SSDlite). --method none is the equal-budget "
                                   "control.")
    distill.add_argument("--student", choices=PRESETS, default="student", help="preset trained")
    distill.add_argument("--init", choices=("scratch", "shipped", "coco-pretrained"), default="scratch",
                         help="where the student starts, as `train --init` (coco-pretrained needs --data)")
    distill.add_argument("--teacher", choices=PRESETS, default="teacher", help="shipped preset that teaches")
    distill.add_argument("--teacher-checkpoint", type=Path, help="teacher checkpoint (default: the shipped one)")
    distill.add_argument("--method", choices=("none", "logit", "feature", "both", "boxes"), default="both",
                         help="what is distilled")
    distill.add_argument("--box-score", type=positive_float,
                         help="--method boxes: the lowest teacher score that becomes a target, at most 1 (default: "
                              "KDConfig's)")
    distill.add_argument("--temperature", type=positive_float, help="distillation temperature (default: KDConfig's)")
    distill.add_argument("--logit-weight", type=positive_float, help="weight of the logit terms (default: KDConfig's)")
    distill.add_argument("--feature-weight", type=positive_float,
                         help="weight of the feature term (default: KDConfig's)")
    distill.add_argument("--epochs", type=positive_int, help="override the recipe's epochs (default: the recipe's)")
    distill.add_argument("--warmup-iters", type=non_negative_int,
                         help="override the recipe's warm-up steps, e.g. for runs shorter than it (default: the "
                              "recipe's)")
    distill.add_argument("--out", type=Path, default=Path("runs/distill"), help="folder for the checkpoint")
    distill.add_argument("--name", type=file_stem, help="checkpoint file name, without .pt (default: "
                                                        "student_kd_METHOD)")
    distill.add_argument("--data", type=Path, help="dataset folder (default: the embedded dataset)")
    distill.add_argument("--max-iters", type=positive_int,
                         help="cap iterations per epoch for a smoke run (default: no cap)")

    add_quantize_command(commands, _command)
    add_search_command(commands, _command)

    evaluate = _command(commands, "evaluate", "COCO mAP (0-1), params and MACs of a detector", _evaluate,
                        description="COCO mAP, params and MACs of a detector on a val split. mAP is printed as "
                                    "COCOeval's 0-1 numbers, labelled 'mAP (0-1)'; --json writes the same values.")
    evaluate.add_argument("--preset", choices=PRESETS, required=True, help="which detector")
    evaluate.add_argument("--data", type=Path, help="dataset folder (default: the embedded dataset)")
    evaluate.add_argument("--checkpoint", type=Path, help="a checkpoint to load (default: the shipped one)")
    evaluate.add_argument("--json", type=Path, help="also write the metrics to this file (default: print only)")


def _add_study_commands(commands: Any) -> None:
    bench = _command(commands, "bench", "measure the baseline records of the teacher and student",
                     _bench, description="Measure the baseline records (teacher and student, torch eager and ONNX "
                                         "Runtime fp32) and write them into results.json. The printed table shows "
                                         "mAP x100, as its header says; the records keep COCOeval's 0-1 values.")
    bench.add_argument("--json", type=Path, help="also write the records to this file (default: none)")
    bench.add_argument("--reports", type=Path, help="results folder (default: $COMPRESSKIT_REPORTS or runs/)")
    bench.add_argument("--runs", type=positive_int, default=30, help="timed latency runs per record")

    study = _command(commands, "study", "compress and measure a detector on your own dataset",
                     _study, description="On a checkpoint and the kit-layout dataset it was trained on: the "
                     "detector in torch eager and ONNX Runtime fp32, static int8, structured pruning with a short "
                     "fine-tune, and pruning + int8; every variant timed against the fp32 detector of its runtime. "
                     "The unpruned detector gets the same fine-tune (the control), and the pruned variants are "
                     "compared with it, so more training is never credited to pruning. "
                     "Writes OUT/results.json (merged, one record at a time), OUT/figures/pareto_*.png and the ONNX "
                     "files in OUT/artifacts/. Interrupted, the same command resumes: finished records are kept "
                     "and the fine-tunes go on from their last epoch (OUT/work/, removed when the study ends).")
    study.add_argument("--checkpoint", type=Path, required=True, help="the fine-tuned detector (a kit .pt file)")
    study.add_argument("--data", type=Path, required=True,
                       help="its dataset in the kit's layout (what `compresskit data split` writes)")
    study.add_argument("--out", type=Path, required=True, help="folder for results.json, figures/ and artifacts/")
    study.add_argument("--ratio", type=open_fraction, default=0.5, help="share of channels pruned per layer")
    study.add_argument("--finetune-steps", type=non_negative_int, default=200,
                       help="fine-tuning steps after pruning (0: measure the cut alone)")
    study.add_argument("--calibration-images", type=positive_int, default=32, help="int8 calibration images")
    study.add_argument("--val-images", type=positive_int, help="evaluate on the first N val images (default: all)")
    study.add_argument("--runs", type=positive_int, default=30, help="timed latency pairs per record")
    study.add_argument("--runtime", default="onnxruntime", metavar="RUNTIME",
                       help="the int8 runtime: onnxruntime (QDQ), openvino (NNCF), or auto: each of them timed "
                            "against the ONNX Runtime fp32 detector, the fastest within --max-drop mAP points "
                            "marked chosen in its record (default: onnxruntime)")
    study.add_argument("--max-drop", "--max-map-drop", dest="max_drop", type=float, default=1.0, metavar="POINTS",
                       help="with --runtime auto or --search: the mAP points a variant may lose against the fp32 "
                            "detector (0-100 scale, above 0; default: 1.0)")
    study.add_argument("--search", type=positive_float, metavar="MINUTES",
                       help="after the study, run `compresskit search` on the same checkpoint and data for this "
                            "many minutes, within --max-drop, into OUT/search (default: no search)")
    study.add_argument("--restart", action="store_true",
                       help="measure every variant again instead of resuming; needed to replace a study in OUT "
                            "that was made with other settings (default: resume, keeping finished records)")

    reproduce = _command(commands, "reproduce", "rerun every study; write results.json and figures",
                         _reproduce, description="Rerun the lessons' studies whole and write results.json, "
                                                 "figures/ and summary.md (every record, and the lessons' targets "
                                                 "marked met, missed or not measured). The committed reports/ "
                                                 "folder's results.json is written only with --update-reference. "
                                                 "--check then compares results.json with the reference record by "
                                                 "record (mAP within 0.005, MACs/params exact, size within 1 %; "
                                                 "latency shown, never failing) and exits 1 naming each failing "
                                                 "record and field; --skip-run --check checks an existing OUT "
                                                 "without rerunning. Each study's records are written when it "
                                                 "ends: interrupted, the same command resumes with the next "
                                                 "study.")
    reproduce.add_argument("--out", type=Path, default=REPRODUCE_OUT,
                           help="folder for results.json, figures/ and summary.md; the committed reports/ needs "
                                "--update-reference")
    reproduce.add_argument("--only", nargs="+", metavar="STUDY",
                           choices=LazyChoices("compresskit.harness.reproduce", "STUDIES"),
                           help="run only these studies, among %(choices)s (default: all)")
    reproduce.add_argument("--runs", type=positive_int, default=30, help="timed latency runs per record")
    reproduce.add_argument("--update-reference", action="store_true",
                           help="allow replacing the committed reference results (default: refuse)")
    reproduce.add_argument("--profile", choices=settings.PROFILES,
                           help=f"data profile of the studies (default: ${settings.PROFILE_ENV}, else embedded)")
    reproduce.add_argument("--skip-run", action="store_true",
                           help="run no study: redraw OUT/figures/ and OUT/summary.md from the OUT/results.json "
                                "already there (default: run the studies first)")
    reproduce.add_argument("--check", action="store_true",
                           help="compare OUT/results.json with the reference afterwards; exit 1 on a mismatch "
                                "(default: no check)")
    reproduce.add_argument("--restart", action="store_true",
                           help="run every study again instead of resuming an interrupted run in OUT (default: "
                                "resume, keeping the studies it finished)")
    reproduce.add_argument("--reference", type=Path,
                           help="folder of the reference results.json for --check (default: the repository's "
                                "reports/)")

    figures = _command(commands, "figures", "redraw every figure from a results.json alone", _figures,
                       description="Redraw pareto_{latency,size,macs}.png, sparsity.png, calibration.png, "
                                   "distillation.png, backbones.png and combined.png from a results file alone, "
                                   "running nothing; a figure whose records are not in the file is skipped, and "
                                   "said so.")
    figures.add_argument("results", type=Path, help="a results.json, or the folder holding it")
    figures.add_argument("--out", type=Path, required=True, help="folder for the PNG files")


def build_parser() -> argparse.ArgumentParser:
    """The ``compresskit`` argument parser: one sub-command per job, every option with its default in its help."""
    from compresskit import __version__

    parser = argparse.ArgumentParser(
        prog="compresskit", formatter_class=_HelpFormatter,
        description="Model compression for object detection, measured.",
        epilog=f"The data profile comes from ${settings.PROFILE_ENV} ({' or '.join(settings.PROFILES)}; default "
               f"embedded). Exit status 2 means a problem you can fix; the message says which.")
    parser.add_argument("--version", action="version", version=f"compresskit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(commands)
    _add_model_commands(commands)
    _add_study_commands(commands)
    return parser


def _is_user_path(exc: OSError, args: argparse.Namespace) -> bool:
    """Whether the failed path is one the user gave, a file inside it, or a folder above it."""
    given = [value.resolve() for value in (getattr(args, name, None) for name in PATH_OPTIONS)
             if isinstance(value, Path)]
    for filename in (exc.filename, exc.filename2):
        if isinstance(filename, (str, bytes, os.PathLike)):
            # A folder above the given path counts too: mkdir(parents=True) fails on the first one it cannot make.
            failed = Path(os.fsdecode(filename)).resolve()
            if any(failed == path or path in failed.parents or failed in path.parents for path in given):
                return True
    return False


def _fail(message: str) -> int:
    print(f"compresskit: error: {message}", file=sys.stderr)
    return 2


def _collect_half_built_progress_bars() -> None:
    """A Ctrl-C that lands inside tqdm's constructor leaves a bar without its position; when that bar is collected,
    its ``__del__`` reports an AttributeError ("Exception ignored in ..."), possibly under the command's last line.
    That report is silenced (the bar never drew anything; every other one still prints) and the bar collected now."""
    import gc

    report = sys.unraisablehook

    def hook(unraisable) -> None:
        where = getattr(unraisable.object, "__qualname__", "")
        if not (isinstance(unraisable.exc_value, AttributeError) and where.endswith("tqdm.__del__")):
            report(unraisable)
    sys.unraisablehook = hook
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    """Run the ``compresskit`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    Returns:
        The exit status: 0 done, 1 ``data check`` found errors or ``reproduce --check`` mismatches, 2 a problem
        the user can fix (one message on stderr), 130 interrupted.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and --version (status 0), argparse's one-line usage errors (status 2)
        return int(exc.code or 0)
    try:
        settings.profile()  # loaders read it deep inside a command; a typo must stop the command before it starts
        return args.run(args)
    except CompressKitError as exc:
        return _fail(str(exc))
    except PATH_ERRORS as exc:
        if not _is_user_path(exc, args):
            raise  # a path the kit chose itself: a bug, keep its traceback
        return _fail(f"{exc.filename}: {exc.strerror or type(exc).__name__}; check the path given on the "
                     "command line")
    except KeyboardInterrupt as exc:  # a training run says how to resume it
        _collect_half_built_progress_bars()
        print(f"compresskit: interrupted; {exc or 'completed files are kept, partial ones were not written'}",
              file=sys.stderr)
        return 130

