"""The accuracy sweep: its measurements, its mpmath reference, a small end-to-end run, and the
committed ACCURACY.md (written by the command, covering every swept op of the catalog)."""

from __future__ import annotations

import math
import os
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


def test_elementwise_loss_sweep_judges_the_cancelling_loss_by_its_terms():
    """BCE with logits, x·(1 - t) - log σ(x), cancels near its minimum: measured against the
    size of its terms it is accurate; nan in gives nan out."""
    spec = next(s for s in all_specs() if s.name == "binary_cross_entropy_with_logits")
    results, notes = accuracy.sweep_elementwise_loss(spec, ["float64"], 400, 1)
    by_form = {r.form: r for r in results}
    assert set(by_form) == {"forward (reduction='none')", "backward", "fused loss",
                            "fused grad"}
    for r in results:
        assert r.points >= 400
        assert r.max_scaled <= accuracy.TARGETS[r.role], (r.form, r.max_scaled)
        assert not any("nan" in f.split("want")[1] for f in r.special_failures
                       if "(nan" in f), r.special_failures
    assert any("reference vs textbook form" in n and "(ok)" in n for n in notes)


def test_loss_targets_cover_labels_probabilities_and_cancellation():
    xs = accuracy.elementwise_points("float32", 4000, [])
    ts = accuracy.loss_targets(xs)
    assert ts.dtype == np.float32 and np.isfinite(ts).all()
    assert (ts == 0).any() and (ts == 1).any() and ((ts > 0) & (ts < 1)).any()
    with np.errstate(over="ignore"):
        near = np.abs(ts - xs) <= 8 * np.spacing(np.abs(xs))
    assert near.sum() > len(xs) // 8  # t ≈ x, where x - t cancels


SPEC_FILE = '''
package = "acc_user_kernels"

[activations]
double_sigmoid = "2 * sigmoid(x)"

[losses.square_error]
formula = "(x - t)**2"
reduction = "mean"
'''


def test_sweep_of_a_spec_file_reports_its_ops_and_restores_the_catalog(tmp_path):
    spec = tmp_path / "ops.toml"
    spec.write_text(SPEC_FILE)
    out = tmp_path / "ACCURACY.md"
    rc = accuracy.main(["--spec", str(spec), "--points", "300", "--jobs", "1",
                        "--out", str(out)])
    text = out.read_text()
    assert rc == 0, text
    assert f"--spec {spec}" in text
    for needle in ("| double_sigmoid | forward | float32 |",
                   "| double_sigmoid | backward(y=) | float64 |",
                   "| square_error | forward (reduction='none') | float64 |",
                   "| square_error | fused grad | float32 |"):
        assert needle in text, needle
    assert "| sigmoid |" not in text  # the user's ops only
    import symgrad_kernels

    assert accuracy._kernels() is symgrad_kernels
    assert accuracy.SPEC_FILE_ENV not in os.environ
    assert "sigmoid" in accuracy._catalog()


def test_sweep_of_a_spec_file_refuses_unknown_ops_and_bad_files(tmp_path, capsys):
    spec = tmp_path / "ops.toml"
    spec.write_text(SPEC_FILE)
    assert accuracy.main(["--spec", str(spec), "sigmoid", "--points", "100"]) == 2
    assert "unknown op(s) sigmoid; in the spec file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[activations]\nevil = "__import__(\'os\').system(\'true\')"\n')
    assert accuracy.main(["--spec", str(bad), "--points", "100"]) == 2
    assert "evil" in capsys.readouterr().err
    assert accuracy.SPEC_FILE_ENV not in os.environ


def test_cli_sweeps_a_spec_file(tmp_path, capsys):
    from symgrad.cli import main

    spec = tmp_path / "ops.toml"
    spec.write_text(SPEC_FILE)
    assert main(["accuracy", "--spec", str(spec), "--", "double_sigmoid", "--points", "200",
                 "--jobs", "1", "--dtypes", "float32"]) == 0
    printed = capsys.readouterr().out  # a spec file's report is printed, not written
    assert "| double_sigmoid | forward | float32 |" in printed
    assert not (tmp_path / "ACCURACY.md").exists()


