"""What each ``compresskit`` sub-command runs: a thin call into the package (imported when the command runs, so
``--help`` stays fast) and a short printed result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from compresskit.cli.arguments import REPRODUCE_OUT
from compresskit.errors import CompressKitError

def _data_embedded(args: argparse.Namespace) -> int:
    from compresskit.data.embedded import EmbeddedConfig, generate_embedded

    config = EmbeddedConfig(seed=args.seed, train_images=args.train_images, val_images=args.val_images)
    out = generate_embedded(args.out, config)
    print(f"embedded dataset (seed {args.seed}) ready in {out}")
    return 0


def _data_coco(args: argparse.Namespace) -> int:
    from compresskit.data.coco_subset import OFFICIAL_ANNOTATIONS_URL, SubsetRecipe, build_coco_subset

    recipe = SubsetRecipe(split=args.split, images=args.images, categories=args.categories or None, seed=args.seed)
    manifest = build_coco_subset(args.out, recipe, annotations_url=args.annotations_url or OFFICIAL_ANNOTATIONS_URL,
                                 images_base_url=args.images_base_url, coco_root=args.coco_root)
    print(f"COCO {args.split} subset of {args.images} images ready; manifest: {manifest}")
    return 0


def _data_coco_split(args: argparse.Namespace) -> int:
    from compresskit.data.coco_subset import write_profile_split

    out = write_profile_split(args.out, coco_root=args.coco_root)
    print(f"the coco profile's train and val subsets are a split folder in {out}; pass --data {out}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from compresskit.data.check import main_check

    return main_check(args.annotations, args.images)


def _data_split(args: argparse.Namespace) -> int:
    from compresskit.data.split import SplitConfig, split_dataset

    config = SplitConfig(val_fraction=args.val_fraction, seed=args.seed, group_by=args.group_by,
                         images="copy" if args.copy else "link")
    manifest = split_dataset(args.annotations, args.images, args.out, config, progress=True)
    for name, counts in manifest["splits"].items():
        print(f"{name:5s} {counts['images']:6d} images {counts['boxes']:7d} boxes in {counts['groups']} group(s)")
    if manifest["not_in_val"]:
        from compresskit.data.values import one_line

        names = one_line(", ".join(manifest["not_in_val"]), limit=400)  # category names are the dataset's text
        print(f"only one image group has boxes of {names}: kept in train, so val cannot measure them")
    from compresskit.data.split import small_val_warning

    warning = small_val_warning(manifest)
    if warning:
        print(warning)
    print(f"written to {args.out} (manifest.json records the split); train with --data {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    if args.backbone is not None:
        from compresskit.backbones import TRAIN_RECIPE_BACKBONE, train_backbone

        if args.init != "scratch":
            raise CompressKitError(f"--init {args.init} applies to --preset only: no backbone detector ships, "
                                   "and no COCO-pretrained one exists, for every trunk; drop --init or train a "
                                   "--preset")
        config = replace(TRAIN_RECIPE_BACKBONE, epochs=args.epochs or TRAIN_RECIPE_BACKBONE.epochs)
        checkpoint = train_backbone(args.backbone, args.out, config=config, data_dir=args.data,
                                    max_iters_per_epoch=args.max_iters, width_mult=args.width_mult)
    else:
        from compresskit.engine.recipes import TRAIN_RECIPES, train_preset

        if args.width_mult is not None:
            raise CompressKitError("--width-mult applies to --backbone only; a preset's widths are fixed")
        from compresskit.settings import MIN_OWN_DATA_STEPS

        config = TRAIN_RECIPES[args.preset]
        config = replace(config, epochs=args.epochs or config.epochs)
        # Your own data and no --epochs: at least MIN_OWN_DATA_STEPS steps, however few images it has.
        min_steps = MIN_OWN_DATA_STEPS if args.data is not None and args.epochs is None else None
        checkpoint = train_preset(args.preset, args.out, data_dir=args.data, config=config,
                                  max_iters_per_epoch=args.max_iters, init=args.init, min_steps=min_steps)
    print(f"checkpoint written to {checkpoint}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from compresskit.distill import DISTILL_RECIPE, KDConfig, distill_student

    overrides = {"temperature": args.temperature, "logit_weight": args.logit_weight,
                 "feature_weight": args.feature_weight, "box_score": args.box_score}
    kd_config = KDConfig(method=args.method, **{key: value for key, value in overrides.items() if value is not None})
    train_config = replace(DISTILL_RECIPE, epochs=args.epochs or DISTILL_RECIPE.epochs,
                           warmup_iters=DISTILL_RECIPE.warmup_iters if args.warmup_iters is None else args.warmup_iters)
    checkpoint = distill_student(args.out, method=args.method, student=args.student, teacher=args.teacher,
                                 kd_config=kd_config, train_config=train_config, data_dir=args.data,
                                 max_iters_per_epoch=args.max_iters, name=args.name,
                                 teacher_checkpoint=args.teacher_checkpoint, init=args.init)
    print(f"checkpoint written to {checkpoint}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from compresskit.prune import FINETUNE_RECIPE, PRUNE_RECIPE, prune_and_finetune

    prune_config = replace(PRUNE_RECIPE, ratio=PRUNE_RECIPE.ratio if args.ratio is None else args.ratio,
                           part_ratios=dict(args.part_ratio) or PRUNE_RECIPE.part_ratios)
    train_config = replace(FINETUNE_RECIPE, epochs=args.epochs or FINETUNE_RECIPE.epochs)
    name, extra_training = args.name, None
    if args.kd:  # the same pruning and budget, recovered with KD from the unpruned detector it was pruned from
        from compresskit.distill import KDConfig, default_method, distillation
        from compresskit.models import load_preset

        name = args.name if args.name != "teacher_pruned" else "teacher_pruned_kd"
        teacher, _, _ = load_preset(args.preset, checkpoint=args.checkpoint)
        method = default_method(teacher) if args.kd is True else args.kd
        extra_training = distillation(teacher, KDConfig(method=method))
    checkpoint = prune_and_finetune(args.out, preset=args.preset, prune_config=prune_config,
                                    train_config=train_config, data_dir=args.data, name=name,
                                    max_iters_per_epoch=args.max_iters, checkpoint=args.checkpoint,
                                    extra_training=extra_training)
    print(f"pruned checkpoint written to {checkpoint}")
    return 0


_METRIC_LABELS = {"map": "mAP (0-1)", "map50": "mAP@0.5 (0-1)", "map75": "mAP@0.75 (0-1)", "map_small":
                  "mAP small (0-1)", "map_medium": "mAP medium (0-1)", "map_large": "mAP large (0-1)", "macs": "MACs",
                  "macs_input": "MACs counted at (h x w)"}


def format_metrics(metrics: dict[str, Any]) -> str:
    """``evaluate``'s output: one ``label  value`` line per metric, mAP as COCOeval's 0-1 numbers (4 decimals)."""
    lines = [(_METRIC_LABELS.get(key, key), _shown(value)) for key, value in metrics.items()]
    width = max((len(label) for label, _ in lines), default=0)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


def _shown(value: Any) -> str:
    if value is None:  # COCOeval's -1: the split has no object of that size
        return "not measured (no such objects in the val split)"
    if isinstance(value, list):
        return " x ".join(str(side) for side in value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _evaluate(args: argparse.Namespace) -> int:
    from compresskit.engine.recipes import evaluate_preset

    result = evaluate_preset(args.preset, data_dir=args.data, checkpoint=args.checkpoint)
    print(format_metrics(result))
    if args.json:
        from compresskit.data.files import atomic_write_json

        atomic_write_json(args.json, result, indent=1)
        print(f"metrics written to {args.json}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from compresskit.harness.baselines import bench_baselines

    bench_baselines(json_path=args.json, reports=args.reports, runs=args.runs)
    return 0


def _study(args: argparse.Namespace) -> int:
    from compresskit.harness.own_data import DatasetStudyConfig, dataset_study

    config = DatasetStudyConfig(prune_ratio=args.ratio, finetune_steps=args.finetune_steps,
                                calibration_images=args.calibration_images, val_images=args.val_images,
                                runs=args.runs, int8_runtime=args.runtime, max_map_drop=args.max_drop)
    search_config = None
    if args.search is not None:  # its settings and the val split are checked before the study spends its time
        from compresskit.data import load_split, require_clean_layout
        from compresskit.harness.search import SearchConfig, check_val_split

        search_config = SearchConfig(max_map_drop=args.max_drop, time_budget_minutes=args.search, runs=args.runs,
                                     calibration_images=args.calibration_images)
        require_clean_layout(args.data)
        check_val_split(load_split("val", args.data))
    dataset_study(args.checkpoint, args.data, args.out, config, progress=True, restart=args.restart)
    print(f"results written to {args.out / 'results.json'}; figures in {args.out / 'figures'}")
    if search_config is None:
        return 0
    from compresskit.cli.search import report_search
    from compresskit.harness.search import search

    return report_search(search(args.checkpoint.stem, args.out / "search", search_config,
                                checkpoint=args.checkpoint, data_dir=args.data, restart=args.restart))


def is_reference_folder(out: Path, reference_dir: Path | None) -> bool:
    """Whether writing results into ``out`` would overwrite the committed reference results.

    True when ``out`` is ``reference_dir`` itself, or when ``out/results.json`` holds the same records as the
    reference (a copy or another path to it).
    """
    if reference_dir is None:
        return False
    if out.resolve() == reference_dir.resolve():
        return True
    try:
        mine = json.loads((out / "results.json").read_text(encoding="utf-8"))
        reference = json.loads((reference_dir / "results.json").read_text(encoding="utf-8"))
        return mine.get("records") == reference.get("records")
    except (OSError, ValueError, AttributeError):  # no (readable) results there: nothing committed to protect
        return False


def _reproduce(args: argparse.Namespace) -> int:
    from compresskit.harness.reproduce import REFERENCE_DIR, reproduce

    if args.skip_run:
        if args.only or args.profile:
            raise CompressKitError("--skip-run runs no study, so --only and --profile have nothing to act on; drop "
                                   "them, or drop --skip-run to rerun those studies")
        from compresskit.harness.reproduce import write_derived

        write_derived(args.out)
    else:
        if not args.update_reference and is_reference_folder(args.out, REFERENCE_DIR):
            raise CompressKitError(f"{args.out} holds the committed reference results; write your run elsewhere "
                                   f"(the default is {REPRODUCE_OUT}) or add --update-reference to replace them")
        results = reproduce(args.out, studies=args.only, profile=args.profile, runs=args.runs,
                            update_reference=args.update_reference, restart=args.restart)
        print(f"results written to {results} (figures and summary.md beside it)")
    if not args.check:
        return 0
    from compresskit.harness.reproduce import check_results

    outcome = check_results(args.out, reference_dir=args.reference)
    print(outcome.format())
    return 0 if outcome.passed else 1


def _figures(args: argparse.Namespace) -> int:
    from compresskit.harness.figures import draw_figures

    if not draw_figures(args.results, args.out):
        raise CompressKitError(f"{args.results} holds none of the records the figures are drawn from; give the "
                               "results.json of `compresskit reproduce` or of a lesson")
    return 0
