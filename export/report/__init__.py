"""The paper's kernel-size analysis of a NIFF model: ``report.json``, matplotlib figures and ``report.md``.

``niff-report`` (``cli.py``) and ``report_checkpoint``/``report_model`` measure what ``kernels.py``
defines — the numbers compact export chooses with — so a report says what a compact export will do.
"""

from niff_export.report.analysis import KernelReport, Stage, analyse_model
from niff_export.report.api import ReportResult, report_checkpoint, report_model

__all__ = ["KernelReport", "ReportResult", "Stage", "analyse_model", "report_checkpoint", "report_model"]
