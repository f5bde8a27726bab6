"""tools/released_acceptance.py: the per-row cosine of the acceptance measurement (issue 25)."""

import numpy as np
import pytest

from tools.released_acceptance import row_cosines


def test_row_cosines_normalise_each_row_first():
    u = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    v = np.array([[6.0, 8.0], [1.0, 1.0], [0.0, -5.0]], np.float32)
    # hand values: same direction at twice the norm; 45 degrees; opposite directions
    np.testing.assert_allclose(row_cosines(u, v), [1.0, np.sqrt(0.5), -1.0], rtol=1e-12)


def test_row_cosines_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 3\)"):
        row_cosines(np.ones((2, 3)), np.ones((3, 3)))
