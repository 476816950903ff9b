"""Bad input gets a TypeError/ValueError naming the problem, never a crash or a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
import symgrad_kernels as K


@pytest.mark.parametrize("bad", [np.arange(4), np.ones(3, dtype=np.float16),
                                 np.ones(3, dtype=np.complex128), np.array(["a"], dtype=object)])
def test_non_float_arrays_are_type_errors(bad):
    with pytest.raises(TypeError, match="dtype"):
        K.sigmoid_forward(bad)
    with pytest.raises(TypeError, match="dtype"):
        K.softmax_forward(bad)
    with pytest.raises(TypeError, match="dtype"):
        K.mse_loss_forward(bad, bad)


def test_lists_are_type_errors():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        K.relu_forward([1.0, 2.0])


def test_mismatched_shapes_and_dtypes():
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match="shape"):
        K.sigmoid_backward(np.ones((4, 3)), y=x)
    with pytest.raises(TypeError, match="dtype"):
        K.sigmoid_backward(np.ones((3, 4), np.float32), y=x)
    with pytest.raises(ValueError, match="broadcast"):
        K.mse_loss_forward(x, np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        K.cross_entropy_forward(x, np.zeros(4, dtype=np.int64))


def test_unknown_and_out_of_domain_parameters():
    x = np.ones(3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'slope'"):
        K.leaky_relu_forward(x, slope=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        K.softplus_forward(x, beta=0.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        K.mse_loss_forward(x, x, reduction="avg")
    with pytest.raises(TypeError, match="real number"):
        K.elu_forward(x, alpha="1")
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        K.softmax_forward(np.ones((2, 2)), dim=2)


def test_backward_names_what_it_needs():
    g = np.ones(3)
    with pytest.raises(TypeError, match="needs x"):
        K.silu_backward(g, y=g)
    # leaky_relu's output form holds only for a non-negative slope: the condition is named.
    with pytest.raises(ValueError, match=r"needs negative_slope >= 0; pass x="):
        K.leaky_relu_backward(g, y=g, negative_slope=-0.5)
    with pytest.raises(TypeError, match="needs y"):
        K.sigmoid_backward(g)


def test_class_targets():
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="integer dtype"):
        K.cross_entropy_forward(x, np.zeros(2))
    with pytest.raises(ValueError, match="class index 3"):
        K.cross_entropy_forward(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="weight has shape"):
        K.cross_entropy_forward(x, np.array([0, 1]), weight=np.ones(4))
    assert np.isnan(K.cross_entropy_forward(x, np.array([-100, -100])))  # all ignored: 0/0


def test_out_argument_is_checked():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="out has shape"):
        K.tanh_forward(x, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="out has shape"):
        K.tanh_forward(x, out=np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        K.tanh_forward(x, out=x)
    with pytest.raises(ValueError, match="contiguous"):
        K.tanh_forward(x.T.copy(), out=np.empty((2, 3)).T)


def test_empty_arrays():
    for dt in (np.float32, np.float64):
        e = np.empty((0, 4), dt)
        assert K.sigmoid_forward(e).shape == (0, 4)
        assert K.softmax_forward(e, dim=1).shape == (0, 4)
        assert K.log_softmax_backward(e, y=e).shape == (0, 4)
        assert K.mse_loss_forward(e, e, reduction="none").shape == (0, 4)
        assert K.mse_loss_forward(e, e, reduction="sum") == 0
        assert np.isnan(K.mse_loss_forward(e, e))  # mean of nothing, as torch
        loss, grad = K.cross_entropy_forward_backward(e, np.empty(0, np.int64), reduction="sum")
        assert loss == 0 and grad.shape == (0, 4)


def test_cross_parameter_constraints():
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        K.hardtanh_forward(np.ones(3), min_val=2.0, max_val=1.0)


def test_memoised_parameters_still_check_every_call():
    # _params remembers checked plain floats; nothing else may ride on a remembered entry.
    x = np.array([-2.0, 0.5, 3.0])
    y = K.softplus_forward(x, beta=1.0)
    np.testing.assert_array_equal(K.softplus_forward(x, beta=1.0), y)
    with pytest.raises(TypeError, match="real number"):
        K.softplus_forward(x, beta=True)  # True == 1.0 and hashes alike
    for _ in range(2):  # a refused value is never remembered
        with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
            K.hardtanh_forward(x, min_val=2.0, max_val=1.0)
        with pytest.raises(ValueError, match="beta is nan"):
            K.softplus_forward(x, beta=float("nan"))
    # -0.0 == 0.0 as a key, but the slope's sign reaches the result (0.0 * -2 = -0.0,
    # -0.0 * -2 = 0.0): zeros are never memoised.
    assert np.signbit(K.leaky_relu_forward(x, negative_slope=0.0)[0])
    assert not np.signbit(K.leaky_relu_forward(x, negative_slope=-0.0)[0])
    # float32 and float64 calls with the same values get parameters of their own dtype.
    assert K.elu_forward(x.astype(np.float32), alpha=0.7).dtype == np.float32
    assert K.elu_forward(x, alpha=0.7).dtype == np.float64
