"""`kernelfit run`: the main job (load with the plan, generate, report speed)."""

from __future__ import annotations

COMMANDS: dict = {}


def add_run_parser(sub) -> None:
    pass
