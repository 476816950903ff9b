"""Hypothesis drives every generated wrapper with random dtypes, shapes, strides, empties and
parameter values. Each call either raises the documented TypeError/ValueError or returns exactly
what the same call on C-contiguous copies returns (views, 0-d and empty arrays included): never
another exception, never a different answer.

Ops of the kinds below get a call plan that knows their arguments and parameter domains; every
op, of these kinds or any other, is also driven generically through its functions' signatures.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import symgrad_kernels as K
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from symgrad.kinds import kind_of
from symgrad.spec import REGISTRY, Param

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DOCUMENTED = (TypeError, ValueError)
EDGES = [0.0, -0.0, 1.0, -1.0, 1e4, -1e4, 88.7, -88.7, 710.0, -710.0, np.inf, -np.inf, np.nan,
         1e-45, -1e-45, 5e-324, 1e-310, 3.4e38, -3.4e38, 0.5]
FLOATS = (np.float32, np.float64)
BAD_DTYPES = (np.float16, np.int32, np.int64, np.uint8, np.complex64, np.bool_, np.longdouble)


def spec_of(op: str):
    return REGISTRY[op]


# -- strategies ---------------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def values(dtype) -> st.SearchStrategy:
    width = 32 if dtype == np.float32 else 64
    edges = [e for e in EDGES if dtype == np.float64 or abs(e) <= 3.4e38 or not math.isfinite(e)]
    return st.one_of(st.sampled_from(edges),
                     st.floats(-30, 30, width=width, allow_subnormal=True))


@st.composite
def float_array(draw, shape=None, dtype=None) -> np.ndarray:
    dtype = dtype or draw(st.sampled_from(FLOATS))
    shape = draw(shapes) if shape is None else shape
    return draw(hnp.arrays(dtype, shape, elements=values(dtype)))


def layout(draw, a: np.ndarray) -> np.ndarray:
    """The same values, laid out as a strided, reversed, transposed or byte-swapped view."""
    how = draw(st.sampled_from(["c", "strided", "reversed", "transposed", "fortran", "readonly",
                                "swapped", "unaligned"]))
    if how == "strided" and a.ndim:
        buf = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = buf[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "reversed" and a.ndim:
        flipped = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    if how == "transposed" and a.ndim >= 2:
        return np.ascontiguousarray(a.T).T
    if how == "fortran" and a.ndim:  # asfortranarray makes 0-d arrays 1-d
        return np.asfortranarray(a)
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "swapped":
        return a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))
    if how == "unaligned" and a.size:
        raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
        b = raw.view(a.dtype).reshape(a.shape)
        b[...] = a
        return b
    return a.copy()


def contiguous(value):
    if isinstance(value, np.ndarray):
        native = value.astype(value.dtype.newbyteorder("=")) if value.dtype.kind == "f" else value
        return np.array(native, order="C", copy=True)
    return value


def same(a, b, what: str) -> None:
    if isinstance(a, tuple | list):
        assert isinstance(b, tuple | list) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{what}[{i}]")
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), what
        for key in a:
            same(a[key], b[key], f"{what}[{key!r}]")
        return
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":  # an identity may hand back the caller's byte-swapped array
        a = a.astype(a.dtype.newbyteorder("="))
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} != " \
                                                      f"{b.dtype}{b.shape}"
    assert np.array_equal(a, b, equal_nan=True), f"{what}: a view and its copy give different " \
                                                 f"results:\n{a}\n{b}"
    assert np.array_equal(np.signbit(a), np.signbit(b)), f"{what}: signs of zero differ"


def near(a, b, what: str) -> None:
    """Fused and separate passes may round differently: a few ULPs apart, nan where nan."""
    dtype = np.asarray(b).dtype if np.asarray(b).dtype.kind == "f" else np.dtype(np.float64)
    eps = np.finfo(dtype).eps
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    assert np.allclose(a, b, rtol=16 * eps, atol=0, equal_nan=True), f"{what}:\n{a}\n{b}"


def run(fn, args, kwargs):
    """(result, None) or (None, documented exception); anything else fails the test."""
    try:
        return fn(*args, **kwargs), None
    except DOCUMENTED as exc:
        assert str(exc), f"{fn.__name__} raised {type(exc).__name__} without a message"
        return None, exc


def check_against_copies(fn, args: list, kwargs: dict, *, valid: bool | None = None):
    """Call with the drawn arguments, then with contiguous copies: the same outcome.

    ``valid``: True, the call must succeed; False, it must raise a documented error.
    """
    result, error = run(fn, args, kwargs)
    ref, ref_error = run(fn, [contiguous(a) for a in args],
                         {k: contiguous(v) if k != "out" else v for k, v in kwargs.items()})
    if valid is True:
        assert error is None, f"{fn.__name__} refused valid input: {error!r}"
    if valid is False:
        assert error is not None, f"{fn.__name__} accepted invalid input {args} {kwargs}"
    if error is not None or ref_error is not None:
        assert type(error) is type(ref_error), f"{fn.__name__}: {error!r} vs {ref_error!r}"
        return None
    same(result, ref, fn.__name__)
    return result


def param_value(draw, p: Param):
    """A parameter value: valid, out of its domain, or not a number at all."""
    kind = draw(st.sampled_from(["default", "valid", "any", "nan", "inf", "huge", "bad"]))
    if kind == "default":
        return p.default
    if kind == "valid":
        lo = p.minimum if p.minimum is not None else -5.0
        hi = p.maximum if p.maximum is not None else lo + 10.0
        return draw(st.floats(lo, hi, exclude_min=p.strict, exclude_max=p.strict))
    if kind == "any":
        return draw(st.floats(-1e6, 1e6))
    if kind == "nan":
        return float("nan")
    if kind == "inf":
        return draw(st.sampled_from([np.inf, -np.inf, 1e300, 10**400]))
    if kind == "huge":
        return draw(st.sampled_from([np.float32(2.0), np.int64(3), 7, 1e-300]))
    return draw(st.sampled_from(["1", None, [1.0], True, 1 + 2j, np.array([1.0, 2.0])]))


def param_is_valid(p: Param, value, dtype) -> bool | None:
    """True/False where the domain decides; None where only 'an exception or a result' holds."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number) \
            or isinstance(value, complex):
        return False
    try:
        v = float(value)
    except OverflowError:
        return False
    if v != v:
        return False
    try:
        p.validate("op", v)
    except ValueError:
        return False
    if math.isfinite(v) and abs(v) > np.finfo(dtype).max:
        return False
    return True


