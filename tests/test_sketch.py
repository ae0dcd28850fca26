"""The HyperLogLog sketch: accuracy against exact counts, its kept histogram, and its merge laws."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagmetrics import sketch
from flagmetrics.buffer import digest_users

CHUNK = 100_000
"""User ids hashed at once, so that a million ids never sit in memory together."""

digests = st.binary(min_size=8, max_size=8)
"""Any 8-byte digest, the extreme ones (all zero bits: the highest rank) included."""
batches = st.lists(st.lists(digests, max_size=200), min_size=1, max_size=8)
property_settings = settings(max_examples=60, deadline=None)


class Sketch:
    """Registers and the histogram `add` keeps beside them, as a store holds them."""

    def __init__(self) -> None:
        self.registers = bytearray(sketch.REGISTERS)
        self.histogram = [0] * sketch.HISTOGRAM_SIZE
        self.histogram[0] = sketch.REGISTERS

    def add(self, items: Iterable[bytes]) -> None:
        sketch.add(self.registers, self.histogram, items)

    def add_users(self, first: int, stop: int) -> None:
        """Add the digests of users `user-{first}` .. `user-{stop - 1}`, hashed a chunk at a time."""
        for start in range(first, stop, CHUNK):
            self.add(digest_users((f"user-{i}" for i in range(start, min(stop, start + CHUNK))), b""))

    def estimate(self) -> int:
        return sketch.estimate(self.histogram)


@pytest.mark.parametrize("distinct", [1_000, 100_000, 1_000_000])
def test_estimate_is_within_2_percent_of_the_exact_count(distinct: int) -> None:
    hll = Sketch()
    hll.add_users(0, distinct)
    error = abs(hll.estimate() - distinct) / distinct
    assert error <= 0.02, f"{distinct} distinct ids estimated as {hll.estimate()} ({error:.2%} off)"


def test_estimate_of_an_empty_sketch_is_zero() -> None:
    assert Sketch().estimate() == 0


def test_small_cardinalities_are_exact_or_off_by_at_most_one() -> None:
    hll = Sketch()
    misses = []
    for count in range(1, 101):
        hll.add(digest_users([f"user-{count - 1}"], b""))
        if abs(hll.estimate() - count) > 1:
            misses.append((count, hll.estimate()))
    assert misses == []


def test_a_keyed_hash_changes_the_digests_but_not_the_accuracy() -> None:
    plain, keyed = Sketch(), Sketch()
    users = [f"user-{i}" for i in range(5_000)]
    plain.add(digest_users(users, b""))
    keyed.add(digest_users(users, b"a secret key"))
    assert plain.registers != keyed.registers
    assert abs(keyed.estimate() - 5_000) <= 0.02 * 5_000


@property_settings
@given(batches)
def test_histogram_kept_by_add_equals_the_histogram_of_the_registers(batch_list: list[list[bytes]]) -> None:
    hll = Sketch()
    for batch in batch_list:
        hll.add(batch)
        assert hll.histogram == sketch.histogram_of(hll.registers)


@property_settings
@given(batches)
def test_estimate_never_decreases_as_ids_are_added(batch_list: list[list[bytes]]) -> None:
    hll = Sketch()
    previous = hll.estimate()
    for batch in batch_list:
        hll.add(batch)
        current = hll.estimate()
        assert current >= previous
        previous = current


@property_settings
@given(batches)
def test_adding_the_same_ids_twice_changes_nothing(batch_list: list[list[bytes]]) -> None:
    hll = Sketch()
    for batch in batch_list:
        hll.add(batch)
    registers, histogram = bytes(hll.registers), list(hll.histogram)
    for batch in batch_list:
        hll.add(batch)
    assert bytes(hll.registers) == registers
    assert hll.histogram == histogram


@property_settings
@given(st.lists(digests, max_size=300), st.lists(digests, max_size=300))
def test_adding_a_then_b_gives_the_registers_of_b_then_a(a: list[bytes], b: list[bytes]) -> None:
    ab, ba = Sketch(), Sketch()
    ab.add(a)
    ab.add(b)
    ba.add(b)
    ba.add(a)
    assert ab.registers == ba.registers
    assert ab.histogram == ba.histogram


@property_settings
@given(st.lists(digests, max_size=300), st.lists(digests, max_size=300))
def test_adding_a_then_b_gives_the_register_wise_maximum_of_a_and_b(a: list[bytes], b: list[bytes]) -> None:
    only_a, only_b, both = Sketch(), Sketch(), Sketch()
    only_a.add(a)
    only_b.add(b)
    both.add(a)
    both.add(b)
    assert both.registers == bytearray(map(max, only_a.registers, only_b.registers))


def test_the_all_zero_digest_reaches_the_highest_rank_and_is_counted_once() -> None:
    hll = Sketch()
    hll.add([bytes(8)])
    assert hll.registers[0] == sketch.Q + 1
    assert hll.histogram[sketch.Q + 1] == 1
    assert hll.estimate() == 1
