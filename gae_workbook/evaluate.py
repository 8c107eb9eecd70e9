"""Forwarding module: the ShapesWorld evaluation (``python -m gae_workbook.evaluate``) lives in
:mod:`gae_workbook.evaluation.evaluators`."""

from .evaluation.evaluators import *  # noqa: F403
from .evaluation.evaluators import __all__  # noqa: F401

if __name__ == "__main__":
    from .evaluation.evaluators import main

    main()
