"""The library's one positive-integer check."""

import numpy as np
import pytest

from dcls_lib.validation import check_positive_int


def test_positive_ints_pass_and_numpy_ints_count():
    check_positive_int(a=1, b=np.int64(3))


@pytest.mark.parametrize("value", [0, -2, 1.0, True, "3", None])
def test_anything_else_names_the_argument(value):
    with pytest.raises(ValueError, match=r"^batch_size must be a positive int, got "):
        check_positive_int(epochs=2, batch_size=value)
