"""Results records, their comparisons, tables and figures (docs/method.md, "Results records", is their contract)."""

from compresskit.report.check import CheckOutcome, check_against_reference
from compresskit.report.comparisons import compare, latency_median, latency_noisy
from compresskit.report.figures import (KD_TECHNIQUES, MissingRecordsError, add_caption, calibration_sweeps,
                                        environment_caption, metric_bars, plot_calibration_sweep, plot_curve,
                                        plot_distillation, plot_ranked_bars, technique_colour, training_curves)
from compresskit.report.pareto import PARETO_X, pareto_frontier, plot_pareto
from compresskit.report.records import (LATENCY_KEYS, PAIRED_KEYS, RECORD_FIELDS, RESULTS_NAME, RUNTIMES, SCHEMA,
                                        TECHNIQUES, ResultsFileError, make_record, read_results, records_frame,
                                        records_of, write_records)
from compresskit.report.tables import (DEFAULT_COLUMNS, TABLE_COLUMNS, format_markdown_table, format_records_table,
                                       format_table, short_label)

__all__ = ["DEFAULT_COLUMNS", "KD_TECHNIQUES", "LATENCY_KEYS", "PAIRED_KEYS", "PARETO_X", "RECORD_FIELDS",
           "RESULTS_NAME", "RUNTIMES", "SCHEMA", "TABLE_COLUMNS", "TECHNIQUES", "CheckOutcome", "MissingRecordsError",
           "ResultsFileError", "add_caption", "calibration_sweeps", "check_against_reference", "compare",
           "environment_caption", "format_markdown_table", "format_records_table", "format_table", "latency_median",
           "latency_noisy", "make_record", "metric_bars", "pareto_frontier", "plot_calibration_sweep", "plot_curve",
           "plot_distillation", "plot_pareto", "plot_ranked_bars", "read_results", "records_frame", "records_of",
           "short_label", "technique_colour", "training_curves", "write_records"]
