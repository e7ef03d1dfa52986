"""keys.unique_rows: the groups of np.unique over rows, by a packed key or by the rows."""

import numpy as np
import pytest

from growth_assets.model.keys import unique_rows


@pytest.mark.parametrize("scale", [1, 2**55], ids=["packed", "rows"])  # 2**55: spans past 2**62
def test_unique_rows_are_numpys_unique_rows_in_the_same_order(scale):
    rng = np.random.default_rng(3)
    cols = [rng.integers(-1, 9, 2000), rng.integers(-1, 30, 2000) * scale, rng.integers(0, 4, 2000)]
    want_rows, want_group = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
    rows, group = unique_rows(cols)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(group, want_group.reshape(-1))


def test_no_rows_make_no_groups():
    rows, group = unique_rows([np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)])
    assert rows.shape == (0, 2) and group.size == 0
