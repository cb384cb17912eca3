"""The rotation math against the dense reference, across variants, group sizes and dtypes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from road_interp import rotation
from tests.reference import dense_from_coefficients, dense_rotation
from tests.reference import planes as reference_planes

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
    if dtype == torch.float32:  # the inverse in float64: float32 loses ~eps·cond(R), and
        # random RoAd4 blocks reach cond(R) ~ 1e6
        c64, s64, w64 = c.double(), s.double(), W.double()
        c_inv, s_inv = rotation.invert_coefficients(c64, s64, group_size)
        merged64 = rotation.merge_rows(w64, c64, s64, group_size)
        restored = rotation.merge_rows(merged64, c_inv, s_inv, group_size)
        torch.testing.assert_close(restored, w64, rtol=1e-8, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(cases)
def test_invert_and_compose_equal_dense(case):
    variant, group_size, groups, _, seed = case
    d = group_size * groups
    c1, s1 = rotation.coefficients(variant, group_size, *params(variant, d, seed))
    c2, s2 = rotation.coefficients(variant, group_size, *params(variant, d, seed + 7))
    R1 = dense_from_coefficients(c1, s1, group_size)
    R2 = dense_from_coefficients(c2, s2, group_size)
    ci, si = rotation.invert_coefficients(c1, s1, group_size)
    torch.testing.assert_close(
        # float32: a nearly singular block has large inverse entries, so compare relatively
        dense_from_coefficients(ci, si, group_size),
        torch.linalg.inv(R1),
        rtol=1e-3,
        atol=1e-4,
    )
    cp, sp = rotation.compose_coefficients((c1, s1), (c2, s2), group_size)
    torch.testing.assert_close(
        dense_from_coefficients(cp, sp, group_size), R2 @ R1, rtol=1e-5, atol=1e-5
    )


def test_road1_composition_adds_angles_and_multiplies_magnitudes():
    t1, a1 = torch.tensor([0.3, -1.0]), torch.tensor([1.5, 0.5])
    t2, a2 = torch.tensor([0.4, 0.25]), torch.tensor([2.0, 3.0])
    coef = lambda t, a: rotation.coefficients("road_1", 4, t, a)  # noqa: E731
    product = rotation.compose_coefficients(coef(t1, a1), coef(t2, a2), 4)
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
        rotation.invert_coefficients(c, s, 2)


# -- Layout: the variant's storage, against the dense reference ---------------------------------
layout_cases = st.tuples(
    st.sampled_from(VARIANTS),
    st.sampled_from([2, 4, 8, 64]),
    st.integers(1, 3),  # groups
    st.integers(0, 2**16),
)


def dense(layout, params):
    return dense_rotation(layout.variant, layout.group_size, *params)


@settings(max_examples=60, deadline=None)
@given(layout_cases)
def test_layout_algebra_equals_dense(case):
    """coefficients, params_from_coefficients, product and inverse of a Layout are the dense
    block matrix, its parameters back, the matrix product and the matrix inverse."""
    variant, group_size, groups, seed = case
    d = group_size * groups
    layout = rotation.Layout(variant, group_size)
    first = tuple(p.double() for p in params(variant, d, seed))
    second = tuple(p.double() for p in params(variant, d, seed + 7))
    R1, R2 = dense(layout, first), dense(layout, second)
    c, s = layout.coefficients(*first)
    assert c.shape == s.shape == (d,)
    torch.testing.assert_close(dense_from_coefficients(c, s, group_size), R1)
    back = layout.params_from_coefficients(c, s)
    assert back[0].shape == back[1].shape == (layout.num_params(d),)
    torch.testing.assert_close(dense(layout, back), R1)
    torch.testing.assert_close(dense(layout, layout.product(first, second)), R2 @ R1)
    inverse = layout.inverse(*first)
    torch.testing.assert_close(dense(layout, inverse) @ R1, torch.eye(d, dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(layout_cases)
def test_general_blocks_are_stored_by_road2_and_road4_refused_by_road1(case):
    _, group_size, groups, seed = case
    d = group_size * groups
    c, s = rotation.Layout("road_4", group_size).coefficients(*params("road_4", d, seed))
    c, s = c.double(), s.double()
    for variant in ("road_2", "road_4"):
        layout = rotation.Layout(variant, group_size)
        stored = layout.params_from_coefficients(c, s)
        torch.testing.assert_close(dense(layout, stored), dense_from_coefficients(c, s, group_size))
    with pytest.raises(ValueError, match="road_1 cannot represent"):
        rotation.Layout("road_1", group_size).params_from_coefficients(c, s)


def block_readers(variant, group_size, d):
    """Brute force on the dense reference: stored entry j -> the set of (plane, block entry)
    that change when θ[j] and α[j] change."""
    pairs = reference_planes(d, group_size)
    n = rotation.num_params(variant, d)
    theta = torch.full((n,), 0.4, dtype=torch.float64)
    alpha = torch.full((n,), 1.3, dtype=torch.float64)
    base = dense_rotation(variant, group_size, theta, alpha)
    readers = {}
    for j in range(n):
        t, a = theta.clone(), alpha.clone()
        t[j], a[j] = 0.9, 0.7
        changed = dense_rotation(variant, group_size, t, a) != base
        readers[j] = {
            (p, e)
            for p, (ca, cb) in enumerate(pairs)
            for e, (row, col) in enumerate(((ca, ca), (ca, cb), (cb, ca), (cb, cb)))
            if changed[row, col]
        }
    return readers


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("group_size", "d"), [(2, 8), (4, 16), (8, 16), (64, 64)])
def test_layout_bookkeeping_against_brute_force(variant, group_size, d):
    """entry_index, param_planes, param_mask and plane_support agree with what the dense
    reference says each stored entry moves."""
    layout = rotation.Layout(variant, group_size)
    readers = block_readers(variant, group_size, d)
    index = layout.entry_index(d)
    assert index.shape == (d // 2, 4) and index.dtype == torch.long
    for j, read in readers.items():
        assert read and len({p for p, _ in read}) == 1  # read, and only within one plane
        assert all(int(index[p, e]) == j for p, e in read)
    assert sum(len(r) for r in readers.values()) == 2 * d  # every block entry read once
    owner = torch.tensor([next(iter(readers[j]))[0] for j in range(len(readers))])
    assert torch.equal(layout.param_planes(d), owner)
    gen = torch.Generator().manual_seed(d + group_size)
    plane_mask = torch.rand(d // 2, generator=gen) < 0.4
    assert torch.equal(layout.param_mask(plane_mask), plane_mask[owner])
    # a random set of entries moved off the identity: the support is their owners' planes
    theta, alpha = rotation.identity_params(variant, d, torch.float64)
    theta = torch.where(torch.rand(theta.shape, generator=gen) < 0.2, 0.3, theta)
    alpha = torch.where(torch.rand(alpha.shape, generator=gen) < 0.1, 2.0, alpha)
    expected = torch.zeros(d // 2, dtype=torch.bool)
    for j in range(len(readers)):
        if theta[j] != 0 or alpha[j] != 1:
            expected[owner[j]] = True
    assert torch.equal(layout.plane_support(theta, alpha), expected)


def test_layout_construction_and_sizes():
    from road_interp import RoadConfig

    config = RoadConfig(variant="road_4", group_size=8)
    assert rotation.Layout.of(config) == rotation.Layout("road_4", 8)
    for variant, per_coordinate in (("road_1", 0.5), ("road_2", 1), ("road_4", 2)):
        layout = rotation.Layout(variant, 4)
        assert layout.num_params(24) == int(per_coordinate * 24)
        assert layout.site_size(layout.num_params(24)) == 24
        assert layout.scaled_rotation == (variant == "road_1")
    with pytest.raises(ValueError, match="unknown RoAd variant"):
        rotation.Layout("road_3", 2)
    with pytest.raises(ValueError, match="even"):
        rotation.Layout("road_1", 3)
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        rotation.Layout("road_2", 4).entry_index(6)
    with pytest.raises(ValueError, match="α = 0"):
        rotation.Layout("road_1", 2).inverse(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="singular"):
        rotation.Layout("road_2", 2).inverse(torch.zeros(2), torch.zeros(2))
