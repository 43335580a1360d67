"""The embedded server: one server per home, shared by concurrent processes, stopped cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from ta_lab2.db.embedded import EmbeddedServer

pytestmark = pytest.mark.slow

_START = "from ta_lab2.db.embedded import EmbeddedServer; print(EmbeddedServer().ensure_running())"


def _parent(pid: int) -> int:
    """The parent process of ``pid`` (Linux ``/proc``)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _postmasters(data_dir: Path) -> list[int]:
    """The processes running a PostgreSQL server on ``data_dir``: those whose command line
    names it after ``-D`` (a backend's does not)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended while we looked
            continue
        if any(a == "-D" and b == str(data_dir) for a, b in zip(argv, argv[1:])):
            found.append(int(entry.name))
    return found


def test_concurrent_starts_share_one_server() -> None:
    home = Path(tempfile.mkdtemp(prefix="tlhe", dir="/tmp"))
    env = {**os.environ, "TA_LAB2_HOME": str(home), "TA_LAB2_EMBEDDED_NO_FSYNC": "1"}
    server = EmbeddedServer(home)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _START], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
        urls = {p.communicate(timeout=120)[0].strip() for p in procs}
        assert all(p.returncode == 0 for p in procs)
        assert urls == {server.url()}
        pid_file = (home / "pgdata" / "postmaster.pid").read_text().splitlines()[0]
        # one postmaster on this data directory, and the three URLs lead to it
        assert _postmasters(home / "pgdata") == [int(pid_file)]
        with psycopg.connect(server.url()) as conn:  # its backend lives as long as the connection
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert _parent(backend) == int(pid_file)
        # A later start finds the same postmaster running.
        again = subprocess.run([sys.executable, "-c", _START], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0
        assert (home / "pgdata" / "postmaster.pid").read_text().splitlines()[0] == pid_file
        assert server.status().running
        assert server.stop() is True
        assert not server.status().running
        assert not (home / "pgdata" / "postmaster.pid").exists()  # clean shutdown removes it
        assert server.stop() is False
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
