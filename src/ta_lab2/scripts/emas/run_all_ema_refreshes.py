"""Run the six EMA refreshers (``ta-lab2 emas``). Usage:

    python src/ta_lab2/scripts/emas/run_all_ema_refreshes.py --ids all [--full-refresh] [...]
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: make ``ta_lab2`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

# cheap on purpose: a runner started from this file re-runs its top level in its fork server
from ta_lab2.cli import run_script

if __name__ == "__main__":
    run_script("run_all_ema_refreshes")
