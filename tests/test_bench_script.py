"""scripts/bench.py runs end to end on a tiny case and writes its Markdown (timings untested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("symgrad_bench_script",
                                                  ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_bench_writes_rows_targets_and_setup(bench, tmp_path, capsys):
    out = tmp_path / "BENCH.md"
    assert bench.main(["--ops", "relu", "mse_loss", "--sizes", "1e3", "--dtypes", "float32",
                       "--budget", "0.001", "--markdown", str(out)]) == 0
    text = out.read_text()
    for needle in ("## Setup", "## Method", "## Targets", "## Results", "| relu | forward |",
                   "| mse_loss | fwd+bwd |", "Allocator", "10^3 elements, every pass"):
        assert needle in text, needle
    assert "relu" in capsys.readouterr().out


def test_targets_name_each_miss_with_its_floor(bench):
    row = bench.Row("relu", "forward", "float32", 10**7, copy=1.0,
                    seconds={"symgrad": 2.0, "torch": 1.0}, flags={})
    (line,) = bench.target_lines([row])[2:]
    # torch/symgrad 0.5 against its bound 1; the traffic floor (2 arrays, the copy's) 1x; 2x copy
    assert "relu forward float32: torch 0.5x (1x), 2x copy" in line
    assert "| 1 | 0 |" in line