def test_pointwise_loss_sweep_measures_every_gradient():
    """gaussian_nll_loss has two differentiable operands (input, var): both gradients are
    measured, var drawn inside its domain (> 0) and read through its eps clamp."""
    spec = next(s for s in all_specs() if s.name == "gaussian_nll_loss")
    results, notes = accuracy.sweep_pointwise_loss(spec, ["float64"], 300, 1)
    forms = {r.form for r in results}
    assert forms == {"forward (reduction='none')", "fused loss", "backward ∂/∂input",
                     "fused grad ∂/∂input", "backward ∂/∂var", "fused grad ∂/∂var"}
    for r in results:
        assert r.points >= 300 and r.max_scaled <= accuracy.TARGETS[r.role], r
    assert all("(ok)" in n for n in notes if "textbook" in n)


def test_pointwise_operand_points_stay_in_the_domain():
    spec = next(s for s in all_specs() if s.name == "binary_cross_entropy")
    xs = accuracy.elementwise_points("float32", 2000, [])
    for operand in spec.operands:
        if operand.minimum is not None and operand.maximum is not None:
            pts = accuracy.operand_points(operand, xs, seed=1)
            assert pts.dtype == np.float32
            assert pts.min() >= operand.minimum and pts.max() <= operand.maximum
            assert (pts == operand.minimum).any() and (pts == operand.maximum).any()
            assert ((pts > 0) & (pts < 1e-20)).any()  # a hair inside the bound, where log cancels


def test_rowwise_reference_keeps_a_dominated_rows_tiny_log_softmax():
    """log_softmax of the max of [0, -120] is -log1p(e^-120) ≈ -7.7e-53, not 0."""
    (row,) = accuracy._rowwise_chunk(("log_softmax", [[0.0, -120.0]], [[1.0, 1.0]]))
    want = -mpmath.log1p(mpmath.exp(-120))
    assert row[0][0] == pytest.approx(float(want), rel=1e-15)


def test_class_index_sweep_is_exact_for_nll_and_measures_cross_entropy():
    by_op = {}
    for name in ("nll_loss", "cross_entropy"):
        spec = next(s for s in all_specs() if s.name == name)
        results, _ = accuracy.sweep_class_index_loss(spec, ["float64"], 300, 1)
        by_op[name] = {r.form: r for r in results}
    forms = {"forward (reduction='none')", "backward", "fused loss", "fused grad"}
    assert set(by_op["nll_loss"]) == set(by_op["cross_entropy"]) == forms
    # -x_t and -one-hot are exact, also where x_t is far below the row max
    assert all(r.max_ulp == 0 and not r.special_failures for r in by_op["nll_loss"].values())
    assert all(r.points > 0 and r.nonfinite == 0 for r in by_op["cross_entropy"].values())


def test_class_index_reference_of_a_dominated_row():
    """cross_entropy of [0, -60, -80] with target 0 is log1p(e^-60 + e^-80), about 8.8e-27."""
    ((loss_hi, _, scale), grads), = accuracy._class_index_chunk(
        ("cross_entropy", [[0.0, -60.0, -80.0]], [0]))
    want = mpmath.log1p(mpmath.exp(-60) + mpmath.exp(-80))
    assert loss_hi == pytest.approx(float(want), rel=1e-15)
    assert scale == pytest.approx(float(want), rel=1e-6)  # |L| + |x_t| with x_t = 0
    assert grads[0][0] == pytest.approx(-float(want), rel=1e-9)  # softmax_t - 1


def test_references_outside_the_real_domain_are_nan():
    """kl_div's t·log t at a negative target is complex in mpmath: nan, not a crash."""
    (row,) = accuracy._pointwise_chunk(("kl_div", [(0.5, -2.0)], 50))[0]
    assert math.isnan(row[0])
    assert math.isnan(accuracy._eval(lambda t: mpmath.log(t), mpmath.mpf(-2)))
