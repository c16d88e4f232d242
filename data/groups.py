"""Finite groups as multiplication tables, and their word problems (state tracking).

Elements are indices 0..order-1 with 0 the identity. S_n holds the permutations of n points in
lexicographic order, A_n the even ones; Z60 is the cyclic product Z3 x Z4 x Z5 (isomorphic to the
cyclic group of order 60). A word problem is a sequence of random elements x_1..x_T whose labels
are the running products y_t = x_1 x_2 ... x_t.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor


def _compose(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """(a b)(i) = a(b(i)): apply b, then a."""
    return tuple(a[i] for i in b)


def _parity(p: Sequence[int]) -> int:
    return sum(1 for i, j in itertools.combinations(range(len(p)), 2) if p[i] > p[j]) % 2


def _table(elements: list[tuple[int, ...]], mul) -> Tensor:
    index = {e: i for i, e in enumerate(elements)}
    return torch.tensor([[index[mul(a, b)] for b in elements] for a in elements], dtype=torch.long)


def symmetric(n: int) -> Tensor:
    """Multiplication table of S_n, [n!, n!]."""
    return _table(list(itertools.permutations(range(n))), _compose)


def alternating(n: int) -> Tensor:
    """Multiplication table of A_n (the even permutations), [n!/2, n!/2]."""
    return _table([p for p in itertools.permutations(range(n)) if _parity(p) == 0], _compose)


def cyclic_product(orders: Sequence[int]) -> Tensor:
    """Multiplication table of Z_{m1} x Z_{m2} x ... (componentwise addition)."""
    elements = list(itertools.product(*(range(m) for m in orders)))
    return _table(elements, lambda a, b: tuple((x + y) % m for x, y, m in zip(a, b, orders)))


GROUPS = {
    "S3": lambda: symmetric(3),
    "S5": lambda: symmetric(5),
    "A5": lambda: alternating(5),
    "Z60": lambda: cyclic_product((3, 4, 5)),
}
"""Group name -> builder of its multiplication table."""


def group_table(name: str) -> Tensor:
    """The multiplication table of a group in GROUPS."""
    if name not in GROUPS:
        raise ValueError(f"unknown group {name!r}; choose from {sorted(GROUPS)}")
    return GROUPS[name]()


def running_products(table: Tensor, words: Tensor) -> Tensor:
    """Labels of words [N, T]: out[:, t] = words[:, 0] words[:, 1] ... words[:, t]."""
    out = torch.empty_like(words)
    acc = words[:, 0]
    out[:, 0] = acc
    for t in range(1, words.shape[1]):
        acc = table[acc, words[:, t]]
        out[:, t] = acc
    return out


def word_problems(table: Tensor, num: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """(inputs, labels), int64 [num, length]: uniformly random elements and their running products."""
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(0, table.shape[0], (num, length), generator=gen)
    return words, running_products(table, words)
