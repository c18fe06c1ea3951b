"""The ``compresskit`` console script. Each sub-command is a thin call into the package.

Problems a user can fix (bad data, no network, missing weights) print one message and exit 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compresskit.errors import CompressKitError


def _data_embedded(args) -> int:
    from compresskit.data.embedded import EmbeddedConfig, generate_embedded

    config = EmbeddedConfig(seed=args.seed, train_images=args.train_images, val_images=args.val_images)
    out = generate_embedded(args.out, config)
    print(f"embedded dataset (seed {args.seed}) ready in {out}")
    return 0


def _data_coco(args) -> int:
    from compresskit.data.coco_subset import OFFICIAL_ANNOTATIONS_URL, SubsetRecipe, build_coco_subset

    recipe = SubsetRecipe(split=args.split, images=args.images, categories=args.categories or None, seed=args.seed)
    manifest = build_coco_subset(Path(args.out), recipe,
                                 annotations_url=args.annotations_url or OFFICIAL_ANNOTATIONS_URL,
                                 images_base_url=args.images_base_url, coco_root=args.coco_root)
    print(f"COCO {args.split} subset of {args.images} images ready; manifest: {manifest}")
    return 0


def _data_check(args) -> int:
    from compresskit.data.check import main_check

    return main_check(Path(args.annotations), Path(args.images))


def _train(args) -> int:
    from dataclasses import replace

    from compresskit.baselines import TRAIN_RECIPES, train_preset

    config = TRAIN_RECIPES[args.preset]
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    checkpoint = train_preset(args.preset, args.out, data_dir=args.data, config=config,
                              max_iters_per_epoch=args.max_iters)
    print(f"checkpoint written to {checkpoint}")
    return 0


def _prune(args) -> int:
    from dataclasses import replace

    from compresskit.prune import FINETUNE_RECIPE, PRUNE_RECIPE, prune_and_finetune

    part_ratios = dict(_name_value(item) for item in args.part_ratio) or None
    prune_config = replace(PRUNE_RECIPE, ratio=args.ratio if args.ratio is not None else PRUNE_RECIPE.ratio,
                           part_ratios=part_ratios or PRUNE_RECIPE.part_ratios)
    train_config = replace(FINETUNE_RECIPE, epochs=args.epochs or FINETUNE_RECIPE.epochs)
    checkpoint = prune_and_finetune(args.out, preset=args.preset, prune_config=prune_config,
                                    train_config=train_config, data_dir=args.data, name=args.name,
                                    max_iters_per_epoch=args.max_iters)
    print(f"pruned checkpoint written to {checkpoint}")
    return 0


def _name_value(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part-ratio expects NAME=RATIO, e.g. layer4=0.6, got {text!r}") from None


def _evaluate(args) -> int:
    from compresskit.baselines import evaluate_preset

    result = evaluate_preset(args.preset, data_dir=args.data, checkpoint=args.checkpoint)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        from compresskit.data.files import atomic_write_json

        atomic_write_json(args.json, result, indent=1)
    return 0


def _bench(args) -> int:
    from compresskit.baselines import bench_baselines

    bench_baselines(json_path=args.json, reports=args.reports)
    return 0


def _reproduce(args) -> int:
    from compresskit.studies import reproduce

    results = reproduce(args.out)
    print(f"reference results written to {results} (figures beside it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compresskit", description="Model compression for object detection.")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, download or check COCO-format datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    embedded = data_commands.add_parser("embedded", help="generate the embedded dataset")
    embedded.add_argument("--out", required=True)
    embedded.add_argument("--seed", type=int, default=0)
    embedded.add_argument("--train-images", type=int, default=2000)
    embedded.add_argument("--val-images", type=int, default=300)
    embedded.set_defaults(run=_data_embedded)
    coco = data_commands.add_parser("coco", help="build a COCO 2017 subset (download or local install)")
    coco.add_argument("--out", required=True)
    coco.add_argument("--split", choices=["train2017", "val2017"], required=True)
    coco.add_argument("--images", type=int, required=True)
    coco.add_argument("--categories", nargs="*", metavar="NAME")
    coco.add_argument("--seed", type=int, default=0)
    coco.add_argument("--annotations-url", help="URL of annotations_trainval2017.zip")
    coco.add_argument("--images-base-url", default="http://images.cocodataset.org",
                      help="replaces http://images.cocodataset.org in each image's coco_url")
    coco.add_argument("--coco-root", type=Path, help="an existing local COCO 2017 install to copy from")
    coco.set_defaults(run=_data_coco)
    check = data_commands.add_parser("check", help="validate a COCO-format dataset")
    check.add_argument("annotations")
    check.add_argument("--images", required=True, help="folder that file_name entries are relative to")
    check.set_defaults(run=_data_check)

    train = commands.add_parser("train", help="train a preset detector on the embedded dataset")
    train.add_argument("--preset", choices=["teacher", "student"], required=True)
    train.add_argument("--out", default="runs/checkpoints")
    train.add_argument("--data", help="dataset folder (default: the embedded dataset)")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--max-iters", type=int, help="cap iterations per epoch (smoke runs)")
    train.set_defaults(run=_train)

    prune = commands.add_parser("prune", help="structurally prune a shipped detector and fine-tune it")
    prune.add_argument("--preset", choices=["teacher", "student"], default="teacher")
    prune.add_argument("--ratio", type=float, help="fraction of channels to remove (default: the shipped recipe)")
    prune.add_argument("--part-ratio", action="append", default=[], metavar="PART=RATIO",
                       help="per-part ratio, e.g. layer4=0.6 (repeatable)")
    prune.add_argument("--epochs", type=int, help="fine-tune epochs (default: the shipped recipe)")
    prune.add_argument("--out", default="runs/checkpoints")
    prune.add_argument("--name", default="teacher_pruned", help="checkpoint file name (without .pt)")
    prune.add_argument("--data", help="dataset folder (default: the embedded dataset)")
    prune.add_argument("--max-iters", type=int, help="cap iterations per epoch (smoke runs)")
    prune.set_defaults(run=_prune)

    evaluate = commands.add_parser("evaluate", help="COCO mAP, params and MACs of a detector")
    evaluate.add_argument("--preset", choices=["teacher", "student"], required=True)
    evaluate.add_argument("--data", help="dataset folder (default: the embedded dataset)")
    evaluate.add_argument("--checkpoint", help="a checkpoint instead of the shipped one")
    evaluate.add_argument("--json", help="also write the metrics to this file")
    evaluate.set_defaults(run=_evaluate)

    bench = commands.add_parser("bench", help="measure the baseline records (both presets, eager and ONNX Runtime)")
    bench.add_argument("--json", help="also write the records to this file")
    bench.add_argument("--reports", help="results folder (default: $COMPRESSKIT_REPORTS or runs/)")
    bench.set_defaults(run=_bench)
    reproduce = commands.add_parser("reproduce", help="rerun every study on the full val split; write results "
                                                      "and figures")
    reproduce.add_argument("--out", default="reports")
    reproduce.set_defaults(run=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CompressKitError as exc:
        print(f"compresskit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compresskit: interrupted; completed files are kept, partial ones were not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
