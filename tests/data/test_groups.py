"""Group tables of the state-tracking suite: group axioms, orders, and running-product labels."""

from __future__ import annotations

import math

import pytest
import torch

from skein.data.groups import group_table, running_products, word_problems


@pytest.mark.parametrize("name,order,abelian", [("S3", 6, False), ("S5", 120, False), ("A5", 60, False), ("Z60", 60, True)])  # fmt: skip
def test_group_axioms(name: str, order: int, abelian: bool) -> None:
    t = group_table(name)
    n = t.shape[0]
    assert t.shape == (order, order)
    e = torch.arange(n)
    assert torch.equal(t[0], e) and torch.equal(t[:, 0], e)  # 0 is the identity
    for row in t:  # Latin square: each element has a unique inverse, products closed
        assert torch.equal(row.sort().values, e)
    assert ((t == 0).sum(1) == 1).all()
    a, b, c = torch.randint(0, n, (3, 2000))
    assert torch.equal(t[t[a, b], c], t[a, t[b, c]])  # associativity
    assert torch.equal(t, t.T) == abelian


def _element_order(t: torch.Tensor, g: int) -> int:
    x, k = g, 1
    while x != 0:
        x, k = t[x, g].item(), k + 1
    return k


def test_element_orders() -> None:
    """Z60 is cyclic (an element of order 60); A5 is not (largest element order 5); S5 has order-6
    elements (a 2-cycle times a 3-cycle); every element order divides the group order."""
    for name, largest in (("Z60", 60), ("A5", 5), ("S5", 6), ("S3", 3)):
        t = group_table(name)
        orders = [_element_order(t, g) for g in range(t.shape[0])]
        assert max(orders) == largest
        assert all(t.shape[0] % o == 0 for o in orders)
    s3 = group_table("S3")
    assert sorted(_element_order(s3, g) for g in range(6)) == [1, 2, 2, 2, 3, 3]


def test_running_products() -> None:
    t = group_table("S5")
    x, y = word_problems(t, 20, 37, seed=4)
    assert x.shape == y.shape == (20, 37) and x.unique().numel() > 60
    for xi, yi in zip(x, y):
        acc = 0
        for xt, yt in zip(xi.tolist(), yi.tolist()):
            acc = t[acc, xt].item()
            assert yt == acc
    x2, _ = word_problems(t, 20, 37, seed=4)
    assert torch.equal(x, x2) and not torch.equal(x, word_problems(t, 20, 37, seed=5)[0])
    assert torch.equal(running_products(t, x[:, :5]), y[:, :5])
    assert math.factorial(5) == t.shape[0]


def test_unknown_group() -> None:
    with pytest.raises(ValueError, match="unknown group 'S4'"):
        group_table("S4")
