"""Long-running commands: serve the API, publish simulated devices, bring the whole platform up."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
