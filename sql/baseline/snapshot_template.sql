-- =============================================================================
-- File: sql/baseline/snapshot_template.sql
-- Purpose: reference for what `ta-lab2 baseline capture`
--          (src/ta_lab2/scripts/baseline/capture_baseline.py) does in the database.
--          Not executed: the code generates these statements (src/ta_lab2/baseline/snapshots.py)
--          with identifiers quoted by psycopg.sql.Identifier and ids as bound parameters.
-- =============================================================================

-- The 12 tables (6 bar + 6 EMA), each snapshotted as <table>_snapshot_<YYYYMMDD_HHMMSS>
-- (UTC; the suffix comes from the capture's single clock read):
--
-- Bar tables                                   primary key (read from the catalog)
--   public.cmc_price_bars_1d                    (id, "timestamp")
--   public.cmc_price_bars_multi_tf              (id, tf, bar_seq, time_close)
--   public.cmc_price_bars_multi_tf_cal_iso      (id, tf, bar_seq, time_close)
--   public.cmc_price_bars_multi_tf_cal_us       (id, tf, bar_seq, time_close)
--   public.cmc_price_bars_multi_tf_cal_anchor_iso (id, tf, bar_seq, time_close)
--   public.cmc_price_bars_multi_tf_cal_anchor_us  (id, tf, bar_seq, time_close)
--
-- EMA tables
--   public.cmc_ema_multi_tf                     (id, tf, period, ts)
--   public.cmc_ema_multi_tf_v2                  (id, tf, period, ts)
--   public.cmc_ema_multi_tf_cal_us              (id, tf, period, ts)
--   public.cmc_ema_multi_tf_cal_iso             (id, tf, period, ts)
--   public.cmc_ema_multi_tf_cal_anchor_us       (id, tf, period, ts)
--   public.cmc_ema_multi_tf_cal_anchor_iso      (id, tf, period, ts)
--
-- The longest snapshot name is exactly 63 bytes (PostgreSQL's identifier limit):
--   cmc_price_bars_multi_tf_cal_anchor_iso_snapshot_20260205_143022
-- State tables (<table>_state) and cmc_price_bars_1d_rejects have longer names, so their
-- copies keep their own names inside a per-capture schema baseline_<suffix>, recorded in
-- public.baseline_snapshots (the registry). Nothing is ever silently truncated.

-- 1. Snapshot: one REPEATABLE READ transaction, so every copy shows the same instant.
--    On a machine with two or more CPUs the capture splits the largest tables between this
--    transaction and a second one on another connection that adopts this one's snapshot
--    (same instant), so two cores copy at once; the second commits only when both sides
--    succeeded, then this one (docs/decisions.md, 66):
--      -- first connection:                  -- second connection:
--      BEGIN ISOLATION LEVEL REPEATABLE READ;
--      SELECT pg_export_snapshot();          BEGIN ISOLATION LEVEL REPEATABLE READ;
--                                            SET TRANSACTION SNAPSHOT '00000003-0000001B-1';
--    Every copy is made in key order (ORDER BY the primary key): its primary key is then
--    built from presorted rows, and the compare merges the two tables' index scans.
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE SCHEMA baseline_20260205_143022;

CREATE TABLE public.cmc_price_bars_1d_snapshot_20260205_143022 WITH (autovacuum_enabled = false)
    AS SELECT * FROM public.cmc_price_bars_1d WHERE id = ANY(ARRAY[1, 52, 825])  -- no WHERE for --ids all
    ORDER BY id, "timestamp";
ALTER TABLE public.cmc_price_bars_1d_snapshot_20260205_143022
    ADD CONSTRAINT bs20260205_143022_01_pk PRIMARY KEY (id, "timestamp");

CREATE TABLE public.cmc_price_bars_multi_tf_snapshot_20260205_143022 WITH (autovacuum_enabled = false)
    AS SELECT * FROM public.cmc_price_bars_multi_tf WHERE id = ANY(ARRAY[1, 52, 825])
    ORDER BY id, tf, bar_seq, time_close;
ALTER TABLE public.cmc_price_bars_multi_tf_snapshot_20260205_143022
    ADD CONSTRAINT bs20260205_143022_02_pk PRIMARY KEY (id, tf, bar_seq, time_close);

CREATE TABLE public.cmc_ema_multi_tf_snapshot_20260205_143022 WITH (autovacuum_enabled = false)
    AS SELECT * FROM public.cmc_ema_multi_tf WHERE id = ANY(ARRAY[1, 52, 825])
    ORDER BY id, tf, period, ts;
ALTER TABLE public.cmc_ema_multi_tf_snapshot_20260205_143022
    ADD CONSTRAINT bs20260205_143022_07_pk PRIMARY KEY (id, tf, period, ts);
-- … the same for the other 9 tables …

CREATE TABLE baseline_20260205_143022.cmc_ema_multi_tf_cal_anchor_iso_state
    AS SELECT * FROM public.cmc_ema_multi_tf_cal_anchor_iso_state WHERE id = ANY(ARRAY[1, 52, 825]);
-- … every state table and cmc_price_bars_1d_rejects …

-- verification, in the same transaction: every copy's count equals the source's for those ids
SELECT count(*) FROM public.cmc_price_bars_1d_snapshot_20260205_143022;
SELECT count(*) FROM public.cmc_price_bars_1d WHERE id = ANY(ARRAY[1, 52, 825]);
COMMIT;

-- 2. Truncate (only after every snapshot is committed and verified), bars first, then EMAs.
--    --ids all:
TRUNCATE public.cmc_price_bars_1d, public.cmc_price_bars_1d_state, /* … */ public.cmc_price_bars_1d_rejects;
--    a subset: only those ids, never the others'
DELETE FROM public.cmc_price_bars_1d WHERE id = ANY(ARRAY[1, 52, 825]);
DELETE FROM public.cmc_price_bars_1d_state WHERE id = ANY(ARRAY[1, 52, 825]);
-- … every table and state table …

-- 3. Rebuild: run_all_bar_builders.py --ids … --full-rebuild, then
--    run_all_ema_refreshes.py --ids … --full-refresh (subprocesses; URL in the environment).

-- 4. Compare, in the database: full outer join on the key for coverage …
SELECT count(*) FILTER (WHERE s_present AND NOT r_present) AS only_in_snapshot,
       count(*) FILTER (WHERE r_present AND NOT s_present) AS only_in_rebuilt
FROM (SELECT id, tf, period, ts, TRUE AS s_present FROM public.cmc_ema_multi_tf_snapshot_20260205_143022) s
FULL JOIN (SELECT id, tf, period, ts, TRUE AS r_present FROM public.cmc_ema_multi_tf
           WHERE id = ANY(ARRAY[1, 52, 825])) r USING (id, tf, period, ts);
-- … then every column of the sampled keys: floats with |a − b| ≤ max(rtol·max(|a|,|b|), atol),
-- everything else with IS DISTINCT FROM.

-- Restore (`ta-lab2 baseline restore <suffix>`), one transaction for all tables:
BEGIN;
DELETE FROM public.cmc_price_bars_1d WHERE id = ANY(ARRAY[1, 52, 825]);
INSERT INTO public.cmc_price_bars_1d SELECT * FROM public.cmc_price_bars_1d_snapshot_20260205_143022;
-- … every table, state table and the 1D rejects …
COMMIT;
