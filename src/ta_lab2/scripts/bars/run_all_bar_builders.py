"""Run the six bar builders (``ta-lab2 bars``). Usage:

    python src/ta_lab2/scripts/bars/run_all_bar_builders.py --ids all [--full-rebuild] [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: make ``ta_lab2`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def main(argv: list[str] | None = None) -> None:
    # imported here, not above: a runner started from this file re-runs its top level in every
    # child it starts (multiprocessing's rule for a script's __main__), which must stay cheap
    from ta_lab2.cli.app import run_app
    from ta_lab2.cli.pipeline_cmds import bars_app

    run_app(bars_app, argv)


if __name__ == "__main__":
    main()
