"""Forwarding module: the evaluation metrics lives in
:mod:`gae_workbook.evaluation.metrics`."""

from gae_workbook.evaluation.metrics import *  # noqa: F403
from gae_workbook.evaluation.metrics import __all__  # noqa: F401