def draw_params(draw, spec, dtype) -> tuple[dict, bool]:
    params, valid = {}, True
    for p in spec.numeric_params:
        if draw(st.booleans()):
            continue
        value = param_value(draw, p)
        params[p.name] = value
        valid = valid and bool(param_is_valid(p, value, dtype))
    if valid:  # cross-parameter constraints (hardtanh's min_val <= max_val) are documented too
        values = {p.symbol: float(params.get(p.name, p.default)) for p in spec.numeric_params}
        valid = all(bool(cond.subs(values)) for cond, _ in getattr(spec, "constraints", ()))
    return params, valid


def bad_array(draw, shape) -> object:
    """Something that is not a float32/float64 array: the wrapper must raise a TypeError."""
    kind = draw(st.sampled_from(["dtype", "list", "scalar", "masked", "object"]))
    if kind == "dtype":
        return np.zeros(shape, draw(st.sampled_from(BAD_DTYPES)))
    if kind == "list":
        return np.zeros(shape).tolist()
    if kind == "scalar":
        return draw(st.sampled_from([1.0, 2, np.int32(1), np.float16(1)]))
    if kind == "masked":
        return np.ma.masked_array(np.zeros(shape), mask=False)
    return np.empty(shape, dtype=object)


def ops_of_kind(kind: str) -> list:
    return [pytest.param(n, id=n) for n in K.OPS if n in REGISTRY and spec_of(n).kind == kind]


def test_every_generated_op_is_driven():
    """Every op of the package has a spec (and so a plan below, specific or generic)."""
    assert set(K.OPS) <= set(REGISTRY.names()), set(K.OPS) - set(REGISTRY.names())
    assert K.OPS


