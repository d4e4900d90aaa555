"""Results of run directories as rows, a text table and a self-contained HTML page."""

from taylorlab.report.summary import collect_results, format_table, write_html, stage_status  # noqa: F401
