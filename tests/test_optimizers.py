"""Every optimizer kernel against torch.optim: 200 steps, every option combination, both dtypes.

Options are read off each spec: all flag combinations, times two values (the default and another)
of every parameter that decides a branch of the rule (weight_decay != 0, momentum > 0, the lerp
branch of beta1...); the other parameters run at a non-default value so that they are seen to
flow through. Combinations torch rejects must be rejected by us too.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import DTYPES, assert_close, kernels, ops_of

from symgrad.cli import main
from symgrad.derive import DerivationError, derive
from symgrad.kinds.optimizer import GRAD, PARAM, STEP, Reference, ScalarHoister
from symgrad.spec import REGISTRY

OPTIMIZERS = ops_of("optimizer")
STEPS = 200
# Relative to the largest magnitude (assert_close): float32 cannot be bit-exact with torch, whose
# CPU kernels are FMA-contracted (semantics.md §6).
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def branching_params(spec) -> set[str]:
    """Numeric parameters that appear in a condition: they pick a branch of the rule, or
    whether a flag is allowed (nesterov needs momentum > 0 and dampening = 0)."""
    flags = {f.symbol for f in spec.flags}
    exprs = [e for _, e in (*spec.scalars, *spec.update)] + [b.exists for b in spec.buffers]
    exprs += [c for c, _ in spec.requires if c.free_symbols & flags]
    names = set()
    for expr in exprs:
        for rel in expr.atoms(sp.core.relational.Relational):
            names |= {s.name for s in rel.free_symbols}
    return names & {p.name for p in spec.numeric_params}


def other_value(p) -> float:
    """A value of ``p`` away from its default, inside its domain."""
    d = float(p.default)
    if d == 0:
        v = 0.3 if p.maximum is None else min(0.3, p.maximum / 2)
    elif p.maximum is not None and d * 1.5 >= p.maximum:
        v = d / 3  # betas, alpha: 0.3 also takes torch's other lerp branch
    else:
        v = d * 1.5
    p.validate("test", v)
    return v


def torch_kwargs(spec, values: dict) -> dict:
    out = dict(values)
    for group, members in spec.groups:
        out[group] = tuple(out.pop(m) for m in members)
    return out


def combinations(spec) -> list[dict]:
    branching = branching_params(spec)
    fixed = {p.name: (other_value(p) if p.name not in branching else p.default)
             for p in spec.numeric_params}
    axes = [[(p.name, p.default), (p.name, other_value(p))]
            for p in spec.numeric_params if p.name in branching]
    axes += [[(f.name, False), (f.name, True)] for f in spec.flags]
    return [torch_kwargs(spec, {**fixed, **dict(choice)}) for choice in itertools.product(*axes)]


def gradients(dtype, n: int = 48, steps: int = STEPS) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(11)
    return (rng.normal(size=n).astype(dtype),
            [rng.normal(size=n).astype(dtype) for _ in range(steps)])


def run_both(spec, kwargs: dict, p0: np.ndarray, grads: list[np.ndarray]):
    """Our class and torch's on the same start and gradients; returns both final states."""
    ours = p0.copy()
    opt = getattr(kernels(), spec.class_name)([ours], **kwargs)
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = getattr(torch.optim, spec.class_name)([tp], **kwargs)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in grads:
            tp.grad = torch.tensor(g)
            topt.step()
            opt.step([g])
    theirs = {k: v.numpy() for k, v in topt.state[tp].items() if k not in ("step",)}
    theirs["param"] = tp.detach().numpy()
    mine = {k: np.asarray(v) for k, v in opt.state[0].items() if k != "step"}
    mine["param"] = ours
    assert opt.state[0]["step"] == len(grads)
    return mine, theirs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", OPTIMIZERS)
def test_200_steps_match_torch_for_every_option_combination(spec, dtype):
    p0, grads = gradients(dtype)
    checked = 0
    for kwargs in combinations(spec):
        try:
            getattr(torch.optim, spec.class_name)([torch.nn.Parameter(torch.zeros(1))], **kwargs)
        except ValueError:  # torch rejects the combination (nesterov without momentum): so do we
            with pytest.raises(ValueError):
                getattr(kernels(), spec.class_name)([p0.copy()], **kwargs)
            continue
        mine, theirs = run_both(spec, kwargs, p0, grads)
        assert set(mine) == set(theirs), (kwargs, set(mine) ^ set(theirs))
        for name, ref in theirs.items():
            assert mine[name].dtype == ref.dtype, name
            assert_close(mine[name], ref, dtype, f"{spec.name} {kwargs} {name}", rtol=TOL[dtype])
        checked += 1
    assert checked >= 2 ** len(spec.flags) // 2


