"""Shape caps and the signature's checks of a declared input, before any tensor
exists (issue 14): O(rank) arithmetic on Python ints, errors naming the input,
the expected and the actual."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.core.errors import BackendFailed, InvalidInput
from gateway.core.signature import (
    MAX_ELEMENTS,
    MAX_RANK,
    Signature,
    TensorSpec,
    check_rank,
    shape_size,
)

SIG = Signature(
    inputs=(TensorSpec("pixels", "FP32", (-1, 64)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1,))),
    batched=True,
)


@pytest.mark.parametrize(
    "shape, count",
    [((), 1), ((0,), 0), ((3, 4), 12), ((0, MAX_ELEMENTS), 0), ((1,) * MAX_RANK, 1)],
)
def test_shape_size_counts_elements(shape: tuple[int, ...], count: int) -> None:
    assert shape_size("x", shape) == count


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1,) * 65, "input 'x': shape has 65 dimensions, at most 32 are accepted"),
        ((1,) * 33, "input 'x': shape has 33 dimensions, at most 32 are accepted"),
        (
            (2**31,),
            f"input 'x': shape [2147483648] holds 2147483648 elements, at most {MAX_ELEMENTS}",
        ),
        ((2**62, 2**62), "holds 21267647932558653966460912964485513216 elements"),
        (
            (0, 2**63 - 1),
            f"input 'x': shape [0,{2**63 - 1}]: its dimensions other than 0 multiply to "
            f"{2**63 - 1}, at most {MAX_ELEMENTS} are accepted",
        ),
        ((2**31 - 1, 0, 2), "its dimensions other than 0 multiply to 4294967294"),
    ],
)
def test_shapes_no_tensor_may_have_are_refused(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        shape_size("x", shape)
    assert message in refused.value.message


def test_a_shape_within_the_caps_is_one_numpy_can_make() -> None:
    np.empty((0, MAX_ELEMENTS), np.float64)
    np.empty((0,) * MAX_RANK)


def test_the_rank_is_checked_before_the_dimensions_are_looked_at() -> None:
    with pytest.raises(InvalidInput, match="1000000 dimensions"):
        check_rank("x", 1_000_000)


def test_check_input_says_what_validate_inputs_says() -> None:
    for name, datatype, shape in [
        ("pixel", "FP32", (1, 64)),
        ("pixels", "INT64", (1, 64)),
        ("pixels", "FP32", (1, 65)),
        ("pixels", "FP32", (64,)),
    ]:
        with pytest.raises(InvalidInput) as declared:
            SIG.check_input(name, datatype, shape)
        array = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.int64)
        with pytest.raises(InvalidInput) as built:
            SIG.validate_inputs({name: array})
        assert declared.value.message == built.value.message
    SIG.check_input("pixels", "FP32", (0, 64))


def test_only_the_outputs_asked_for_are_checked() -> None:
    probabilities = {"probabilities": np.zeros((2, 10), np.float32)}
    SIG.validate_outputs(probabilities, 2, "b", ["probabilities"])
    with pytest.raises(BackendFailed, match="returned no output 'label'"):
        SIG.validate_outputs(probabilities, 2, "b")
    with pytest.raises(BackendFailed, match="returned no output 'label'"):
        SIG.validate_outputs(probabilities, 2, "b", ["label"])
