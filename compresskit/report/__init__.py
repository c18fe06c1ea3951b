"""Results records, their comparisons, tables and figures (DESIGN section 5 is the contract for the records)."""

from compresskit.report.comparisons import compare, latency_median, latency_noisy
from compresskit.report.figures import metric_bars, plot_curve, plot_pareto, plot_ranked_bars, training_curves
from compresskit.report.records import (LATENCY_KEYS, PAIRED_KEYS, RECORD_FIELDS, RESULTS_NAME, RUNTIMES, SCHEMA,
                                        TECHNIQUES, ResultsFileError, make_record, read_results, records_frame,
                                        records_of, write_records)
from compresskit.report.tables import DEFAULT_COLUMNS, TABLE_COLUMNS, format_records_table, format_table

__all__ = ["DEFAULT_COLUMNS", "LATENCY_KEYS", "PAIRED_KEYS", "RECORD_FIELDS", "RESULTS_NAME", "RUNTIMES", "SCHEMA",
           "TABLE_COLUMNS", "TECHNIQUES", "ResultsFileError", "compare", "format_records_table", "format_table",
           "latency_median", "latency_noisy", "make_record", "metric_bars", "plot_curve", "plot_pareto", "plot_ranked_bars",
           "read_results", "records_frame", "records_of", "training_curves", "write_records"]