EDGE_PARAMS = [1.0, -2.0, np.inf, 0.5, -0.0, 3.0, -np.inf, 2.0, 1e-3]
EDGE_GRADS = [[np.nan, 1.0, 1.0, np.inf, 0.0, -np.inf, 1.0, 1e15, -0.0],
              [1.0, 0.5, -1.0, 2.0, 0.0, 1.0, np.nan, 1.0, 5e-324],
              [1.0] * 9]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", OPTIMIZERS)
def test_nan_inf_and_signed_zeros_propagate_as_in_torch(spec, dtype):
    """nan/inf gradients and parameters, -0.0 and subnormals: same nans, same values."""
    p0 = np.array(EDGE_PARAMS, dtype=dtype)
    grads = [np.array(g, dtype=dtype) for g in EDGE_GRADS]
    for kwargs in combinations(spec)[::3]:
        try:
            mine, theirs = run_both(spec, kwargs, p0, grads)
        except ValueError:
            continue
        for name, ref in theirs.items():
            assert_close(mine[name], ref, dtype, f"{spec.name} {kwargs} {name}", rtol=TOL[dtype])


def test_step_function_0d_empty_and_parallel_path():
    K = kernels()
    rng = np.random.default_rng(0)
    n = 40_000  # above the parallel threshold: the prange kernel
    p, g = rng.normal(size=n), rng.normal(size=n)
    m, v = np.zeros(n), np.zeros(n)
    tp = torch.nn.Parameter(torch.tensor(p))
    topt = torch.optim.Adam([tp], lr=1e-2)
    for step in (1, 2, 3):
        assert K.adam_step(p, g, m, v, None, step, lr=1e-2) is p
        tp.grad = torch.tensor(g)
        topt.step()
    assert_close(p, tp.detach().numpy(), np.float64, "adam parallel", rtol=1e-13)
    scalar = np.array(1.5)
    K.sgd_step(scalar, np.array(2.0), None, 1, lr=0.25)
    assert scalar == 1.0
    empty = np.zeros((0, 3), np.float32)
    assert K.adam_step(empty, empty.copy(), empty.copy(), empty.copy(), None, 1).shape == (0, 3)


def test_nadam_mu_product_is_a_float32_state_as_in_torch():
    K = kernels()
    p, g = np.ones(3), np.full(3, 0.5)
    state = (np.zeros(3), np.zeros(3), np.ones((), np.float32))
    tp = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    topt = torch.optim.NAdam([tp])
    for step in range(1, 30):
        K.nadam_step(p, g, *state, step)
        tp.grad = torch.tensor(g)
        topt.step()
    mu_product = topt.state[tp]["mu_product"]
    assert mu_product.dtype == torch.float32 and state[2].dtype == np.float32
    assert state[2] == mu_product.numpy()  # bit for bit: rounded to float32 as torch does
    assert_close(p, tp.detach().numpy(), np.float64, "nadam", rtol=1e-14)


def test_latex_adam_prints_the_update_rule_and_bias_corrections(capsys):
    assert main(["latex", "adam"]) == 0
    out = capsys.readouterr().out
    for piece in (r"b_1 &= 1 - \beta_1^{t}", r"b_2 &= 1 - \beta_2^{t}",
                  r"\alpha_t &= \frac{\eta}{b_1}", r"m &\leftarrow", r"v &\leftarrow",
                  r"\theta &\leftarrow \theta - r \alpha_t", "proven", r"sqrt(v\_hat) + eps"):
        assert piece in out, piece


def test_proofs_reject_eps_in_the_wrong_place():
    """Keras puts eps on the uncorrected sqrt(v): stating that for torch's rule must fail."""
    adam = REGISTRY["adam"]
    b1, b2, lr, eps = (sp.Symbol(n, real=True) for n in ("beta1", "beta2", "lr", "eps"))
    m, v = sp.Symbol("exp_avg", real=True), sp.Symbol("exp_avg_sq", real=True)
    m_new, v_new = b1 * m + (1 - b1) * GRAD, b2 * v + (1 - b2) * GRAD**2
    keras = PARAM - lr * sp.sqrt(1 - b2**STEP) / (1 - b1**STEP) * m_new / (sp.sqrt(v_new) + eps)
    wrong = dataclasses.replace(adam, references=(Reference("keras eps", "param", keras),))
    with pytest.raises(DerivationError, match="keras eps"):
        derive.__wrapped__(wrong)
    assert len(derive(adam).proofs) == len(adam.references)


def test_scalars_are_hoisted_out_of_the_element_loop():
    """1 - beta2 is computed once in float64 (as torch's Python scalar), not per element."""
    b2, v = sp.Symbol("beta2", real=True), sp.Symbol("exp_avg_sq", real=True)
    hoister = ScalarHoister({GRAD, v})
    out = hoister(b2 * v + (1 - b2) * GRAD**2)
    assert [expr for expr in hoister.constants] == [1 - b2]
    assert b2 in out.free_symbols and not out.has(1 - b2)
    d = derive(REGISTRY["adam"])
    assert all(v.free_symbols.isdisjoint({GRAD, PARAM}) for _, v in d.variants[0].constants)


