"""Running the real ``ta-lab2`` console command (``python -m ta_lab2``) from tests."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

URL_ENV = ("TA_LAB2_DB_URL", "TARGET_DB_URL")
Done = subprocess.CompletedProcess[str]


def base_env(**extra: str) -> dict[str, str]:
    """The current environment without any database URL, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in URL_ENV}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> Done:
    return subprocess.run(
        [sys.executable, "-m", "ta_lab2", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def run_all(jobs: list[tuple[list[str], Path, dict[str, str]]]) -> list[Done]:
    """Independent commands, a few at a time (each one mostly pays Python start-up)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda job: run(*job), jobs))
