import numpy as np
import pytest

from gateway.admission.batching import BatchPolicy, batch_key, concat_inputs, split_outputs
from gateway.core.errors import BackendFailed


def test_target_is_the_largest_preferred_size_that_fits() -> None:
    assert BatchPolicy(64, 0.001).target_rows == 64
    assert BatchPolicy(64, 0.001, (8, 32)).target_rows == 32
    assert BatchPolicy(16, 0.001, (8, 32)).target_rows == 8


@pytest.mark.parametrize(
    "preferred, rows, taken",
    [
        ((), [1, 1, 1], 3),
        ((4, 8), [2, 2, 2, 2, 2], 4),  # 8 rows: four requests of 2
        ((4, 8), [2, 2, 1], 2),  # 5 rows: the largest preferred size reachable is 4
        ((4,), [3, 3], 2),  # 4 cannot be hit exactly: take all
    ],
)
def test_trim_aims_at_preferred_sizes(preferred, rows, taken) -> None:
    assert BatchPolicy(64, 0.001, preferred).trim(rows) == taken


def test_only_requests_with_equal_non_batch_shapes_share_a_key() -> None:
    a = {"x": np.zeros((2, 64), np.float32)}
    b = {"x": np.zeros((5, 64), np.float32)}
    c = {"x": np.zeros((2, 63), np.float32)}
    d = {"x": np.zeros((2, 64), np.float64)}
    assert batch_key(a, ["y"]) == batch_key(b, ["y"])
    assert batch_key(a, ["y"]) != batch_key(c, ["y"])
    assert batch_key(a, ["y"]) != batch_key(d, ["y"])
    assert batch_key(a, ["y"]) != batch_key(a, ["y", "z"])
    assert batch_key({"x": np.float32(1.0).reshape(())}, ["y"]) is None


def test_concat_then_split_gives_each_request_its_rows() -> None:
    requests = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 3, 2)]
    merged = concat_inputs(requests)
    assert merged["x"].shape == (6, 2)
    parts = split_outputs({"y": merged["x"] * 10}, [1, 3, 2], "b")
    for n, part in zip((1, 3, 2), parts):
        np.testing.assert_array_equal(part["y"], np.full((n, 2), n * 10, np.float32))
    with pytest.raises(BackendFailed, match="cannot split"):
        split_outputs({"y": np.zeros((5, 2))}, [1, 3, 2], "b")
