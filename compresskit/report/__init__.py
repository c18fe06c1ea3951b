"""Results records, their comparisons, tables and figures (docs/method.md, "Results records", is their contract).

Every figure function returns a bare matplotlib ``Figure`` built from records, rows or plain data (nothing is left
open in pyplot): a notebook shows it as a cell's last expression, a script saves it.
"""

from compresskit.report.check import CheckOutcome, check_against_reference
from compresskit.report.comparisons import compare, latency_median, latency_noisy
from compresskit.report.detections import (draw_boxes, labels_and_teacher_boxes, predictions_vs_truth,
                                           sample_grid)
from compresskit.report.distillation import (KD_TECHNIQUES, distillation_groups, plot_distillation,
                                             plot_gradient_scale, plot_kd_steps)
from compresskit.report.figures import (MissingRecordsError, add_caption, calibration_sweeps, environment_caption,
                                        metric_bars, plot_calibration_sweep, plot_curve, plot_ranked_bars,
                                        technique_colour, training_curves)
from compresskit.report.labels import labels_outside, labels_overlapping, place_labels
from compresskit.report.pareto import EVERY_VARIANT_EXCLUDED, PARETO_X, pareto_frontier, plot_every_variant, plot_pareto
from compresskit.report.pruning import (plot_iterative, plot_sensitivity, plot_sparsity, plot_unstructured,
                                       unstructured_sweep)
from compresskit.report.quantization import plot_op_profile
from compresskit.report.records import (LATENCY_KEYS, PAIRED_KEYS, RECORD_FIELDS, RESULTS_NAME, SCHEMA,
                                        TECHNIQUES, ResultsFileError, make_record, read_results, records_frame,
                                        records_of, write_records)
from compresskit.report.stages import StageTargets, plot_stages
from compresskit.report.tables import (DEFAULT_COLUMNS, TABLE_COLUMNS, format_markdown_table, format_records_table,
                                       format_table, short_label)
from compresskit.report.tradeoffs import plot_macs_split, plot_tradeoffs

__all__ = ["DEFAULT_COLUMNS", "EVERY_VARIANT_EXCLUDED", "KD_TECHNIQUES", "LATENCY_KEYS", "PAIRED_KEYS", "PARETO_X",
           "RECORD_FIELDS", "RESULTS_NAME", "SCHEMA", "TABLE_COLUMNS", "TECHNIQUES", "CheckOutcome",
           "MissingRecordsError", "ResultsFileError", "StageTargets", "add_caption", "calibration_sweeps",
           "check_against_reference", "compare", "distillation_groups", "draw_boxes", "environment_caption",
           "format_markdown_table", "format_records_table", "format_table", "labels_and_teacher_boxes",
           "labels_outside", "labels_overlapping", "latency_median", "latency_noisy", "make_record", "metric_bars",
           "pareto_frontier", "place_labels", "plot_calibration_sweep", "plot_curve", "plot_distillation",
           "plot_every_variant", "plot_gradient_scale", "plot_iterative", "plot_kd_steps", "plot_macs_split",
           "plot_op_profile", "plot_pareto", "plot_ranked_bars", "plot_sensitivity", "plot_sparsity", "plot_stages",
           "plot_tradeoffs", "plot_unstructured", "predictions_vs_truth", "read_results", "records_frame", "records_of",
           "sample_grid", "short_label", "technique_colour", "training_curves", "unstructured_sweep", "write_records"]
