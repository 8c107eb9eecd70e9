"""Forwarding module: cascading model randomisation (``python -m gae_workbook.sanity``) lives in
:mod:`gae_workbook.evaluation.sanity`."""

from .evaluation.sanity import *  # noqa: F403
from .evaluation.sanity import __all__  # noqa: F401

if __name__ == "__main__":
    from .evaluation.sanity import main

    main()
