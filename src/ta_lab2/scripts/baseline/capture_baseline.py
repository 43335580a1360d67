"""Baseline capture (``ta-lab2 baseline capture``): Snapshot → Truncate → Rebuild → Compare.

    python src/ta_lab2/scripts/baseline/capture_baseline.py --ids 1,52,825 [options]

The phases live in :mod:`ta_lab2.baseline.capture` (the rebuild is a ``subprocess.run`` of
``run_all_bar_builders.py`` then ``run_all_ema_refreshes.py``); the comparison semantics in
:mod:`ta_lab2.baseline.comparison_utils`; the reproducibility record in
:mod:`ta_lab2.baseline.metadata_tracker`. This file is the command-line entry point.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: make ``ta_lab2`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

# cheap on purpose: a runner started from this file re-runs its top level in its fork server
from ta_lab2.cli import run_script

if __name__ == "__main__":
    run_script("capture_baseline")
