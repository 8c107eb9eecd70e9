"""Forwarding module: the family probe (``python -m gae_workbook.probe``) lives in
:mod:`gae_workbook.evaluation.probe`."""

from .evaluation.probe import *  # noqa: F403
from .evaluation.probe import __all__  # noqa: F401

if __name__ == "__main__":
    from .evaluation.probe import main

    main()
