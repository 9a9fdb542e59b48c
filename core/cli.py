"""What every command line of the project shares: ``--section.key=value``
overrides after the script's own flags, checked the same way everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the shipped configs, whatever the working directory


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                         sections: Sequence[str] = ()) -> tuple[argparse.Namespace, list[str]]:
    """The script's arguments and the config overrides left over. Every
    leftover must look like ``--section.key=value`` (with ``sections``:
    one of those sections); anything else ends in ``parser.error`` naming
    the offending arguments, as argparse reports its own."""
    args, overrides = parser.parse_known_args(argv)
    prefixes = tuple(f"--{s}." for s in sections) or ("--",)
    bad = [o for o in overrides if not o.startswith(prefixes) or "=" not in o]
    if bad:
        shape = " or ".join(f"{p}key=value" for p in prefixes) if sections else "--section.key=value"
        parser.error(f"unrecognised arguments {bad}: overrides look like {shape}")
    return args, overrides