# -- elementwise --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ops_of_kind("elementwise"))
@SETTINGS
@given(data=st.data())
def test_elementwise(op, data):
    spec = spec_of(op)
    forward, backward = getattr(K, f"{op}_forward"), getattr(K, f"{op}_backward")
    fused = getattr(K, f"{op}_forward_backward")
    x = data.draw(float_array())
    params, valid = draw_params(data.draw, spec, x.dtype)
    xv = layout(data.draw, x)
    y = check_against_copies(forward, [xv], params, valid=valid)
    if not valid:
        return
    assert y.dtype == x.dtype and y.shape == x.shape
    g = data.draw(float_array(x.shape, x.dtype))
    gv = layout(data.draw, g)
    source = data.draw(st.sampled_from(["x", "y"]))
    needs = {"x": xv, "y": layout(data.draw, y)}
    try:
        ref_grad = backward(g.copy(), **{source: needs[source].copy()}, **params)
    except TypeError as exc:  # an op without an output form names x
        assert source == "y" and "needs x" in str(exc)
        source = "x"
        ref_grad = backward(g.copy(), x=x.copy(), **params)
    except ValueError as exc:  # a conditional output form names its parameter condition
        assert source == "y" and "from y needs" in str(exc) and "pass x=" in str(exc)
        source = "x"
        ref_grad = backward(g.copy(), x=x.copy(), **params)
    grad = check_against_copies(backward, [gv], {source: needs[source], **params},
                                valid=True)
    same(grad, ref_grad, f"{op}_backward")
    yf, gf = check_against_copies(fused, [xv, gv], params, valid=True)
    near(yf, y, f"{op}_forward_backward: y")


@pytest.mark.parametrize("op", ops_of_kind("elementwise"))
@SETTINGS
@given(data=st.data())
def test_elementwise_bad_input(op, data):
    forward, backward = getattr(K, f"{op}_forward"), getattr(K, f"{op}_backward")
    x = data.draw(float_array())
    bad = bad_array(data.draw, x.shape)
    with pytest.raises(TypeError, match="x"):
        forward(bad)
    with pytest.raises(TypeError, match="grad_output"):
        backward(bad, x=x)
    other = data.draw(float_array())
    if other.shape != x.shape:
        with pytest.raises(ValueError, match="shape"):
            backward(other.astype(x.dtype), x=x)
    flipped = np.float32 if x.dtype == np.float64 else np.float64
    with pytest.raises(TypeError, match="dtype"):
        backward(x.astype(flipped), x=x)
    check_out(data, forward, x)


def check_out(data, forward, x: np.ndarray, **kwargs) -> None:
    """out=: the right array is filled and returned; anything else is refused."""
    kind = data.draw(st.sampled_from(["ok", "shape", "dtype", "strided", "readonly", "overlap",
                                      "list"]))
    out = np.empty_like(x)
    if kind == "ok":
        result = forward(x, out=out, **kwargs)
        assert result is out
        same(out, forward(x.copy(), **kwargs), "out=")
        return
    if kind == "shape":
        out = np.empty(x.shape + (2,), x.dtype)
    elif kind == "dtype":
        out = np.empty(x.shape, np.float32 if x.dtype == np.float64 else np.float64)
    elif kind == "strided":
        if x.ndim == 0 or x.size < 2:
            return
        out = np.empty(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)[..., ::2]
    elif kind == "readonly":
        out.flags.writeable = False
    elif kind == "overlap":
        if x.size == 0:
            return
        out = x
    else:
        out = out.tolist()
    before = x.copy()
    with pytest.raises(DOCUMENTED, match="out"):
        forward(x, out=out, **kwargs)
    same(x, before, "input after a refused out=")


# -- rowwise (any dim) --------------------------------------------------------------------------

@pytest.mark.parametrize("op", ops_of_kind("rowwise"))
@SETTINGS
@given(data=st.data())
def test_rowwise(op, data):
    forward, backward = getattr(K, f"{op}_forward"), getattr(K, f"{op}_backward")
    fused = getattr(K, f"{op}_forward_backward")
    x = data.draw(float_array())
    rank = max(x.ndim, 1)
    dim = data.draw(st.one_of(st.integers(-rank - 1, rank), st.sampled_from([1.0, None, True])))
    valid = isinstance(dim, int) and not isinstance(dim, bool) and -rank <= dim < rank
    xv = layout(data.draw, x)
    y = check_against_copies(forward, [xv, dim], {}, valid=valid)
    if not valid:
        return
    g = data.draw(float_array(x.shape, x.dtype))
    gv = layout(data.draw, g)
    grad = check_against_copies(backward, [gv], {"y": layout(data.draw, y), "dim": dim},
                                valid=True)
    same(grad, backward(g.copy(), x=x.copy(), dim=dim), f"{op}_backward from x")
    yf, gf = check_against_copies(fused, [xv, gv, dim], {}, valid=True)
    near(yf, y, f"{op}_forward_backward: y")
    check_out(data, lambda a, out=None: forward(a, dim, out=out), x)


