"""Forwarding module: the evaluation harness (``python -m gae_workbook.harness``) lives in
:mod:`gae_workbook.evaluation.harness`."""

from .evaluation.harness import *  # noqa: F403
from .evaluation.harness import __all__  # noqa: F401

if __name__ == "__main__":
    from .evaluation.harness import command_line

    command_line()
