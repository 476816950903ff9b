"""The accuracy sweep: its measurements, its mpmath reference, a small end-to-end run, and the
committed ACCURACY.md (written by the command, covering every swept op of the catalog)."""

from __future__ import annotations

import math
from pathlib import Path

import mpmath
import numpy as np
import pytest

from symgrad import accuracy
from symgrad.render import all_specs

ROOT = Path(__file__).resolve().parent.parent


def test_measure_counts_ulps_against_a_double_double_reference():
    x = np.linspace(1, 2, 9)
    hi = np.array([1.0, 1.5, 2.0, 1e-300, 3.0, 0.5, 7.0, 1.25, 1.75])
    lo = np.zeros_like(hi)
    got = hi.copy()
    got[1] = np.nextafter(np.nextafter(hi[1], 2), 2)  # 2 ULP above
    got[6] = np.inf  # a finite true value, an infinite output
    r = accuracy.measure("op", "forward", "float64", "forward", x, got, hi, lo,
                         np.ones(9, dtype=bool))
    assert r.max_ulp == pytest.approx(2.0)
    assert r.nonfinite == 1 and "got inf" in r.nonfinite_example
    # lo carries what float64 cannot: the error of an exact float64 answer is |lo| in ULPs.
    lo[4] = 0.25 * np.spacing(3.0)
    r = accuracy.measure("op", "forward", "float64", "forward", x, hi, hi, lo,
                         np.ones(9, dtype=bool))
    assert r.max_ulp == pytest.approx(0.25)
    # float32: ULPs of float32, from the float64 reference.
    got32 = np.float32(1.5) + np.spacing(np.float32(1.5)) * 3
    r = accuracy.measure("op", "f", "float32", "forward", x[:1], np.array([got32]),
                         np.array([1.5]), np.zeros(1), np.ones(1, dtype=bool))
    assert r.max_ulp == pytest.approx(3.0)


def test_scaled_error_uses_the_largest_true_value_nearby():
    """A true 0 next to values of size 1: an error of 2^-52 is one ULP of the local scale."""
    x = np.arange(5.0)
    hi = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    got = hi.copy()
    got[2] = 2.0**-52
    r = accuracy.measure("op", "f", "float64", "forward", x, got, hi, np.zeros(5),
                         np.ones(5, dtype=bool))
    assert r.max_scaled == pytest.approx(1.0)


def test_reference_keeps_its_digits_where_the_textbook_form_cancels():
    """softplus(-200) = log(1 + e^-200) is 0 at 50 digits as written; the reference is right."""
    (row,) = accuracy._elementwise_chunk(("softplus", [-200.0]))
    with mpmath.workdps(300):
        exact = float(mpmath.log(1 + mpmath.exp(-200)))
    assert row[0] == pytest.approx(exact, rel=1e-15) and row[0] > 0
    (row,) = accuracy._elementwise_chunk(("elu", [-1e-60]))
    assert row[0] == pytest.approx(-1e-60, rel=1e-15)


@pytest.mark.parametrize("op,x,value,deriv", [
    ("sigmoid", -math.inf, 0.0, 0.0), ("sigmoid", math.inf, 1.0, 0.0),
    ("tanh", math.inf, 1.0, 0.0), ("softplus", math.inf, math.inf, 1.0),
    ("relu", -math.inf, 0.0, 0.0),
])
def test_reference_limits_at_infinity(op, x, value, deriv):
    (row,) = accuracy._elementwise_chunk((op, [x]))
    assert row[0] == value and row[2] == deriv


def test_points_cover_the_range_and_the_specials():
    for dtype in ("float32", "float64"):
        fi = np.finfo(dtype)
        pts = accuracy.elementwise_points(dtype, 5000, [20.0])
        assert pts.dtype == dtype and np.isfinite(pts).all()
        assert pts.size >= 5000
        mags = np.abs(pts[pts != 0])
        assert mags.min() <= fi.smallest_subnormal * 2 and mags.max() == fi.max
        assert (pts < 0).any() and (np.signbit(pts) & (pts == 0)).any()
        assert np.float64(np.nextafter(fi.dtype.type(20), fi.dtype.type(30))) in pts
        # log-uniform: every decade of the range has points
        decades = np.floor(np.log10(mags))
        assert len(set(decades)) > 0.9 * (np.log10(fi.max) - np.log10(fi.smallest_subnormal))


def test_small_sweep_end_to_end(tmp_path):
    """sigmoid and relu meet the targets; sigmoid's y-form is measured ill-conditioned."""
    out = tmp_path / "ACCURACY.md"
    rc = accuracy.main(["sigmoid", "relu", "--points", "600", "--jobs", "1", "--out", str(out)])
    text = out.read_text()
    assert rc == 0, text
    for needle in ("# Accuracy of the generated kernels", "## Kernels that miss a target",
                   "| sigmoid | forward | float32 |", "| relu | backward(x=) | float64 |",
                   "| sigmoid | backward(y=) | float32 |", "reference vs textbook form"):
        assert needle in text, needle
    row = next(line for line in text.splitlines()
               if line.startswith("| sigmoid | float32 |"))  # the y-form conditioning table
    assert "x: g(round(y)) is off by up to" in row


def test_rowwise_sweep_measures_forward_and_vjp():
    spec = next(s for s in all_specs() if s.name == "log_softmax")
    results, _ = accuracy.sweep_rowwise(spec, ["float64"], 400, 1)
    by_form = {r.form: r for r in results}
    assert set(by_form) == {"forward", "backward(y=)", "fused y", "fused grad"}
    assert all(r.points >= 400 and r.nonfinite == 0 for r in results)
    # The VJP g - e^y Σg cancels; against the size of the terms it sums it is accurate.
    assert by_form["backward(y=)"].max_scaled <= accuracy.TARGETS["backward"]
    assert not any("nan" in f and "[nan" in f.split("want")[1]
                   for f in by_form["forward"].special_failures)


def test_unknown_op_is_a_usage_error(capsys):
    assert accuracy.main(["nope", "--points", "100"]) == 2
    assert "unknown op(s) nope" in capsys.readouterr().err


def test_committed_report_covers_every_swept_op():
    """ACCURACY.md is written by `python -m symgrad accuracy`; after adding an op, run it."""
    text = (ROOT / "ACCURACY.md").read_text()
    assert text.startswith("# Accuracy of the generated kernels")
    assert "Written by `python -m symgrad accuracy`" in text
    swept = [s.name for s in all_specs() if s.kind in accuracy.SWEEPS]
    missing = [name for name in swept if f"| {name} | forward" not in text]
    assert not missing, f"ACCURACY.md is stale, run `python -m symgrad accuracy`: {missing}"
