"""A short tour of the generated kernels: call them on arrays, train a tiny classifier, and print
one derivation. Run after `python -m symgrad generate` (the README's first command does both)."""

from __future__ import annotations

import numpy as np
import symgrad_kernels as K

from symgrad.latex import render_latex
from symgrad.render import all_specs


def main() -> None:
    rng = np.random.default_rng(0)
    x = np.linspace(-4, 4, 9, dtype=np.float32)
    y = K.sigmoid_forward(x)
    grad = K.sigmoid_backward(np.ones_like(x), y=y)  # needs only the saved output
    print("x                 ", np.array2string(x, precision=3))
    print("sigmoid(x)        ", np.array2string(y, precision=4))
    print("sigmoid'(x)=y(1-y)", np.array2string(grad, precision=4), y.dtype)

    # Softmax regression on three Gaussian blobs, every activation and gradient from symgrad.
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    labels = rng.integers(0, 3, 600)
    points = centers[labels] + rng.normal(0, 1.0, (600, 2))
    w, b = np.zeros((2, 3)), np.zeros(3)
    print("\nsoftmax regression, cross_entropy_forward_backward + plain gradient descent:")
    for step in range(41):
        logits = points @ w + b
        loss, dlogits = K.cross_entropy_forward_backward(logits, labels)
        w -= 0.5 * points.T @ dlogits
        b -= 0.5 * dlogits.sum(axis=0)
        if step % 10 == 0:
            accuracy = (K.softmax_forward(logits, dim=1).argmax(axis=1) == labels).mean()
            print(f"  step {step:2d}  loss {loss:.4f}  accuracy {accuracy:.3f}")

    print("\nThe derivation behind sigmoid_backward (python -m symgrad latex sigmoid):")
    print(render_latex(next(s for s in all_specs() if s.name == "sigmoid")))


if __name__ == "__main__":
    main()
