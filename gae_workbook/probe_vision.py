"""Forwarding module: ``python -m gae_workbook.probe_vision`` is ``python -m gae_workbook.probe --kind both``
(image classifiers and vision-language models), in :mod:`gae_workbook.evaluation.probe`."""

from .evaluation.probe import *  # noqa: F403
from .evaluation.probe import __all__  # noqa: F401

if __name__ == "__main__":
    from .evaluation.probe import main

    main(kind="both")
