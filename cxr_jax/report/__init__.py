"""Figures (matplotlib, headless) and the self-contained HTML report of an experiment."""

from cxr_jax.report.figures import save_curves, save_matrix, save_overlays
from cxr_jax.report.html import table_html, write_index

__all__ = ["save_curves", "save_matrix", "save_overlays", "table_html", "write_index"]