# -- elementwise losses -------------------------------------------------------------------------

def loss_operand(data, shape, dtype):
    kind = data.draw(st.sampled_from(["none", "scalar", "array", "row", "bad_shape", "bad_dtype"]))
    if kind == "none":
        return None, True
    if kind == "scalar":
        return data.draw(st.floats(0, 3)), True
    if kind == "array":
        return layout(data.draw, data.draw(float_array(shape, dtype))), True
    if kind == "row":
        return data.draw(float_array(shape[-1:] if shape else (), dtype)), True
    if kind == "bad_shape":
        wrong = tuple(s + 2 for s in shape) if shape else (2,)  # never broadcasts
        return np.ones(wrong, dtype), False
    return np.ones(shape, np.int64), False


@pytest.mark.parametrize("op", ops_of_kind("elementwise_loss"))
@SETTINGS
@given(data=st.data())
def test_elementwise_loss(op, data):
    spec = spec_of(op)
    forward, backward = getattr(K, f"{op}_forward"), getattr(K, f"{op}_backward")
    fused = getattr(K, f"{op}_forward_backward")
    x = data.draw(float_array())
    t_shape = data.draw(st.sampled_from([x.shape, x.shape[1:], ()]))
    t = data.draw(float_array(t_shape, x.dtype))
    reduction = data.draw(st.sampled_from(["none", "mean", "sum", "avg", None]))
    kwargs = {"reduction": reduction}
    valid = reduction in ("none", "mean", "sum")
    for p in getattr(spec, "tensor_params", ()):
        value, ok = loss_operand(data, x.shape, x.dtype)
        kwargs[p.name] = value
        valid = valid and ok
    params, ok = draw_params(data.draw, spec, x.dtype)
    kwargs.update({k: v for k, v in params.items() if k != "reduction"})
    valid = valid and ok
    args = [layout(data.draw, x), layout(data.draw, t)]
    loss = check_against_copies(forward, args, kwargs, valid=valid)
    if not valid:
        return
    assert np.asarray(loss).dtype == x.dtype
    assert np.shape(loss) == (x.shape if reduction == "none" else ())
    grad_output = data.draw(float_array(x.shape, x.dtype)) if reduction == "none" else \
        data.draw(st.floats(-2, 2))
    grad = check_against_copies(backward, [*args, grad_output], kwargs, valid=True)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    fl, fg = check_against_copies(fused, [*args, grad_output], kwargs, valid=True)
    near(fl, loss, f"{op}_forward_backward: loss")


@pytest.mark.parametrize("op", ops_of_kind("elementwise_loss"))
@SETTINGS
@given(data=st.data())
def test_loss_bad_input(op, data):
    forward = getattr(K, f"{op}_forward")
    x = data.draw(float_array())
    bad = bad_array(data.draw, x.shape)
    with pytest.raises(TypeError, match="input"):
        forward(bad, x)
    with pytest.raises(TypeError, match="target"):
        forward(x, bad)
    if x.ndim:
        wrong = np.ones(tuple(s + 2 for s in x.shape), x.dtype)
        with pytest.raises(ValueError, match="broadcast"):
            forward(x, wrong)


# -- class-index losses -------------------------------------------------------------------------

