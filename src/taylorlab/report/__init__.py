"""Results of run directories as rows, a text table and a self-contained HTML page."""

from taylorlab.report.dashboard import write_dashboard, write_html  # noqa: F401
from taylorlab.report.summary import collect_results, format_table, plain_summary, stage_status  # noqa: F401
