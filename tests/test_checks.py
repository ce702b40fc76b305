"""`editctrl_core.checks`: the finiteness rule every layer uses (one reduction, exact on every float dtype)."""

import pytest
import torch

from editctrl_core.checks import NonFiniteError, all_finite, check_finite_tensor

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 4321, -1])
def test_all_finite_sees_one_bad_value_anywhere(dtype, bad, where):
    """One NaN or ±Inf at the first, a middle or the last element of a [5,7,11,13] tensor (also through a strided
    view) is seen; the same tensor without it is finite."""
    x = torch.rand(5, 7, 11, 13, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(x) and all_finite(x.transpose(1, 3))
    x.view(-1)[where] = bad
    assert not all_finite(x) and not all_finite(x.transpose(1, 3))


def test_all_finite_handles_empty_integer_and_extreme_finite_tensors():
    """Empty and integer tensors are finite; the largest finite values are not mistaken for overflow."""
    assert all_finite(torch.empty(0, 3)) and all_finite(torch.arange(10))
    huge = torch.full((1000,), torch.finfo(torch.float32).max)
    huge[::2] *= -1
    assert all_finite(huge)


def test_check_finite_tensor_still_counts_and_locates_the_bad_values():
    x = torch.zeros(3, 4)
    x[1, 2], x[2, 3] = float("nan"), float("inf")
    with pytest.raises(NonFiniteError, match=r"frames holds 2 non-finite values \(1 NaN, 1 ±Inf\) of 12; "
                                             r"first at index \(1, 2\)"):
        check_finite_tensor("frames", x)
    assert check_finite_tensor("frames", torch.ones(2)) is not None
