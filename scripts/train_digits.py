"""Train a two-hidden-layer MLP on scikit-learn's digits with generated kernels only.

Every activation, dropout, loss and optimizer step is a symgrad kernel; the linear layers are
NumPy matmuls; the backward pass is written out below, one chain-rule step per line:

    h1 = x W1ᵀ + b1     a1 = relu(h1)    d1 = dropout(a1)
    h2 = d1 W2ᵀ + b2    a2 = relu(h2)    d2 = dropout(a2)
    z  = d2 W3ᵀ + b3    loss = cross_entropy(z, y)

    python scripts/train_digits.py                      # 20 epochs, dropout 0.1, Adam
    python scripts/train_digits.py --compare-torch      # no dropout, the same run in PyTorch too

The digits (1797 8x8 images) ship with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
import symgrad_kernels as K

LAYERS = ("W1", "b1", "W2", "b2", "W3", "b3")


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(dtype=np.float64, seed: int = 0, test_fraction: float = 0.25) -> Data:
    """Standardised pixels, a fixed shuffled train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x, y = digits.data.astype(np.float64), digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = int(len(x) * test_fraction)
    mean, std = x[n_test:].mean(0), x[n_test:].std(0) + 1e-8  # train statistics only
    x = ((x - mean) / std).astype(dtype)
    return Data(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def init_params(sizes: tuple[int, ...], dtype=np.float64, seed: int = 0) -> dict[str, np.ndarray]:
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        bound = 1 / np.sqrt(fan_in)
        params[f"W{i}"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype)
        params[f"b{i}"] = rng.uniform(-bound, bound, fan_out).astype(dtype)
    return params


def forward_backward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, p: float,
                     seed: int, training: bool = True) -> tuple[float, dict[str, np.ndarray]]:
    """The loss on one batch and its gradient for every parameter, by the chain rule."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in LAYERS)
    drop = {"p": p, "training": training}
    # Forward, keeping what the backward needs: the layer inputs and the relu outputs.
    h1 = x @ W1.T + b1
    a1 = K.relu_forward(h1)
    d1 = K.dropout_forward(a1, seed=2 * seed, **drop)
    h2 = d1 @ W2.T + b2
    a2 = K.relu_forward(h2)
    d2 = K.dropout_forward(a2, seed=2 * seed + 1, **drop)
    z = d2 @ W3.T + b3
    # Loss and dloss/dz in one kernel: (softmax(z) - onehot(y)) / batch.
    loss, dz = K.cross_entropy_forward_backward(z, y)
    # Backward, from the loss to the input, one local derivative at a time.
    grads = {"W3": dz.T @ d2, "b3": dz.sum(0)}       # z = d2 W3ᵀ + b3
    dd2 = dz @ W3                                     # ∂loss/∂d2
    da2 = K.dropout_backward(dd2, seed=2 * seed + 1, **drop)  # same mask, regenerated
    dh2 = K.relu_backward(da2, y=a2)                  # relu' from its output: [a2 > 0]
    grads["W2"], grads["b2"] = dh2.T @ d1, dh2.sum(0)  # h2 = d1 W2ᵀ + b2
    dd1 = dh2 @ W2
    da1 = K.dropout_backward(dd1, seed=2 * seed, **drop)
    dh1 = K.relu_backward(da1, y=a1)
    grads["W1"], grads["b1"] = dh1.T @ x, dh1.sum(0)  # h1 = x W1ᵀ + b1
    return float(loss), grads


def predict(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = K.relu_forward(x @ params["W1"].T + params["b1"])
    h = K.relu_forward(h @ params["W2"].T + params["b2"])
    return np.argmax(h @ params["W3"].T + params["b3"], axis=1)


def batches(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The same shuffled mini-batches for our run and the torch run."""
    order = np.random.default_rng(seed * 7919 + epoch).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def progress(epoch: int, epochs: int, done: int, total: int, loss: float, width: int = 28) -> None:
    filled = int(width * done / total)
    print(f"\repoch {epoch:3d}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
          f"loss {loss:.4f}", end="", file=sys.stderr, flush=True)


def train(data: Data, params: dict[str, np.ndarray], epochs: int, batch_size: int, lr: float,
          p: float, seed: int = 0, verbose: bool = True) -> list[float]:
    """Adam on the mean cross-entropy; returns the mean training loss of every epoch."""
    order = [params[k] for k in LAYERS]
    opt = K.Adam(order, lr=lr)
    curve = []
    step = 0
    for epoch in range(1, epochs + 1):
        total, seen = 0.0, 0
        plan = batches(len(data.x_train), batch_size, epoch, seed)
        for i, idx in enumerate(plan, start=1):
            step += 1
            loss, grads = forward_backward(params, data.x_train[idx], data.y_train[idx], p,
                                           seed=seed * 1_000_003 + step)
            opt.step([grads[k] for k in LAYERS])
            total, seen = total + loss * len(idx), seen + len(idx)
            if verbose and sys.stderr.isatty():
                progress(epoch, epochs, i, len(plan), total / seen)
        curve.append(total / seen)
        if verbose:
            accuracy = np.mean(predict(params, data.x_test) == data.y_test)
            progress(epoch, epochs, 1, 1, curve[-1])
            print(f"  test accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
    return curve


def train_torch(data: Data, params: dict[str, np.ndarray], epochs: int, batch_size: int,
                lr: float, seed: int = 0) -> list[float]:
    """The same network, batches and optimizer in PyTorch, without dropout."""
    import torch

    tensors = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = torch.optim.Adam([tensors[k] for k in LAYERS], lr=lr)
    x_all, y_all = torch.tensor(data.x_train), torch.tensor(data.y_train)
    curve = []
    for epoch in range(1, epochs + 1):
        total, seen = 0.0, 0
        for idx in batches(len(data.x_train), batch_size, epoch, seed):
            x, y = x_all[idx], y_all[idx]
            h = torch.relu(x @ tensors["W1"].T + tensors["b1"])
            h = torch.relu(h @ tensors["W2"].T + tensors["b2"])
            loss = torch.nn.functional.cross_entropy(h @ tensors["W3"].T + tensors["b3"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        curve.append(total / seen)
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.1, help="p of both dropout layers")
    parser.add_argument("--hidden", type=int, nargs=2, default=(128, 64))
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-torch", action="store_true",
                        help="train without dropout and compare the loss curve with PyTorch's")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype).type
    data = load_digits(dtype, args.seed)
    sizes = (data.x_train.shape[1], *args.hidden, 10)
    params = init_params(sizes, dtype, args.seed)
    start_params = {k: v.copy() for k, v in params.items()}
    p = 0.0 if args.compare_torch else args.dropout
    print(f"digits: {len(data.x_train)} train, {len(data.x_test)} test; MLP {sizes}, relu, "
          f"dropout p={p}, Adam lr={args.lr}, {args.dtype}", file=sys.stderr)
    start = time.perf_counter()
    curve = train(data, params, args.epochs, args.batch_size, args.lr, p, args.seed)
    elapsed = time.perf_counter() - start
    accuracy = float(np.mean(predict(params, data.x_test) == data.y_test))
    print(f"test accuracy {accuracy:.4f} after {args.epochs} epochs ({elapsed:.1f}s)")
    for epoch, loss in enumerate(curve, start=1):
        print(f"epoch {epoch:3d}  loss {loss:.10f}")
    if args.compare_torch:
        reference = train_torch(data, start_params, args.epochs, args.batch_size, args.lr,
                                args.seed)
        worst = max(abs(a - b) / abs(b) for a, b in zip(curve, reference, strict=True))
        print(f"torch loss curve: max relative difference per epoch {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
