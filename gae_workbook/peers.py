"""Forwarding module: the peers lives in
:mod:`gae_workbook.evaluation.peers`."""

from gae_workbook.evaluation.peers import *  # noqa: F403
from gae_workbook.evaluation.peers import __all__  # noqa: F401
