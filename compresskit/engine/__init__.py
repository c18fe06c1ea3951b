"""Training and evaluation of detectors: one loop, one evaluator, one routine that trains and ships a checkpoint.

- ``evaluation``: COCO mAP with pycocotools (``evaluate``, ``coco_metrics``, the fixed ``val_subset``).
- ``loop``: ``train_one_epoch`` and ``fit`` (seeds, schedule, checkpoints, resume, extra losses and modules, DDP).
- ``norms``: :func:`frozen_head_statistics` (a BatchNorm head fine-tuned as it is deployed).
- ``shipping``: :func:`train_and_ship`, the one train-record-ship routine of every recipe (with
  :class:`ExtraTraining`, what a technique adds to the run), and :func:`ship_checkpoint` (save, reload, evaluate,
  record).
- ``recipes``: the preset training recipes (``compresskit train --preset``) and ``evaluate_preset``.

The engine builds on ``data``, ``models`` and ``measure``. Introduced in ``01_baseline_detectors.ipynb``.
"""

from compresskit.engine.evaluation import (METRIC_NAMES, VAL_SUBSET_IMAGES, coco_metrics, evaluate,
                                           ground_truth_from_boxes, predict, val_subset)
from compresskit.engine.loop import (ExtraLoss, ExtraTargets, TrainConfig, fit, is_main_process, make_loader,
                                     train_one_epoch, warmup_cosine)
from compresskit.engine.norms import deployed_head_statistics, frozen_head_statistics
from compresskit.engine.recipes import TRAIN_RECIPES, evaluate_preset, train_preset
from compresskit.engine.shipping import (EVAL_BATCH_SIZE, ExtraTraining, ExtraTrainingFactory, Splits,
                                         console_command, load_splits, ship_checkpoint, train_and_ship,
                                         train_detector, training_device_name)

__all__ = ["EVAL_BATCH_SIZE", "METRIC_NAMES", "TRAIN_RECIPES", "VAL_SUBSET_IMAGES", "ExtraLoss", "ExtraTargets",
           "ExtraTraining", "ExtraTrainingFactory", "Splits", "TrainConfig", "coco_metrics", "console_command",
           "deployed_head_statistics", "evaluate", "evaluate_preset", "fit", "frozen_head_statistics",
           "ground_truth_from_boxes", "is_main_process", "load_splits", "make_loader", "predict", "ship_checkpoint",
           "train_and_ship", "train_detector", "train_one_epoch", "train_preset", "training_device_name",
           "val_subset", "warmup_cosine"]
