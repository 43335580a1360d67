"""The EMA step, written once (spec 03 §1): the value after ``prev`` for a new input ``x`` is
``α·x + (1−α)·prev``.

The kernel (:mod:`ta_lab2.emas.kernel`, compiled with numba, one series at a time) and the
resume path (:mod:`ta_lab2.emas.resume`, numpy, many series at once) both call
:func:`ema_step`, so both evaluate the same operations in the same order; in IEEE float64
without contraction (numba compiles without fast-math; numpy never fuses) the results are
bit-identical, which tests/test_ema_resume.py checks value for value. Pure Python, so that an
incremental refresh that only resumes series never imports numba.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def ema_step(alpha: T, x: T, prev: T) -> T:
    """``alpha·x + (1−alpha)·prev`` for floats or numpy arrays (element-wise); NaN in, NaN out."""
    return alpha * x + (1.0 - alpha) * prev  # type: ignore[operator]
