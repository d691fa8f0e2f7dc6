"""The attention-rank probe (``archcmp-analyze rank``): :mod:`~archcmp.analysis.rank.metrics` (rank and
conditioning of attention matrices, rank collapse), :mod:`~archcmp.analysis.rank.plots` (figures, the
causal-softmax determinant demo), :mod:`~archcmp.analysis.rank.report` (``table.md``) and
:mod:`~archcmp.analysis.rank.cli`. The metric and plot functions are importable from here."""
from archcmp.analysis.rank.metrics import (EPS_F32, EPS_F64, METRIC_COLUMNS, Residual, attention_block_metrics,
                                           condition_number, effective_rank, extract_blocks, is_lower_triangular,
                                           logdet_exact_triangular, logdet_generic, matrix_metrics,
                                           metrics_from_singular_values, numerical_rank, rank_collapse_by_segment,
                                           rank_collapse_residual, singular_values, stable_rank, time_metrics,
                                           tol_f32, tol_f64)
from archcmp.analysis.rank.plots import (SUMMARY_METRICS, causal_softmax, causal_softmax_demo,
                                         causal_softmax_demo_table, markdown_table, plot_metric_vs_step,
                                         plot_rank_heatmaps, plot_residual_vs_depth, plot_singular_spectra)

__all__ = ["EPS_F32", "EPS_F64", "METRIC_COLUMNS", "Residual", "SUMMARY_METRICS", "attention_block_metrics",
           "causal_softmax", "causal_softmax_demo", "causal_softmax_demo_table", "condition_number",
           "effective_rank", "extract_blocks", "is_lower_triangular", "logdet_exact_triangular", "logdet_generic",
           "markdown_table", "matrix_metrics", "metrics_from_singular_values", "numerical_rank",
           "plot_metric_vs_step", "plot_rank_heatmaps", "plot_residual_vs_depth", "plot_singular_spectra",
           "rank_collapse_by_segment", "rank_collapse_residual", "singular_values", "stable_rank",
           "time_metrics", "tol_f32", "tol_f64"]
