"""Plots and tables from the trials frame: what `tunetl report` writes.

Cut by what each part owns: `tables` (cells formatted once; CSV, Markdown, HTML), `plots` (matplotlib
helpers), `sections` (one function per section, numbers from `tunetl.meta.analysis`), `build` (which
sections, the file names, the index pages).
"""

from tunetl.report.build import OUTPUT_FILES, TABLES, write_report
from tunetl.report.sections import PLOTS

__all__ = ["OUTPUT_FILES", "PLOTS", "TABLES", "write_report"]