def test_each_switch_gets_a_kernel_without_the_absent_buffer():
    d = derive(REGISTRY["rmsprop"])
    assert len(d.variants) == 4
    for v in d.variants:
        names = {b.name for b in v.buffers}
        used = set().union(*(e.free_symbols for _, e in v.statements))
        assert {s.name for s in used} & {"grad_avg", "momentum_buffer"} <= names


def test_bad_input_is_a_clear_error():
    K = kernels()
    p, g = np.zeros(4), np.ones(4)
    m, v = np.zeros(4), np.zeros(4)
    cases = [
        (lambda: K.adam_step(p[::2], g[::2], m[:2], v[:2], None, 1), ValueError, "param"),
        (lambda: K.adam_step(p.astype(np.float16), g, m, v, None, 1), TypeError, "param"),
        (lambda: K.adam_step(p, g.astype(np.float32), m, v, None, 1), TypeError, "grad"),
        (lambda: K.adam_step(p, np.ones(5), m, v, None, 1), ValueError, "grad"),
        (lambda: K.adam_step(p, g, m, v, None, 1, amsgrad=True), TypeError, "max_exp_avg_sq"),
        (lambda: K.adam_step(p, g, m, m, None, 1), ValueError, "shares memory"),
        (lambda: K.adam_step(p, g, m, v, None, 0), ValueError, "step"),
        (lambda: K.adam_step(p, g, m, v, None, 1.0), TypeError, "step"),
        (lambda: K.adam_step(p, g, m, v, None, 1, lr=-1.0), ValueError, "lr"),
        (lambda: K.adam_step(p, g, m, v, None, 1, betas=(0.9,)), TypeError, "betas"),
        (lambda: K.adam_step(p, g, m, v, None, 1, betas=(1.0, 0.9)), ValueError, "betas"),
        (lambda: K.adam_step(p, g, m, v, None, 1, eps=float("nan")), ValueError, "eps"),
        (lambda: K.adam_step(p, g, m, v, None, 1, amsgrad=1), TypeError, "amsgrad"),
        (lambda: K.sgd_step(p, g, None, 1, nesterov=True), ValueError, "Nesterov"),
        (lambda: K.nadam_step(p, g, m, v, np.ones(2), 1), TypeError, "mu_product"),
        (lambda: K.Adam(p), TypeError, "list"),
        (lambda: K.Adam([p], lr="fast"), TypeError, "lr"),
        (lambda: K.Adam([p]).step([g, g]), ValueError, "2 gradients"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()
    assert np.all(p == 0)  # nothing ran on bad input


@pytest.mark.parametrize("spec", OPTIMIZERS)
def test_float32_kernels_do_no_float64_arithmetic(spec, monkeypatch):
    """Per-call constants arrive as float32 and the loop stays float32 (no promotion)."""
    import importlib
    import re

    import numba

    module = importlib.import_module(f"symgrad_kernels.{spec.name}")
    irs = []

    def pick(name, dtype, size):
        # Recompiled without the on-disk cache: Numba cannot inspect cached code.
        fresh = numba.njit(error_model="numpy")(getattr(module, f"{name}_ser_float32").py_func)

        def run(*args):
            fresh(*args)
            irs.append(fresh.inspect_llvm(fresh.signatures[0]))
        return run

    monkeypatch.setattr(module, "_pick", pick)
    p = np.linspace(-1, 1, 8, dtype=np.float32)
    getattr(module, spec.class_name)([p]).step([p.copy()])
    assert len(irs) == 1
    assert not re.search(r"fpext float .* to double|f(add|sub|mul|div) double|double @llvm",
                         irs[0]), spec.name


def test_malformed_specs_are_rejected_with_the_fix():
    from symgrad.kinds.optimizer import StateBuffer
    from symgrad.spec import SpecError

    adam = REGISTRY["adam"]
    later = sp.Symbol("ratio", real=True)
    for changes, words in [
        ({"family": "loss"}, "family='optimizer'"),
        ({"update": tuple(s for s in adam.update if s[0] != "param")}, "assigns .param."),
        ({"update": ((("param", PARAM - later)),) + adam.update}, "before it is defined"),
        ({"buffers": adam.buffers + (StateBuffer("n", "clashes with the loop count"),)}, "rename"),
        ({"buffers": adam.buffers + (StateBuffer("lr", "a parameter's name"),)}, "declared twice"),
    ]:
        with pytest.raises(SpecError, match=words):
            dataclasses.replace(adam, **changes)