@pytest.mark.parametrize("op", ops_of_kind("class_index_loss"))
@SETTINGS
@given(data=st.data())
def test_class_index_loss(op, data):
    forward, backward = getattr(K, f"{op}_forward"), getattr(K, f"{op}_backward")
    fused = getattr(K, f"{op}_forward_backward")
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    x = data.draw(float_array(shape))
    class_dim = 1 if x.ndim >= 2 else 0
    n = x.shape[class_dim]
    sample = x.shape[:class_dim] + x.shape[class_dim + 1:]
    ignore_index = data.draw(st.sampled_from([-100, 0, 2, 10**30]))
    target_dtype = data.draw(st.sampled_from([np.int64, np.int32, np.uint8, np.uint64, np.int8]))
    high = max(n, 1) + 1  # one past the last class: out of range unless ignored
    target = data.draw(hnp.arrays(target_dtype, sample, elements=st.integers(0, min(high, 100))))
    if data.draw(st.booleans()) and target.size and np.issubdtype(target_dtype, np.signedinteger) \
            and -128 <= ignore_index < 128:
        target.flat[0] = ignore_index
    weight = data.draw(st.one_of(st.none(), float_array((n,), x.dtype),
                                 float_array((n + 1,), x.dtype)))
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]))
    in_range = (target == ignore_index) | (target < n)
    valid = bool(np.all(in_range)) and (weight is None or weight.shape == (n,)) and \
        not (n == 0 and target.size)
    if valid and abs(ignore_index) >= 2**63:
        valid = None  # no int64 holds it: refusing it is right, so is ignoring it when unused
    kwargs = {"weight": weight, "ignore_index": ignore_index, "reduction": reduction}
    args = [layout(data.draw, x), layout(data.draw, target)]
    loss = check_against_copies(forward, args, kwargs, valid=valid)
    if loss is None:
        return
    assert np.shape(loss) == (sample if reduction == "none" else ())
    grad_output = data.draw(float_array(sample, x.dtype)) if reduction == "none" else 1.0
    grad = check_against_copies(backward, [*args, grad_output], kwargs, valid=True)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    fl, fg = check_against_copies(fused, [*args, grad_output], kwargs, valid=True)
    near(fl, loss, f"{op}_forward_backward: loss")
    near(fg, grad, f"{op}_forward_backward: grad")


# -- every other kind: through the signatures ---------------------------------------------------

@pytest.mark.parametrize("op", [pytest.param(n, id=n) for n in K.OPS])
@SETTINGS
@given(data=st.data())
def test_every_op_through_signatures(op, data):
    """Every op, whatever its kind: required positional arguments get float arrays of one shape;
    keywords keep their defaults. Views behave as copies (results and any in-place updates
    alike) for ops that are deterministic; a non-float array is a documented error."""
    spec = spec_of(op)
    x = data.draw(float_array())
    for name in kind_of(spec).exports(spec):
        fn = getattr(K, name)
        required = [p for p in inspect.signature(fn).parameters.values()
                    if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        arrays = [data.draw(float_array(x.shape, x.dtype)) for _ in required]
        views = [layout(data.draw, a) for a in arrays]
        copies = [[a.copy() for a in arrays] for _ in range(2)]
        first, error = run(fn, copies[0], {})
        second, _ = run(fn, copies[1], {})
        result, view_error = run(fn, views, {})
        # A view may be refused where a copy is not (an in-place update needs a writeable,
        # contiguous array); the reverse, or a different answer, is a bug.
        if error is not None:
            assert view_error is not None, f"{name}: a view passed where its copy failed"
        elif view_error is None:
            try:
                same(first, second, name)
                same(copies[0], copies[1], name + " (in-place updates)")
            except AssertionError:
                continue  # random (dropout-like): two calls differ, so views cannot be compared
            same(result, first, name)
            same([contiguous(v) for v in views], copies[0], name + " (in-place updates)")
        if required:
            bad = bad_array(data.draw, x.shape)
            with pytest.raises(DOCUMENTED):
                fn(bad, *arrays[1:])


@pytest.mark.parametrize("op", ops_of_kind("class_index_loss"))
@pytest.mark.parametrize("ignore_index", [2**63, -(2**63) - 1, 10**30])
def test_ignore_index_beyond_int64_is_refused_or_unused(op, ignore_index):
    """An ignore_index no int64 holds never reaches Numba (whose typing error is a crash)."""
    forward = getattr(K, f"{op}_forward")
    x = np.zeros((2, 3), np.float32)
    target = np.array([0, 2])
    result, error = run(forward, [x, target], {"ignore_index": ignore_index})
    if error is None:  # accepted: nothing equals it, so it is the plain loss
        same(result, forward(x, target), f"{op}_forward")
    else:
        assert isinstance(error, ValueError) and "ignore_index" in str(error)
