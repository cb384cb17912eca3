"""The rotation math against the dense reference, across variants, group sizes and dtypes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from road_interp import rotation
from tests.reference import dense_from_coefficients, dense_rotation

VARIANTS = ["road_1", "road_2", "road_4"]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}

cases = st.tuples(
    st.sampled_from(VARIANTS),
    st.sampled_from([2, 4, 64]),
    st.integers(1, 3),  # groups
    st.sampled_from([torch.float32, torch.bfloat16]),
    st.integers(0, 2**16),
)


def params(variant, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    theta, alpha = rotation.random_params(variant, d, g)
    return theta.to(dtype), alpha.to(dtype)


@settings(max_examples=60, deadline=None)
@given(cases)
def test_apply_equals_dense(case):
    variant, group_size, groups, dtype, seed = case
    d = group_size * groups
    theta, alpha = params(variant, d, seed, dtype)
    h = torch.randn(3, 5, d, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    c, s = rotation.coefficients(variant, group_size, theta, alpha)
    z = rotation.apply(h, c, s, group_size)
    assert z.dtype == dtype and z.shape == h.shape
    R = dense_rotation(variant, group_size, theta, alpha)
    torch.testing.assert_close(z.double(), h.double() @ R.T, **TOL[dtype])
    torch.testing.assert_close(dense_from_coefficients(c, s, group_size), R, **TOL[dtype])


@settings(max_examples=40, deadline=None)
@given(cases)
def test_merge_rows_then_unmerge(case):
    variant, group_size, groups, dtype, seed = case
    d = group_size * groups
    theta, alpha = params(variant, d, seed)
    W = torch.randn(d, 7, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    c, s = rotation.coefficients(variant, group_size, theta, alpha)
    merged = rotation.merge_rows(W, c.to(dtype), s.to(dtype), group_size)
    R = dense_rotation(variant, group_size, theta, alpha)
    torch.testing.assert_close(merged.double(), R @ W.double(), **TOL[dtype])
    if dtype == torch.float32:
        c_inv, s_inv = rotation.invert(c, s, group_size)
        restored = rotation.merge_rows(merged, c_inv, s_inv, group_size)
        torch.testing.assert_close(restored, W, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(cases)
def test_invert_and_compose_equal_dense(case):
    variant, group_size, groups, _, seed = case
    d = group_size * groups
    c1, s1 = rotation.coefficients(variant, group_size, *params(variant, d, seed))
    c2, s2 = rotation.coefficients(variant, group_size, *params(variant, d, seed + 7))
    R1 = dense_from_coefficients(c1, s1, group_size)
    R2 = dense_from_coefficients(c2, s2, group_size)
    ci, si = rotation.invert(c1, s1, group_size)
    torch.testing.assert_close(
        dense_from_coefficients(ci, si, group_size), torch.linalg.inv(R1), rtol=1e-4, atol=1e-4
    )
    cp, sp = rotation.compose((c1, s1), (c2, s2), group_size)
    torch.testing.assert_close(
        dense_from_coefficients(cp, sp, group_size), R2 @ R1, rtol=1e-5, atol=1e-5
    )


def test_road1_composition_adds_angles_and_multiplies_magnitudes():
    t1, a1 = torch.tensor([0.3, -1.0]), torch.tensor([1.5, 0.5])
    t2, a2 = torch.tensor([0.4, 0.25]), torch.tensor([2.0, 3.0])
    coef = lambda t, a: rotation.coefficients("road_1", 4, t, a)  # noqa: E731
    product = rotation.compose(coef(t1, a1), coef(t2, a2), 4)
    expected = coef(t1 + t2, a1 * a2)
    torch.testing.assert_close(product[0], expected[0])
    torch.testing.assert_close(product[1], expected[1])


def test_identity_params_are_identity():
    for variant in VARIANTS:
        c, s = rotation.coefficients(variant, 4, *rotation.identity_params(variant, 8))
        h = torch.randn(2, 8)
        assert torch.equal(rotation.apply(h, c, s, 4), h)


def test_pairing_layout():
    a, b = rotation.plane_indices(8, 4)
    assert a.tolist() == [0, 1, 4, 5] and b.tolist() == [2, 3, 6, 7]
    a, b = rotation.plane_indices(6, 2)
    assert a.tolist() == [0, 2, 4] and b.tolist() == [1, 3, 5]


def test_bad_pairing_and_singular_inverse():
    with pytest.raises(ValueError, match="not divisible by group_size 64"):
        rotation.check_pairing(100, 64)
    with pytest.raises(ValueError, match="even"):
        rotation.check_pairing(6, 3)
    with pytest.raises(ValueError, match="unknown RoAd variant"):
        rotation.num_params("road_3", 8)
    c, s = rotation.coefficients("road_1", 2, torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="singular"):
        rotation.invert(c, s, 2)
