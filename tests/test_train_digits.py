"""scripts/train_digits.py: generated kernels train an MLP on the digits, and match PyTorch."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_digits.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_curve_matches_pytorch_without_dropout(capsys):
    """Same initial weights, batches and Adam, no dropout: every epoch's mean loss within 1e-6
    relative of PyTorch's in float64 (the script prints the largest difference)."""
    assert load_script().main(["--epochs", "3", "--compare-torch"]) == 0
    out = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"epoch +\d+ +loss ([0-9.]+)", out)]
    assert len(losses) == 3 and losses[2] < losses[0]
    worst = float(re.search(r"max relative difference per epoch ([0-9.e+-]+)", out).group(1))
    assert worst <= 1e-6


def test_training_with_dropout_reaches_95_percent():
    train_digits = load_script()
    data = train_digits.load_digits(np.float64, seed=0)
    params = train_digits.init_params((64, 128, 64, 10), np.float64, seed=0)
    curve = train_digits.train(data, params, epochs=8, batch_size=64, lr=1e-3, p=0.1,
                               verbose=False)
    assert curve[-1] < curve[0] / 5
    accuracy = np.mean(train_digits.predict(params, data.x_test) == data.y_test)
    assert accuracy >= 0.95, accuracy
