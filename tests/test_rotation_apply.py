"""`rotation.apply` runs in place on views of its fresh output (three passes, no rot(h)): it
equals the literal z = c ⊙ h + s ⊙ rot(h) for every broadcast the sites use (and those that
take the literal path), never writes its inputs, and its gradients — from its own backward
(`rotation._Rotate`) — are the literal form's (training and routed subspace training
differentiate through it)."""

from __future__ import annotations

import itertools

import pytest
import torch

from road_interp import rotation

D = 128
SHAPES = [  # (h, c, s): plain site, routed rows over a sequence, broadcasts beyond h
    ((D,), (D,), (D,)),
    ((3, 5, D), (D,), (D,)),
    ((3, 5, D), (3, 1, D), (3, 1, D)),
    ((5, D), (3, 1, D), (3, 1, D)),
    ((5, D), (D,), (3, 1, D)),  # s beyond h ⊙ c: the literal path
]


def literal(h, c, s, group_size):
    return h * c + rotation.rotate_half(h, group_size) * s


@pytest.mark.parametrize("group_size", [2, 4, 64])
@pytest.mark.parametrize("shapes", SHAPES)
def test_equals_the_literal_form_and_leaves_inputs_alone(group_size, shapes):
    gen = torch.Generator().manual_seed(group_size)
    h, c, s = (torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes)
    before = [x.clone() for x in (h, c, s)]
    torch.testing.assert_close(rotation.apply(h, c, s, group_size), literal(h, c, s, group_size))
    assert all(torch.equal(x, y) for x, y in zip((h, c, s), before, strict=True))
    with torch.inference_mode():  # how a served batch runs
        torch.testing.assert_close(
            rotation.apply(h, c, s, group_size), literal(h, c, s, group_size)
        )


def test_promotes_like_the_literal_form():
    h, c = torch.randn(4, D), torch.randn(D)
    s = torch.randn(D, dtype=torch.float64)  # would promote z: the literal path
    z = rotation.apply(h, c, s, 64)
    assert z.dtype == torch.float64
    torch.testing.assert_close(z, literal(h, c, s, 64))


@pytest.mark.parametrize("grads", [g for g in itertools.product([False, True], repeat=3) if any(g)])
def test_gradients_equal_the_literal_forms(grads):
    gen = torch.Generator().manual_seed(0)
    shapes = ((2, 3, 8), (2, 1, 8), (2, 1, 8))
    values = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    inputs = tuple(v.clone().requires_grad_(g) for v, g in zip(values, grads, strict=True))
    assert torch.autograd.gradcheck(lambda *t: rotation.apply(*t, 4), inputs)
    weight = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(
        (rotation.apply(*inputs, 4) * weight).sum(), [x for x in inputs if x.requires_grad]
    )
    theirs = torch.autograd.grad(
        (literal(*inputs, 4) * weight).sum(), [x for x in inputs if x.requires_grad]
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("group_size", [2, 4, 64])
@pytest.mark.parametrize("shapes", SHAPES)
def test_gradients_equal_the_literal_form_for_every_broadcast(group_size, shapes):
    gen = torch.Generator().manual_seed(group_size)
    inputs = [
        torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
        for shape in shapes
    ]
    out = rotation.apply(*inputs, group_size)
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad((out * weight).sum(), inputs)
    theirs = torch.autograd.grad((literal(*inputs, group_size) * weight).sum(), inputs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
