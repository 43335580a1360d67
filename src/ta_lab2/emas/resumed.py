"""The resume path of an EMA refresh (the daily case): read only the grid rows after each
series' newest stored row, and the canonical closes among them, and step every series from the
ends its state row keeps (:func:`ta_lab2.emas.resume.resume_rows`: numpy, no kernel, no
numba); a series without rows whose seed's closes are now all there starts from its seed."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.changes import rows_from
from ta_lab2.db.bulk import array_params
from ta_lab2.db.reads import read_frame
from ta_lab2.db.tables import BARS_1D
from ta_lab2.emas.changes import (CANON_SCHEMA, END_OF_TIME, GRID_SCHEMA, SERIES_SCHEMA, Changes, Inputs,
                                  RefreshOptions, ends_columns)
from ta_lab2.emas.registry import REFRESHERS
from ta_lab2.emas.resume import Ends, resume_rows, seed_value
from ta_lab2.emas.series import DUAL_SCHEMA, EMA_SCHEMA, Grid, canonical_closes, canonical_mask, frame_of_rows
from ta_lab2.frames import epoch_us, instants, tuples_frame
from ta_lab2.load.source_schema import UTC_US
from ta_lab2.work.units import by_id

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

log = logging.getLogger(__name__)


def resumed_rows(conn: psycopg.Connection, options: RefreshOptions, resumed: Sequence[Changes],
                 dormant: pl.DataFrame, inputs: Inputs) -> tuple[pl.DataFrame, list[Changes], list[Changes]]:
    """The new rows of the ``resumed`` ids' series — stepped from their ends over the grid rows
    after them, or, for a series without rows whose seed's closes are now all there, from its
    seed on its first row —, those ids' changes narrowed to these series, and the ids to
    recompute after all (a seed the stepper cannot place: a missing close in its window, or its
    first row before the rows read).

    A series that has no row and still cannot start is left out of the narrowed changes: it
    has nothing to delete, write or update (its state row stays as it is, see
    :func:`ta_lab2.emas.writes.write_state`), and in a young universe such series are most of
    an EMA table's (95 % of a calendar table's on 100 assets of ~190 days)."""
    refresher = REFRESHERS[options.refresher]
    kind = refresher.kind
    tf_days = options.tf_days
    ids = [c.id for c in resumed]
    # each id's grid rows after the oldest of its series' newest rows, and how many precede them
    starts: dict[int, dt.datetime] = {}
    for c in resumed:
        lasts = [inputs.last_ts[(c.id, tf, p)] for tf, p in c.cuts]
        starts[c.id] = min(lasts) + dt.timedelta(microseconds=1) if lasts else END_OF_TIME
    changed_tfs = {tf for c in resumed for tf, _ in c.cuts} | set(dormant["tf"].unique().to_list())
    bar_tfs = sorted(tf for tf in changed_tfs if tf != "1D") if kind != "v2" else []
    tails, before, canon_of = _read_tails(conn, options, starts, bar_tfs)
    n_grid = {i: before.get(i, 0) + (tails[i].height if i in tails else 0) for i in ids}
    new_closes = [(i, tf) for i, part in canon_of.items() for tf in part["tf"].unique().to_list()]
    starting = _seeding(conn, options, resumed, dormant, n_grid, new_closes)
    seeds = _seeds(conn, options, list(starting.select(list(SERIES_SCHEMA)).iter_rows()))
    # A seed's first row may precede the rows read (an id none of whose series had rows reads
    # none): those ids' rows are read again from their earliest seed, so they step like the
    # others instead of being recomputed whole (which would load the kernel for one id).
    earlier: dict[int, int] = {}
    for (ident, _, _), (first_us, value) in seeds.items():
        if first_us is not None and not np.isnan(value) and first_us < epoch_us(starts[ident]):
            earlier[ident] = min(first_us, earlier.get(ident, first_us))
    if earlier:
        again_from = {i: _EPOCH + dt.timedelta(microseconds=us) for i, us in earlier.items()}
        more_tails, more_before, more_canon = _read_tails(conn, options, again_from, bar_tfs)
        for ident in earlier:
            tails.pop(ident, None)
            canon_of.pop(ident, None)
        tails.update(more_tails)
        before.update(more_before)
        canon_of.update(more_canon)
    tail_ts = {i: t["timestamp"].dt.epoch("us").to_numpy() for i, t in tails.items()}
    # a seed is placed on its first row, which must be among the rows read
    fallback: set[int] = set()
    placed: dict[tuple[int, str, int], tuple[int, float]] = {}
    for key, (first_us, value) in seeds.items():
        ts = tail_ts.get(key[0], np.zeros(0, np.int64))
        at = int(np.searchsorted(ts, first_us)) if first_us is not None else ts.size
        if np.isnan(value) or at >= ts.size or ts[at] != first_us:
            fallback.add(key[0])
        else:
            placed[key] = (at, value)
    again = [c for c in resumed if c.id in fallback]
    log.debug("%s: %d series start from their seed; %d ids recomputed instead", options.refresher, len(placed),
              len(again))
    stepped: list[Changes] = []
    series: list[tuple[int, str, int]] = []
    # the cut of each series that starts from its seed (its id's cut for its timeframe)
    seeded_cuts: dict[int, dict[tuple[str, int], dt.datetime | None]] = {}
    for ident, tf, period, cut in zip(starting["id"].to_list(), starting["tf"].to_list(),
                                      starting["period"].to_list(), instants(starting["cut"])):
        if (ident, tf, period) in placed:
            seeded_cuts.setdefault(ident, {})[(tf, period)] = cut
    for c in resumed:
        if c.id in fallback:
            continue
        more = seeded_cuts.get(c.id)
        cuts = dict(sorted({**c.cuts, **more}.items())) if more else c.cuts
        stepped.append(Changes(c.id, c.watermark, cuts))
        series.extend((c.id, tf, p) for tf, p in cuts)
    if not series:
        return pl.DataFrame(schema=DUAL_SCHEMA if kind == "dual" else EMA_SCHEMA), stepped, again
    # the tails of the ids, concatenated in id order; per (id, tf) its canonical flags there
    close_parts, flag_parts = [], []
    offset: dict[int, int] = {}
    pair_at: dict[tuple[int, str], int] = {}
    n_rows = n_flags = 0
    tfs_of: dict[int, dict[str, None]] = {}  # per id, its series' timeframes in order
    for ident, tf, _ in series:
        tfs_of.setdefault(ident, {})[tf] = None
    for ident, tfs in tfs_of.items():
        ts = tail_ts.get(ident, np.zeros(0, np.int64))
        offset[ident] = n_rows
        close_parts.append(tails[ident]["close"].to_numpy() if ident in tails else np.zeros(0))
        n_rows += ts.size
        grid = Grid(ident, ts, close_parts[-1])
        closes_by_tf = canonical_closes(canon_of.get(ident, pl.DataFrame(schema=CANON_SCHEMA)))
        for tf in tfs:
            if kind == "v2":
                flags = (before.get(ident, 0) + np.arange(ts.size) + 1) % tf_days[tf] == 0
            else:
                flags = canonical_mask(grid, closes_by_tf, tf)
            pair_at[(ident, tf)] = n_flags
            flag_parts.append(flags)
            n_flags += ts.size
    ts_all = np.concatenate([tail_ts.get(i, np.zeros(0, np.int64)) for i in offset])
    frame = tuples_frame(series, SERIES_SCHEMA).join(
        inputs.state, on=list(SERIES_SCHEMA), how="left", maintain_order="left")
    last_us = frame["last_ts"].dt.epoch("us").to_numpy()
    sid = frame["id"].to_numpy()
    stf = frame["tf"].to_list()
    ids_of = sid.tolist()
    lo = np.array([offset[i] for i in ids_of], dtype=np.int64)
    n = np.array([tail_ts[i].size if i in tail_ts else 0 for i in ids_of], dtype=np.int64)
    # each series steps from the row after its newest stored row: one search per id (an id's
    # series are consecutive), or from its seed's row
    skip = np.zeros(len(series), dtype=np.int64)
    cuts_at = np.flatnonzero(np.diff(sid)) + 1
    for a, b in zip((0, *cuts_at.tolist()), (*cuts_at.tolist(), len(series))):
        rows = ts_all[lo[a]:lo[a] + n[a]]
        skip[a:b] = np.searchsorted(rows, last_us[a:b], side="right")
    seed = np.full(len(series), np.nan)
    if placed:
        position = {key: j for j, key in enumerate(series)}
        for key, (at, value) in placed.items():
            if key in position:
                skip[position[key]], seed[position[key]] = at, value
    first = lo + skip
    count = n - skip
    canon_first = np.array([pair_at[pair] for pair in zip(ids_of, stf)], dtype=np.int64) + skip
    periods = frame["period"].to_numpy().astype(np.int64)
    n_days = np.array([tf_days[t] for t in stf], dtype=np.int64)
    ends = Ends(n_days, periods, *(frame[c].to_numpy().astype(np.float64) for c in ends_columns(kind) if c != "canon_ts"))
    out = resume_rows(kind, np.concatenate(close_parts), np.concatenate(flag_parts), first, count, canon_first, ends,
                      seed)
    j = out["series"]
    return frame_of_rows(kind, sid[j], stf, j, ts_all[out["row"]], periods[j], n_days[j], out["roll"],
                         {c: v for c, v in out.items() if c not in ("series", "row", "roll")}), stepped, again


def _read_tails(conn: psycopg.Connection, options: RefreshOptions, starts: Mapping[int, dt.datetime],
                bar_tfs: Sequence[str]) -> tuple[dict[int, pl.DataFrame], dict[int, int], dict[int, pl.DataFrame]]:
    """Per id of ``starts``: its grid rows from that instant on, how many rows precede them,
    and the canonical closes (of ``bar_tfs``) among them."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    from_frame = pl.DataFrame({"id": list(starts), "from_ts": list(starts.values())},
                              schema={"id": pl.Int32, "from_ts": UTC_US})
    tail, before = rows_from(conn, sql.Identifier(s, BARS_1D), {"id": pl.Int32(), **GRID_SCHEMA}, from_frame)
    canon = pl.DataFrame(schema={"id": pl.Int32(), **CANON_SCHEMA})
    if bar_tfs:
        canon = read_frame(
            # one index range probe per id (OFFSET 0: never a hash join over the whole table)
            conn, sql.SQL("(SELECT c.id, b.tf, b.time_close FROM unnest(%b, %b) AS c(id, from_ts) CROSS JOIN LATERAL "
                          "(SELECT tf, time_close FROM {b} WHERE id = c.id AND tf = ANY(%b) AND NOT is_partial_end "
                          "AND time_close >= c.from_ts OFFSET 0) b) r")
            .format(b=sql.Identifier(s, refresher.bar_table)),
            {"id": pl.Int32(), **CANON_SCHEMA},
            [*array_params(conn, from_frame, ("int4", "timestamptz")),
             *array_params(conn, pl.DataFrame({"tf": list(bar_tfs)}), ("text",))],
            small=True, order_by=("id", "tf", "time_close"))
    return by_id(tail), before, by_id(canon)


