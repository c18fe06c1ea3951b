"""Training and evaluation of detectors: one loop, one evaluator, one routine that ships a trained checkpoint.

- ``evaluation``: COCO mAP with pycocotools (``evaluate``, ``coco_metrics``, the fixed ``val_subset``).
- ``loop``: ``train_one_epoch`` and ``fit`` (seeds, schedule, checkpoints, resume, extra losses and modules, DDP).
- ``norms``: :func:`frozen_head_statistics` (a BatchNorm head fine-tuned as it is deployed).
- ``recipes``: the preset training recipes and :func:`ship_checkpoint` (save, reload, evaluate, record).

The engine builds on ``data`` and ``models`` only. Introduced in ``01_baseline_detectors.ipynb``.
"""

from compresskit.engine.evaluation import (METRIC_NAMES, VAL_SUBSET_IMAGES, coco_metrics, evaluate,
                                           ground_truth_from_boxes, predict, val_subset)
from compresskit.engine.loop import (ExtraLoss, TrainConfig, fit, is_main_process, make_loader, train_one_epoch,
                                     warmup_cosine)
from compresskit.engine.norms import deployed_head_statistics, frozen_head_statistics
from compresskit.engine.recipes import (TRAIN_RECIPES, console_command, evaluate_preset, ship_checkpoint,
                                        train_preset)

__all__ = ["METRIC_NAMES", "TRAIN_RECIPES", "VAL_SUBSET_IMAGES", "ExtraLoss", "TrainConfig", "coco_metrics",
           "console_command", "deployed_head_statistics", "evaluate", "evaluate_preset", "fit",
           "frozen_head_statistics", "ground_truth_from_boxes", "is_main_process", "make_loader", "predict",
           "ship_checkpoint", "train_one_epoch", "train_preset", "val_subset", "warmup_cosine"]
