"""--cross-class weights (client/augment.py): few inputs from two classes, the first class
holding at least half of each mix."""

import pytest

from latentmix.client.augment import cross_class_weights


def test_rows_mix_two_to_k_inputs_from_both_classes_with_the_first_class_dominant():
    rows = cross_class_weights(5, 3, 500, seed=1, alpha=1.0, k=4)

    assert cross_class_weights(5, 3, 500, seed=1, alpha=1.0, k=4) == rows
    assert cross_class_weights(5, 3, 500, seed=2, alpha=1.0, k=4) != rows
    for row in rows:
        ours, theirs = row[:5], row[5:]
        assert sum(row) == pytest.approx(1.0)
        assert 2 <= sum(w > 0 for w in row) <= 4
        assert any(ours) and any(theirs)
        assert 0.5 <= sum(ours) < 1.0
    shares = [sum(row[:5]) for row in rows]
    assert sum(shares) / len(shares) == pytest.approx(0.75, abs=0.02)  # uniform on [0.5, 1)


def test_two_inputs_at_most_is_one_of_each_class():
    rows = cross_class_weights(1, 1, 20, seed=0, alpha=1.0, k=2)
    assert all(sum(w > 0 for w in row) == 2 for row in rows)