def _seeding(conn: psycopg.Connection, options: RefreshOptions, resumed: Sequence[Changes], dormant: pl.DataFrame,
             n_grid: Mapping[int, int], new_closes: Sequence[tuple[int, str]]) -> pl.DataFrame:
    """The ``dormant`` series (id, tf, period, cut: changed, no row yet) that now have the
    closes their seed needs (spec 03: ``p`` canonical closes; v2: ``n_days·p`` grid rows), in
    ``dormant``'s order. Canonical closes are counted in the bar table (index-only, at most
    ``p``) — unless the (id, tf) has a resumed series with rows and no canonical close among
    the rows read (``new_closes``): its count is then the last refresh's, which was short (a
    close added earlier would have cut that series before its newest row, and its id would not
    be resumed)."""
    refresher = REFRESHERS[options.refresher]
    if dormant.is_empty():
        return dormant
    tf_days = pl.DataFrame({"tf": list(options.tf_days), "n_days": list(options.tf_days.values())},
                           schema={"tf": pl.String(), "n_days": pl.Int64()})
    grid = pl.DataFrame({"id": list(n_grid), "n_grid": list(n_grid.values())},
                        schema={"id": pl.Int32(), "n_grid": pl.Int64()})
    pair = {"id": pl.Int32(), "tf": pl.String()}
    seeded = tuples_frame(list(dict.fromkeys((c.id, tf) for c in resumed for tf, _ in c.cuts)), pair)
    fresh = tuples_frame(new_closes, pair)
    frame = dormant.with_row_index("_at").join(tf_days, on="tf", how="left").join(grid, on="id", how="left")
    by_grid = (pl.col("tf") == "1D") | (refresher.kind == "v2")
    need = pl.col("n_days") * pl.col("period") if refresher.kind == "v2" else pl.col("period").cast(pl.Int64)
    direct = frame.filter(by_grid & (pl.col("n_grid").fill_null(0) >= need))
    # a timeframe none of whose series has rows, or with canonical closes among the rows read
    counted = (frame.filter(~by_grid)
               .join(seeded.with_columns(_seeded=pl.lit(True)), on=["id", "tf"], how="left")
               .join(fresh.with_columns(_fresh=pl.lit(True)), on=["id", "tf"], how="left")
               .filter(pl.col("_seeded").is_null() | pl.col("_fresh").fill_null(False)))
    if counted.height:
        # per (id, tf): its largest period without rows
        caps = counted.group_by("id", "tf", maintain_order=True).agg(cap=pl.col("period").max())
        n_closes = tuples_frame(conn.execute(
            sql.SQL("SELECT u.id, u.tf, (SELECT count(*) FROM (SELECT 1 FROM {b} WHERE id = u.id AND tf = u.tf "
                    "AND NOT is_partial_end LIMIT u.cap) x) FROM unnest(%s::int[], %s::text[], %s::int[]) "
                    "AS u(id, tf, cap)").format(b=sql.Identifier(options.schema, refresher.bar_table)),
            (caps["id"].to_list(), caps["tf"].to_list(), caps["cap"].to_list()),
        ).fetchall(), {**pair, "n_closes": pl.Int64()})
        counted = counted.join(n_closes, on=["id", "tf"], how="left").filter(pl.col("n_closes") >= pl.col("period"))
    return pl.concat([direct.select(dormant.columns + ["_at"]), counted.select(dormant.columns + ["_at"])]
                     ).sort("_at").drop("_at")


