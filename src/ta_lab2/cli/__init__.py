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


#: The seed's script paths and the ``ta-lab2`` (sub)command each one is: module, Typer app.
SCRIPTS = {
    "run_all_bar_builders": ("ta_lab2.cli.pipeline_cmds", "bars_app"),
    "run_all_ema_refreshes": ("ta_lab2.cli.pipeline_cmds", "emas_app"),
    "run_daily_refresh": ("ta_lab2.cli.pipeline_cmds", "refresh_app"),
    "capture_baseline": ("ta_lab2.cli.baseline_cmds", "capture_app"),
}


def run_script(name: str, argv: list[str] | None = None) -> None:
    """Run the script ``name`` (a key of :data:`SCRIPTS`) with ``argv`` (default: the process's),
    exactly as its ``ta-lab2`` command. Light for the same reason as :func:`main`."""
    import importlib

    from ta_lab2.cli.app import run_app

    module, app = SCRIPTS[name]
    run_app(getattr(importlib.import_module(module), app), argv)
