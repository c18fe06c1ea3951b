"""Pruning detectors: unstructured zeros, structured channel removal, sensitivity, recovery.

- ``unstructured``: ``torch.nn.utils.prune`` on every Conv2d (global or per layer), made permanent; the file
  only shrinks once compressed, and MACs do not move.
- ``structured``: torch-pruning's dependency graph on the detector's core with the prediction layers ignored;
  channels really disappear, so MACs and latency drop.
- ``schedule``: per-part sensitivity scans, ratio choice under an mAP budget, iterative prune + fine-tune.
- ``recipe``: the long recovery fine-tune behind the shipped pruned teacher (with any extra training a caller
  passes in, e.g. distillation from the unpruned teacher).

A pruned detector is saved and loaded like any other: ``compresskit.models.save_checkpoint`` stores the channel
counts of every layer beside the weights, and ``load_checkpoint`` rebuilds it with ``weights_only=True``.

Introduced in ``02_pruning.ipynb``.
"""

from compresskit.prune.recipe import (FINETUNE_RECIPE, PRUNE_RECIPE, SHIPPED_PRUNED, load_shipped_pruned,
                                      prune_and_finetune)
from compresskit.prune.schedule import choose_part_ratios, iterative_prune, map_drop_points, sensitivity_scan
from compresskit.prune.structured import (ChannelPruner, StructuredConfig, channel_report, core_macs,
                                          detector_parts, prediction_layers, prunable_core, prune_structured_)
from compresskit.prune.unstructured import (UnstructuredConfig, conv_sparsity, make_permanent_,
                                            prune_unstructured_, whole_model_l1_call)

__all__ = ["FINETUNE_RECIPE", "PRUNE_RECIPE", "SHIPPED_PRUNED", "load_shipped_pruned", "prune_and_finetune",
           "ChannelPruner", "StructuredConfig", "UnstructuredConfig", "channel_report", "choose_part_ratios",
           "conv_sparsity", "core_macs", "detector_parts", "iterative_prune", "make_permanent_",
           "map_drop_points", "prediction_layers", "prunable_core", "prune_structured_",
           "prune_unstructured_", "sensitivity_scan", "whole_model_l1_call"]