def _seeds(conn: psycopg.Connection, options: RefreshOptions,
           series: Sequence[tuple[int, str, int]]) -> dict[tuple[int, str, int], tuple[int | None, float]]:
    """Per series, the instant (epoch µs) of its first row and its seed there: the mean of its
    first ``p`` canonical closes (v2: of its first ``n_days·p`` grid closes), NaN when one of
    them is missing. The closes are the grid's, at the bars' ``time_close``."""
    if not series:
        return {}
    refresher = REFRESHERS[options.refresher]
    tf_days = options.tf_days
    daily = sql.Identifier(options.schema, BARS_1D)
    by_grid = [k for k in series if refresher.kind == "v2" or k[1] == "1D"]
    by_bars = [k for k in series if k not in set(by_grid)]
    found: list[tuple[int, list[float], dt.datetime | None]] = []
    if by_grid:
        need = [tf_days[tf] * p if refresher.kind == "v2" else p for _, tf, p in by_grid]
        found += conn.execute(
            sql.SQL("SELECT u.i, array_agg(d.close ORDER BY d.\"timestamp\"), max(d.\"timestamp\") "
                    "FROM unnest(%s::int[], %s::int[], %s::int[]) AS u(id, n, i) CROSS JOIN LATERAL "
                    "(SELECT \"timestamp\", close FROM {d} WHERE id = u.id ORDER BY \"timestamp\" LIMIT u.n) d "
                    "GROUP BY u.i").format(d=daily),
            ([k[0] for k in by_grid], need, list(range(len(by_grid))))).fetchall()
    if by_bars:
        base = len(by_grid)
        found += conn.execute(
            sql.SQL("SELECT u.i, array_agg(d.close ORDER BY b.time_close), max(b.time_close) "
                    "FROM unnest(%s::int[], %s::text[], %s::int[], %s::int[]) AS u(id, tf, p, i) CROSS JOIN LATERAL "
                    "(SELECT time_close FROM {b} WHERE id = u.id AND tf = u.tf AND NOT is_partial_end "
                    "ORDER BY time_close LIMIT u.p) b JOIN {d} d ON d.id = u.id AND d.\"timestamp\" = b.time_close "
                    "GROUP BY u.i").format(b=sql.Identifier(options.schema, refresher.bar_table), d=daily),
            ([k[0] for k in by_bars], [k[1] for k in by_bars], [k[2] for k in by_bars],
             list(range(base, base + len(by_bars))))).fetchall()
    keys = [*by_grid, *by_bars]
    size = {k: tf_days[k[1]] * k[2] if refresher.kind == "v2" else k[2] for k in keys}
    out: dict[tuple[int, str, int], tuple[int | None, float]] = {k: (None, float("nan")) for k in keys}
    for i, closes, last in found:
        window = np.array(closes, dtype=np.float64)
        if window.size == size[keys[i]] and not np.isnan(window).any():
            out[keys[i]] = (epoch_us(last), seed_value(window))
    return out
