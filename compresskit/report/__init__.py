"""Results records and the figures made from them (DESIGN section 5 is the contract for the records)."""

from compresskit.report.figures import metric_bars, plot_curve, plot_pareto, training_curves
from compresskit.report.records import (LATENCY_KEYS, METRIC_KEYS, RECORD_FIELDS, RESULTS_NAME, RUNTIMES, SCHEMA,
                                        TECHNIQUES, ResultsFileError, compare, format_records_table,
                                        latency_median, make_record, read_results, records_frame, records_of,
                                        write_records)

__all__ = ["LATENCY_KEYS", "METRIC_KEYS", "RECORD_FIELDS", "RESULTS_NAME", "RUNTIMES", "SCHEMA", "TECHNIQUES",
           "ResultsFileError", "compare", "format_records_table", "latency_median", "make_record", "metric_bars",
           "plot_curve", "plot_pareto", "read_results", "records_frame", "records_of", "training_curves",
           "write_records"]
