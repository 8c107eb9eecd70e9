"""What every command line of the workbook shares: help that shows the defaults, one-line errors."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "Parser"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, where it has one worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        name = self.prog.removeprefix("python -m ")
        self.exit(2, f"{name}: error: {message} (see --help)\n")
