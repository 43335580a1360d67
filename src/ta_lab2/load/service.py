"""Load orchestration: parse every input first (a file in the wrong format is refused before
anything is written), check that no input puts its prices under an id ``dim_assets`` gives to
another asset (refused unless forced), then write every input's rows in one transaction (all
or none) and return a frozen report the CLI renders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl
import psycopg

from ta_lab2.db.locks import SOURCE_LOCK, xact_lock
from ta_lab2.db.schema import ensure_schema
from ta_lab2.errors import InputDataError
from ta_lab2.load.checks import Oddities, asset_clashes, input_labels, oddities
from ta_lab2.load.parse import ParseResult, parse_file
from ta_lab2.load.source_schema import REJECT_SCHEMA
from ta_lab2.load.store import UpsertCounts, name_to_id, record_rejects, stored_labels, upsert_assets, upsert_source
from ta_lab2.load.synthetic import SyntheticConfig, generate_universe

log = logging.getLogger(__name__)

_CLASHES_SHOWN = 5


@dataclass(frozen=True)
class FileLoad:
    """What happened to one input."""

    source: str
    format: str
    rows_read: int
    counts: UpsertCounts
    rejected: int
    new_assets: int
    rejects: pl.DataFrame = field(repr=False, compare=False)
    oddities: Oddities = Oddities()


@dataclass(frozen=True)
class LoadReport:
    files: tuple[FileLoad, ...]

    @property
    def totals(self) -> UpsertCounts:
        total = UpsertCounts(0, 0, 0)
        for f in self.files:
            total = total + f.counts
        return total

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    @property
    def oddities(self) -> Oddities:
        total = Oddities()
        for f in self.files:
            total = total + f.oddities
        return total

    def summary_line(self) -> str:
        t = self.totals
        return f"loaded {t.inserted}, updated {t.updated}, unchanged {t.unchanged}, rejected {self.rejected}"

    def all_rejects(self) -> pl.DataFrame:
        frames = [f.rejects for f in self.files if not f.rejects.is_empty()]
        return pl.concat(frames) if frames else pl.DataFrame(schema=REJECT_SCHEMA)


def _write(conn: psycopg.Connection, inputs: Sequence[tuple[str, ParseResult]], schema: str,
           wait_lock: float | None = None) -> LoadReport:
    """Upsert every input, in order, in one transaction: a command loads all its inputs or,
    when one fails (a lost connection, Ctrl-C), none."""
    loads = []
    with conn.transaction():
        # Exclusive on the source: a bar build reading it (shared lock) never sees a load
        # commit below its load_ts watermark. Waits for a running build or capture to finish
        # (without limit when ``wait_lock`` is None).
        xact_lock(conn, SOURCE_LOCK, wait_lock)
        for source, result in inputs:
            new_assets = upsert_assets(conn, result.frame, schema)
            counts = upsert_source(conn, result.frame, schema)
            record_rejects(conn, result.rejects, schema)
            loads.append(FileLoad(source, result.format, result.rows_read, counts, result.rejects.height, new_assets,
                                  result.rejects, oddities(result.frame)))
    for load in loads:
        log.info("%s: %d rows read: %d loaded, %d updated, %d unchanged, %d rejected", load.source, load.rows_read,
                 load.counts.inserted, load.counts.updated, load.counts.unchanged, load.rejected)
    return LoadReport(tuple(loads))


def _refuse_clashes(conn: psycopg.Connection, inputs: Sequence[tuple[str, ParseResult]], schema: str, force: bool) -> None:
    """InputDataError naming every input whose (name, symbol) for an id disagrees with
    ``dim_assets`` — before anything is written — unless ``force`` (then only logged)."""
    labels = {source: input_labels(result.frame) for source, result in inputs}
    ids = sorted({i for frame in labels.values() for i in frame.get_column("id").to_list()})
    stored = stored_labels(conn, ids, schema)
    if not conn.autocommit:
        conn.commit()  # end the read's implicit transaction: the write is a transaction of its own
    clashes = [c for source, frame in labels.items() for c in asset_clashes(source, frame, stored)]
    if not clashes:
        return
    lines = [c.describe() for c in clashes[:_CLASHES_SHOWN]]
    if len(clashes) > _CLASHES_SHOWN:
        lines.append(f"… and {len(clashes) - _CLASHES_SHOWN} more")
    if force:
        for line in lines:
            log.warning("loading anyway (--force): %s", line)
        return
    raise InputDataError(
        "refusing to mix two assets' prices under one id; nothing was loaded:\n  " + "\n  ".join(lines),
        hint="check --id or the input's id column; or pass --force to load anyway "
             "(dim_assets keeps the name and symbol it has)",
    )


def load_files(
    conn: psycopg.Connection,
    paths: Sequence[Path],
    *,
    asset_id: int | None = None,
    schema: str = "public",
    force: bool = False,
    wait_lock: float | None = None,
) -> LoadReport:
    """Parse all ``paths`` (raising ``InputDataError`` before any write if one is unusable, or
    if one names an id's asset differently from ``dim_assets`` and not ``force``), then
    upsert them all in one transaction. ``wait_lock``: seconds to wait for a running build or
    capture (None: as long as it takes)."""
    ensure_schema(conn, schema)
    mapping = name_to_id(conn, schema)
    parsed = [(str(path), parse_file(path, asset_id=asset_id, name_to_id=mapping)) for path in paths]
    _refuse_clashes(conn, parsed, schema, force)
    return _write(conn, parsed, schema, wait_lock)


def load_synthetic(
    conn: psycopg.Connection, config: SyntheticConfig, *, schema: str = "public", force: bool = False,
    wait_lock: float | None = None,
) -> LoadReport:
    """Generate the deterministic synthetic universe and upsert it (one transaction)."""
    return load_frame(conn, generate_universe(config).frame, f"synthetic:{config.seed}", schema=schema, force=force,
                      wait_lock=wait_lock)


def load_frame(
    conn: psycopg.Connection, frame: pl.DataFrame, source: str, *, schema: str = "public", force: bool = False,
    wait_lock: float | None = None,
) -> LoadReport:
    """Upsert rows already shaped like a loader's output (``SOURCE_SCHEMA`` + ``symbol``), e.g.
    a slice of a synthetic universe, in one transaction (same asset check as :func:`load_files`)."""
    ensure_schema(conn, schema)
    result = ParseResult(frame=frame, rejects=pl.DataFrame(schema=REJECT_SCHEMA), rows_read=frame.height, format="synthetic")
    _refuse_clashes(conn, [(source, result)], schema, force)
    return _write(conn, [(source, result)], schema, wait_lock)
