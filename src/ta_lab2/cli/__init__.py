"""The ``ta-lab2`` command (Typer commands in :mod:`.app`, :mod:`.pipeline_cmds`,
:mod:`.baseline_cmds`; rendering in :mod:`.render`)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """The console script's entry point. It imports Typer only when called: the console script
    imports this module at its top, and so does every child of a runner started from it
    (multiprocessing re-runs the parent's main script in each child), which must not pay for
    Typer."""
    from ta_lab2.cli.app import main as run

    run(argv)
