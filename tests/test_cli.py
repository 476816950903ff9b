"""The command line: help, list/show/latex/plot/bench/accuracy, one-line errors with exit codes,
and `generate` that never loses the previous package (failure, Ctrl-C, two runs at once)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

import symgrad.output as output
from symgrad.cli import Progress, main
from symgrad.spec import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("generate", "list", "show", "latex", "accuracy", "bench", "plot")
SPEC = """
package = "{package}"

[activations.swish_c]
formula = "x * sigmoid(beta * x)"
params = {{ beta = {beta} }}

[losses]
cauchy_c = "log(1 + (x - t)**2)"
"""


def write_spec(folder: Path, package: str = "cli_kernels", beta: float = 1.0,
               name: str = "ops.toml") -> Path:
    path = folder / name
    path.write_text(SPEC.format(package=package, beta=beta))
    return path


def package_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.py"))}


def symgrad_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "symgrad", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def read_stderr_until(proc: subprocess.Popen, needle: str, timeout: float = 120) -> str:
    """stderr lines up to the first containing ``needle`` (the progress bar is line-based
    when stderr is not a terminal)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; stderr so far:\n{''.join(seen)}")


# -- help ---------------------------------------------------------------------------------------

def test_help_lists_every_command_once_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("commands (each has --help")[1].splitlines()[1:]
              if line.startswith("  ") and line.split()[0] in COMMANDS]
    assert listed == list(COMMANDS)
    for command in COMMANDS:
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "example:" in text and f"python -m symgrad {command}" in text, command


# -- list / show / latex ------------------------------------------------------------------------

def test_list_json_groups_every_op_by_family(capsys):
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    listed = {op["name"]: (family, op) for family, ops in data.items() for op in ops}
    assert set(listed) == set(REGISTRY.names())
    for name, (family, op) in listed.items():
        assert op["family"] == REGISTRY[name].family and family.startswith(op["family"][:4])
    assert "dim=-1" in listed["softmax"][1]["options"]
    assert "ignore_index=-100" in listed["cross_entropy"][1]["options"]


