"""Fixed-order products: each element is the fma-chain over k, whatever the batch."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from convergence.models import fixed_order

pytestmark = pytest.mark.portable


def _fma(a: float, b: float, c: float) -> float:
    """a * b + c rounded once to the nearest double (exact rational arithmetic)."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def test_every_element_is_the_fma_chain_over_k_in_order():
    """Against exact arithmetic: c = fma(a[k], b[k], c) for k = 0..K-1 from out's value,
    over shapes that exercise every row tile (1..6 rows), a partial panel (N = 11) and
    two k-blocks (K > K_BLOCK)."""
    rng = np.random.default_rng(0)
    m, k, n = 13, fixed_order.K_BLOCK + 9, 11
    # terms of mixed magnitude, so that the order of summation shows in the last bits
    a = rng.standard_normal((m, k)) * np.exp(rng.uniform(-8, 8, (m, k)))
    b = rng.standard_normal((k, n))
    start = rng.standard_normal((m, n))
    got = fixed_order.matmul(torch.from_numpy(a), fixed_order.PackedColumns(b),
                             out=torch.from_numpy(start)).numpy()
    for i in range(m):
        for j in range(n):
            c = start[i, j]
            for t in range(k):
                c = _fma(a[i, t], b[t, j], c)
            assert got[i, j] == c, (i, j)
    # the same numbers summed by the BLAS differ in the last bits somewhere (else this test
    # could not tell the two apart)
    assert not np.array_equal(got, start + a @ b)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_rows_do_not_depend_on_the_call_or_the_threads(threads):
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((40, 300)) * 3)
    b = fixed_order.PackedColumns(rng.standard_normal((300, 21)))
    before = torch.get_num_threads()
    ref = fixed_order.matmul(a, b)
    try:
        torch.set_num_threads(threads)
        for size in (1, 2, 3, 4, 5, 6, 7, 13, 33):
            for start in (0, 1, 40 - size):
                out = fixed_order.matmul(a[start:start + size], b)
                assert torch.equal(out, ref[start:start + size]), (size, start)
    finally:
        torch.set_num_threads(before)


def test_sum_of_squares_in_its_documented_order():
    """Four running sums (element k to sum k mod 4), (s0 + s1) + (s2 + s3), then the tail:
    Python floats are IEEE doubles, so this reference is exact."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 4 * 37 + 3)) * np.exp(rng.uniform(-6, 6, (5, 151)))
    got = fixed_order.sum_squares(torch.from_numpy(a)).numpy()
    for i, row in enumerate(a.tolist()):
        s = [0.0] * 4
        for k in range(4 * (len(row) // 4)):
            s[k % 4] += row[k] * row[k]
        total = (s[0] + s[1]) + (s[2] + s[3])
        for v in row[4 * (len(row) // 4):]:
            total += v * v
        assert got[i] == total
        assert fixed_order.sum_squares(torch.from_numpy(a[i:i + 1]))[0] == total


def test_a_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="a has 3 columns, b has 4 rows"):
        fixed_order.matmul(torch.zeros(2, 3), fixed_order.PackedColumns(np.zeros((4, 2))))
