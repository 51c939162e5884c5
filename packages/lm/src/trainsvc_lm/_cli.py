"""The ``trainsvc-lm`` command line (subcommands are added as their modules land)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trainsvc-lm``."""
    parser = argparse.ArgumentParser(prog="trainsvc-lm", description=__doc__)
    parser.parse_args(argv)
    return 0
