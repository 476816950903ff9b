#!/usr/bin/env python
"""Per-call time of small calls (10^3 elements): symgrad's wrappers beside PyTorch's functions.

At this size a call is mostly fixed cost: argument checks, allocation and dispatch, not the
loop. Both libraries run in this one process on the same arrays (torch on 2 threads); each row
gives the min and median over REPEAT timings of NUMBER calls, in microseconds per call.

    python scripts/call_overhead.py                  # every call, number=2000, repeat=15
    python scripts/call_overhead.py --only softmax   # the rows whose name contains "softmax"
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import numpy as np


def _time(fn, number: int, repeat: int) -> tuple[float, float]:
    fn()  # warm-up: compiles or loads the kernels
    runs = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return min(runs), statistics.median(runs)


def _cases(sk, torch, F):
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        s = np.dtype(dt).name
        x, g, t = (rng.standard_normal(1000).astype(dt) for _ in range(3))
        y = sk.sigmoid_forward(x)
        tx, tg, ty, tt = (torch.from_numpy(a) for a in (x, g, y, t))
        yield (f"sigmoid_forward {s}", lambda x=x: sk.sigmoid_forward(x),
               lambda tx=tx: torch.sigmoid(tx))
        yield (f"sigmoid_backward(g, y=y) {s}", lambda g=g, y=y: sk.sigmoid_backward(g, y=y),
               lambda tg=tg, ty=ty: torch.ops.aten.sigmoid_backward(tg, ty))
        yield (f"relu_forward {s}", lambda x=x: sk.relu_forward(x), lambda tx=tx: torch.relu(tx))
        yield (f"sigmoid_forward_backward {s}", lambda x=x, g=g: sk.sigmoid_forward_backward(x, g),
               lambda tx=tx, tg=tg: torch.ops.aten.sigmoid_backward(tg, torch.sigmoid(tx)))
        for shape in ((1, 1000), (32, 32)):
            xs = rng.standard_normal(shape).astype(dt)
            txs = torch.from_numpy(xs)
            yield (f"softmax_forward {shape} {s}", lambda xs=xs: sk.softmax_forward(xs),
                   lambda txs=txs: torch.softmax(txs, -1))
        xc = rng.standard_normal((32, 32)).astype(dt)
        tc = rng.integers(0, 32, 32)
        txc = torch.from_numpy(xc).requires_grad_()
        ttc = torch.from_numpy(tc)

        def torch_ce(txc=txc, ttc=ttc):
            F.cross_entropy(txc, ttc).backward()
            txc.grad = None

        yield (f"cross_entropy_forward (32, 32) {s}",
               lambda xc=xc, tc=tc: sk.cross_entropy_forward(xc, tc),
               lambda txc=txc, ttc=ttc: F.cross_entropy(txc.detach(), ttc))
        yield (f"cross_entropy fwd+bwd (32, 32) {s} (torch: autograd)",
               lambda xc=xc, tc=tc: sk.cross_entropy_forward_backward(xc, tc), torch_ce)
        yield (f"mse_loss_forward {s}", lambda x=x, t=t: sk.mse_loss_forward(x, t),
               lambda tx=tx, tt=tt: F.mse_loss(tx, tt))
        p, m, v = rng.standard_normal(1000).astype(dt), np.zeros(1000, dt), np.zeros(1000, dt)
        tp = torch.from_numpy(p.copy()).requires_grad_()
        tp.grad = torch.from_numpy(g.copy())
        opt = torch.optim.Adam([tp], lr=1e-3, foreach=False)
        yield (f"adam_step {s} (torch: Adam.step, foreach=False)",
               lambda p=p, g=g, m=m, v=v: sk.adam_step(p, g, m, v, None, 1), opt.step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", default="", help="run the rows whose name contains this")
    args = parser.parse_args()
    import symgrad_kernels as sk
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    print(f"{'call':52s} {'symgrad min/median':>20s} {'torch min/median':>20s}  (us per call)")
    for name, ours, theirs in _cases(sk, torch, F):
        if args.only not in name:
            continue
        a = _time(ours, args.number, args.repeat)
        b = _time(theirs, args.number, args.repeat)
        print(f"{name:52s} {a[0]:9.2f} {a[1]:9.2f}  {b[0]:9.2f} {b[1]:9.2f}", flush=True)


if __name__ == "__main__":
    main()
