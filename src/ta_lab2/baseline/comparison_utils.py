"""The comparison rules of a baseline capture, defined once and rendered as the SQL that runs.

* **Detection**: a cell differs when its two values are not bit-identical. PostgreSQL's
  ``IS DISTINCT FROM`` treats ``+0.0`` and ``-0.0`` as equal (and NaN as equal to NaN), so a
  float cell also differs when both sides are zero with different signs.
* **Hybrid tolerance** (floats): ``|a − b| ≤ max(rtol · max(|a|, |b|), atol)`` — symmetric, as
  in PEP 485 ``math.isclose`` (not ``numpy.isclose``, which is asymmetric). NULL vs NULL and
  NaN vs NaN match; NULL vs a value never matches. Every other type compares exactly.
* **Severity** of a differing cell: CRITICAL for NULL vs value, NaN vs value, ±inf vs another
  value, any non-float difference, or a relative difference ``|a − b| / max(|a|, |b|)`` above
  1 %; WARNING outside the tolerance but at most 1 %; INFO inside the tolerance (not
  bit-identical), or matched by the expected-differences allow-list. A row present on one
  side only is CRITICAL. In a *level* column (a price, an EMA, a volume: every float column
  but the differences) the 1 % rule comes first: ``atol`` never excuses a change above 1 %
  (a price of 2e-7 against 1e-7 is CRITICAL, not inside the default ``atol`` of 1e-6). In a
  *difference* column (``d1``, ``d2`` and their ``_roll`` / ``_bar`` forms), whose values sit
  near zero where a relative difference says nothing, the tolerance comes first
  (:func:`is_difference_column`).
* A table **passes** when it has no CRITICAL or WARNING difference and equal row counts.

:func:`cell_rule` is the only place these rules are written; the tests check the SQL it
produces against :func:`math.isclose` at the boundaries.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

from psycopg import sql

CRITICAL, WARNING, INFO = "CRITICAL", "WARNING", "INFO"
SEVERITIES = (CRITICAL, WARNING, INFO)
CRITICAL_REL = 0.01  # relative difference above which a float difference is CRITICAL
#: audit columns that record when a row was written, not what it holds: never compared
VOLATILE_COLUMNS = frozenset({"ingested_at", "rejected_at", "updated_at"})
FLOAT_TYPES = frozenset({"float8", "float4", "numeric"})


def is_difference_column(column: str) -> bool:
    """Whether ``column`` holds differences of a series (``d1``, ``d2``, ``d1_roll``, …), whose
    tolerance comes before the 1 % rule (see the module docstring)."""
    return re.match(r"d[12](_|$)", column) is not None


def severity_rank(severity: str) -> sql.Composable:
    """A severity as the SQL integer a :class:`CellRule` ranks it by: its index in
    :data:`SEVERITIES`."""
    return sql.Literal(SEVERITIES.index(severity))


_RANKS = {name.lower(): severity_rank(name) for name in SEVERITIES}


@dataclass(frozen=True)
class Tolerance:
    """``rtol`` (relative, dimensionless) and ``atol`` (absolute, in the column's unit); both
    finite and non-negative."""

    rtol: float
    atol: float

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} = {value!r} is not a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} = {value!r} must be a finite number ≥ 0")


#: The seed's per-column defaults: prices, EMA values and derivatives 1e-5/1e-6; volume and
#: market cap 1e-4/1e-2.
PRICE_TOL = Tolerance(1e-5, 1e-6)
VOLUME_TOL = Tolerance(1e-4, 1e-2)
VOLUME_COLUMNS = frozenset({"volume", "market_cap", "marketcap"})


def default_tolerance(column: str) -> Tolerance:
    return VOLUME_TOL if column in VOLUME_COLUMNS else PRICE_TOL


@dataclass(frozen=True)
class Tolerances:
    """Built-in defaults, overridable per column and per table.column (``--tolerances`` TOML:
    ``[default]``, ``[columns.<column>]``, ``[tables.<table>.<column>]``, keys ``rtol``/``atol``)."""

    default: Tolerance | None = None
    columns: Mapping[str, Tolerance] = field(default_factory=dict)
    tables: Mapping[str, Mapping[str, Tolerance]] = field(default_factory=dict)

    def for_column(self, table: str, column: str) -> Tolerance:
        if column in self.tables.get(table, {}):
            return self.tables[table][column]
        if column in self.columns:
            return self.columns[column]
        return self.default or default_tolerance(column)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Tolerances":
        """Parse the TOML mapping; a ``ValueError`` names the section, the key and the value."""

        def tol(d: Any, where: str) -> Tolerance:
            if not isinstance(d, Mapping) or "rtol" not in d or "atol" not in d:
                raise ValueError(f"{where} needs numeric 'rtol' and 'atol'")
            values = {}
            for key in ("rtol", "atol"):
                value = d[key]
                try:
                    number = float(value) if not isinstance(value, bool) else math.nan
                except (TypeError, ValueError):
                    number = math.nan
                if not math.isfinite(number) or number < 0:
                    raise ValueError(f"{where} {key} = {value!r}: must be a finite number ≥ 0")
                if key == "rtol" and number > CRITICAL_REL:
                    raise ValueError(f"{where} rtol = {value!r}: at most {CRITICAL_REL} — a difference above 1 % "
                                     "is CRITICAL, so no tolerance may call it close")
                values[key] = number
            return Tolerance(values["rtol"], values["atol"])

        unknown = set(data) - {"default", "columns", "tables"}
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; use [default], [columns.X], [tables.T.X]")
        default = tol(data["default"], "[default]") if "default" in data else None
        columns = {c: tol(v, f"[columns.{c}]") for c, v in data.get("columns", {}).items()}
        tables = {t: {c: tol(v, f"[tables.{t}.{c}]") for c, v in cols.items()} for t, cols in data.get("tables", {}).items()}
        return cls(default, columns, tables)


@dataclass(frozen=True)
class ExpectedDiff:
    """An intended difference: cells of ``table`` in ``columns`` (all columns when empty;
    optionally only some ids/tfs) are reported as INFO with ``reason`` instead of failing."""

    table: str
    columns: tuple[str, ...]
    reason: str
    ids: tuple[int, ...] = ()
    tfs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sampling:
    """The seed's sampling options. They never decide what is found (detection is over every
    row): they only choose which bit-identical rows count in the mean/std of differences,
    beside every row of a series that differs. ``full``: every row counts."""

    beginning: int = 30
    end: int = 30
    random_pct: float = 0.05
    seed: int = 20250205
    full: bool = False

    def describe(self) -> str:
        if self.full:
            return "nothing sampled: every statistic is over every row"
        return (f"every row compared; the mean/std of differences use every row of a differing series, and of "
                f"each identical series its first {self.beginning} and last {self.end} rows and "
                f"{self.random_pct:.2%} of the others (seed {self.seed})")


class CellRule(NamedTuple):
    """SQL expressions for one column of a row pair ``s`` (snapshot) / ``r`` (rebuilt)."""

    differs: sql.Composable  # boolean: not bit-identical
    #: the severity as its index in :data:`SEVERITIES` (CRITICAL 0, WARNING 1, INFO 2: the
    #: report's order), meaningful where ``differs``. An integer, not text: a capture
    #: classifies millions of cells and compares their severities several times each
    rank: sql.Composable
    abs_diff: sql.Composable  # float8 or NULL
    rel_diff: sql.Composable  # float8 or NULL ('Infinity' when one side is 0)


def zero_sign_differs(a: sql.Composable, b: sql.Composable) -> sql.Composable:
    """True when ``a`` and ``b`` are zeros of different signs (equal as numbers, not as bits)."""
    return sql.SQL("({a} = 0 AND {a}::text <> {b}::text)").format(a=a, b=b)


def bit_differs(a: sql.Composable, b: sql.Composable, kind: str) -> sql.Composable:
    """True when ``a`` and ``b`` are not bit-identical (NULL≡NULL, NaN≡NaN, +0 ≢ −0)."""
    if kind != "float":
        return sql.SQL("({a} IS DISTINCT FROM {b})").format(a=a, b=b)
    return sql.SQL("({a} IS DISTINCT FROM {b} OR {z})").format(a=a, b=b, z=zero_sign_differs(a, b))


def cell_rule(a: sql.Composable, b: sql.Composable, kind: str, tol: Tolerance | None,
              allowed: sql.Composable | None = None, *, level: bool = True) -> CellRule:
    """The rules of the module docstring for one column (``kind`` "float" or "exact"), as SQL.
    ``allowed``: a boolean expression under which a difference is INFO (the allow-list);
    ``level``: a level column (the 1 % rule before the tolerance), not a difference column."""
    differs = bit_differs(a, b, kind)
    if kind == "float":
        assert tol is not None
        scale = sql.SQL("greatest(abs({a}), abs({b}))").format(a=a, b=b)
        absd = sql.SQL("abs({a} - {b})").format(a=a, b=b)
        rel = sql.SQL("({d} / NULLIF({sc}, 0))").format(d=absd, sc=scale)
        # Non-finite values first: PostgreSQL orders NaN above every number and counts NaN = NaN,
        # and inf - x is inf <= rtol * inf, so the arithmetic below would call them close.
        # Infinities are close only to themselves (PEP 485), and those are not "different".
        # (a scale that is not below infinity: a NaN or an infinity on either side)
        # a level's change above 1 % is CRITICAL before the tolerance is asked (rel is NULL for
        # +0.0 against -0.0, which then falls through to INFO)
        first = "WHEN {rel} > {crit} THEN {critical} " if level else ""
        rank: sql.Composable = sql.SQL(
            "CASE WHEN {a} IS NULL OR {b} IS NULL THEN {critical} "
            "WHEN NOT {sc} < 'Infinity' THEN {critical} " + first +
            "WHEN {d} <= greatest({rt} * {sc}, {at}) THEN {info} "
            "WHEN {rel} <= {crit} THEN {warning} ELSE {critical} END"
        ).format(a=a, b=b, d=absd, sc=scale, rel=rel, rt=sql.Literal(tol.rtol), at=sql.Literal(tol.atol),
                 crit=sql.Literal(CRITICAL_REL), **_RANKS)
        rel_v: sql.Composable = sql.SQL("coalesce({rel}, CASE WHEN {d} > 0 THEN 'Infinity'::float8 END)").format(
            rel=rel, d=absd)
        abs_v: sql.Composable = absd
    else:
        rank = _RANKS["critical"]
        abs_v = rel_v = sql.SQL("NULL::float8")
    if allowed is not None:
        rank = sql.SQL("CASE WHEN {m} THEN {info} ELSE {rank} END").format(m=allowed, rank=rank, info=_RANKS["info"])
    return CellRule(differs, rank, abs_v, rel_v)


def allow_list_match(hits: Sequence[ExpectedDiff], alias: str = "s") -> sql.Composable | None:
    """A boolean SQL expression: the row (``alias``) is covered by one of ``hits``."""
    if not hits:
        return None
    conds = []
    for e in hits:
        parts: list[sql.Composable] = [sql.SQL("TRUE")]
        if e.ids:
            parts.append(sql.SQL("{} = ANY({})").format(sql.Identifier(alias, "id"), sql.Literal(list(e.ids))))
        if e.tfs:
            parts.append(sql.SQL("{} = ANY({})").format(sql.Identifier(alias, "tf"), sql.Literal(list(e.tfs))))
        conds.append(sql.SQL("(") + sql.SQL(" AND ").join(parts) + sql.SQL(")"))
    return sql.SQL("(") + sql.SQL(" OR ").join(conds) + sql.SQL(")")


def allowed_for(allow: Sequence[ExpectedDiff], column: str) -> tuple[str, list[ExpectedDiff]] | None:
    """The allow-list entries that cover ``column``, and the reason reported for them."""
    hits = [e for e in allow if not e.columns or column in e.columns]
    return (hits[0].reason, hits) if hits else None