def test_show_latex_and_list_work_on_a_spec_file(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["list", "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "swish_c" in out and "beta=1.0" in out and "reduction='mean'" in out
    assert main(["show", "--spec", str(spec), "swish_c"]) == 0
    out = capsys.readouterr().out
    assert "x*sigmoid(beta*x)" in out and "grad_x:" in out and "backward needs: the input x" in out
    assert "swish_c_forward, swish_c_backward, swish_c_forward_backward" in out
    assert main(["latex", "--spec", str(spec), "cauchy_c", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["op"] == "cauchy_c" and data["steps"][0]["title"] == "Definition"
    assert main(["latex", "--spec", str(spec), "swish_c", "--format", "markdown"]) == 0
    assert "$$" in capsys.readouterr().out
    assert main(["show", "--spec", str(spec), "relu"]) == 2  # built-ins are not in the file
    assert "unknown op(s) relu (in the spec file)" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "code", "words"), [
    (["latex", "sigmod"], 2, "did you mean sigmoid"),
    (["frobnicate"], 2, "invalid choice"),
    (["show"], 2, "required: op"),
    (["latex", "relu", "--format", "pdf"], 2, "invalid choice"),
    (["generate", "--spec", "no/such/file.toml"], 2, "does not exist"),
    (["generate", "--package", "not-an-identifier", "--check"], 2, "identifier"),
    (["bench", "relu", "--size", "0"], 2, "must be positive"),
    (["plot", "relu", "--range", "1", "-1"], 2, "must be below"),
])
def test_errors_are_one_line_with_exit_codes(argv, code, words, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert words in err and err.startswith("symgrad: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_failures_exit_1_and_debug_shows_the_traceback(monkeypatch, capsys):
    import symgrad.latex

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(symgrad.latex, "render_latex", broken)
    assert main(["latex", "relu"]) == 1
    err = capsys.readouterr().err
    assert err == "symgrad: RuntimeError: boom second line (rerun with --debug for the " \
                  "traceback)\n"
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "latex", "relu"])
    with pytest.raises(RuntimeError, match="boom"):
        main(["latex", "relu", "--debug"])


# -- accuracy / bench / plot --------------------------------------------------------------------

def test_accuracy_is_wired_to_symgrad_accuracy(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("symgrad.accuracy")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "symgrad.accuracy", fake)
    assert main(["accuracy", "--", "--only", "elu"]) == 0
    assert calls == [["--only", "elu"]]
    spec = str(ROOT / "examples" / "my_ops.toml")
    assert main(["accuracy", "--spec", spec]) == 1  # the sweep must say it takes spec files
    assert "not supported by this symgrad.accuracy" in capsys.readouterr().err
    fake.accepts_spec_files = True
    assert main(["accuracy", "--spec", spec, "--", "--points", "100"]) == 0
    assert calls[-1] == ["--spec", spec, "--points", "100"]
    monkeypatch.setitem(sys.modules, "symgrad.accuracy", None)  # not there: a clear failure
    assert main(["accuracy"]) == 1
    assert "symgrad.accuracy is not available" in capsys.readouterr().err


def test_bench_prints_a_side_by_side_table(capsys):
    from symgrad.kinds import kind_of

    assert main(["bench", "relu", "--size", "2000", "--repeat", "2", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "relu: 2000 float64" in out
    for row in ("symgrad (Numba)", "NumPy (the formula)", "PyTorch (CPU)"):
        assert row in out
    # An op without <op>_forward (an optimizer's step, say) is a usage error naming it.
    other = [s for s in REGISTRY if f"{s.name}_forward" not in kind_of(s).exports(s)]
    for spec in other[:1]:
        assert main(["bench", spec.name, "--size", "10"]) == 2
        assert f"{spec.name} exports" in capsys.readouterr().err


def test_plot_writes_a_png_or_says_how_to_get_matplotlib(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")  # installed with the test extra; [plot] for users
    png = tmp_path / "elu.png"
    assert main(["plot", "elu", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spec = write_spec(tmp_path)
    loss_png = tmp_path / "cauchy.png"
    assert main(["plot", "--spec", str(spec), "cauchy_c", "--out", str(loss_png),
                 "--target", "0.5"]) == 0
    assert loss_png.stat().st_size > 1000
    assert main(["plot", "softmax", "--out", str(tmp_path / "s.png")]) == 1
    assert "whole row" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", "elu"]) == 2
    assert "pip install symgrad[plot]" in capsys.readouterr().err


# -- generate: summary, check, only, progress ---------------------------------------------------

def test_progress_in_a_log_prints_each_stage_first_and_last(capsys):
    # capsys's stderr is not a terminal: a CI log gets two lines per stage, not one per op.
    progress = Progress()
    for stage in ("derive", "render"):
        for i in range(1, 11):
            progress(i, 10, f"op{i}", stage)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ")[1].split(" (")[0] for line in lines] == [
        "1/10 op1: derive", "10/10 op10: derive", "1/10 op1: render", "10/10 op10: render"]


def test_generate_reports_what_changed(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "build"
    assert main(["generate", "--spec", str(spec), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"\d+ new \(__init__.py, .*swish_c.py, test_kernels.py\); 0 unchanged",
                     captured.out)
    assert "1/2 swish_c: derive" in captured.err and "cauchy_c: render" in captured.err
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "up to date, nothing changed" in capsys.readouterr().out
    write_spec(tmp_path, beta=2.0)
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--check"]) == 1
    captured = capsys.readouterr()
    assert "is stale" in captured.err and "+++ cli_kernels/swish_c.py (generated)" in captured.out
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--only", "swish_c",
                 "--quiet"]) == 0
    assert re.search(r": 2 modified \(swish_c.py, test_kernels.py\); \d+ unchanged",
                     capsys.readouterr().out)
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--check"]) == 0


def test_generate_never_overwrites_a_folder_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "cli_kernels"
    mine.mkdir()
    (mine / "__init__.py").write_text("# my own code\n")
    spec = write_spec(tmp_path)
    assert main(["generate", "--spec", str(spec), "--out", str(tmp_path), "--quiet"]) == 2
    assert "was not generated by symgrad" in capsys.readouterr().err
    assert (mine / "__init__.py").read_text() == "# my own code\n"


# -- nothing lost -------------------------------------------------------------------------------

def generated_once(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    spec = write_spec(tmp_path)
    out = tmp_path / "build"
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--quiet"]) == 0
    write_spec(tmp_path, beta=3.0)  # the next generate would change swish_c.py
    return spec, out, package_files(out / "cli_kernels")


def test_ctrl_c_between_the_renames_restores_the_previous_package(tmp_path, monkeypatch,
                                                                    capsys):
    spec, out, before = generated_once(tmp_path)
    real_replace = os.replace

    def interrupted(src, dst):
        if Path(src).name.startswith(".cli_kernels-new-"):
            raise KeyboardInterrupt  # the old package is already moved aside
        real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", interrupted)
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--quiet"]) == 1
    assert "interrupted" in capsys.readouterr().err
    assert package_files(out / "cli_kernels") == before
    assert sorted(p.name for p in out.iterdir()) == ["cli_kernels"]


def test_a_writer_killed_mid_swap_is_recovered_by_the_next_one(tmp_path, capsys):
    spec, out, before = generated_once(tmp_path)
    os.replace(out / "cli_kernels", out / ".cli_kernels-old")  # killed between the renames
    (out / ".cli_kernels-new-abc").mkdir()  # and its staging folder left behind
    output.recover(out, "cli_kernels")
    assert package_files(out / "cli_kernels") == before
    assert sorted(p.name for p in out.iterdir()) == ["cli_kernels"]


def test_sigint_during_generate_leaves_the_previous_package(tmp_path):
    spec, out, before = generated_once(tmp_path)
    proc = symgrad_cli("generate", "--spec", str(spec), "--out", str(out))
    read_stderr_until(proc, "derive")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "interrupted" in err and "Traceback" not in err
    assert package_files(out / "cli_kernels") == before
    assert sorted(p.name for p in out.iterdir()) == ["cli_kernels"]


def test_a_second_generate_waits_for_the_lock_and_says_so(tmp_path):
    spec, out, _ = generated_once(tmp_path)
    with output.package_lock(out / "cli_kernels"):
        proc = symgrad_cli("generate", "--spec", str(spec), "--out", str(out))
        read_stderr_until(proc, "waiting for another `generate`")
        time.sleep(0.2)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "waited" in err and "modified (swish_c.py" in stdout


def test_two_generates_at_once_do_not_interleave(tmp_path):
    out = tmp_path / "build"
    specs = [write_spec(tmp_path, beta=b, name=f"ops{i}.toml") for i, b in enumerate((1.5, 2.5))]
    procs = [symgrad_cli("generate", "--spec", str(s), "--out", str(out)) for s in specs]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    final = package_files(out / "cli_kernels")
    from symgrad.specfile import load_spec_file
    from symgrad.userops import render_user_package

    renders = [render_user_package(load_spec_file(s).ops, "cli_kernels") for s in specs]
    assert final in renders  # all of one run, none of a mix
    assert sorted(p.name for p in out.iterdir()) == ["cli_kernels"]


def test_module_entry_point_runs_with_one_line_errors():
    result = subprocess.run([sys.executable, "-m", "symgrad", "show", "nonexistent_op"],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert textwrap.shorten(result.stderr, 40).startswith("symgrad: unknown op(s)")
