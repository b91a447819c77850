import numpy as np
import pytest

from gateway.core.errors import BackendFailed, InvalidInput
from gateway.core.signature import Signature, TensorSpec, compatibility_problems

PIXELS = TensorSpec("pixels", "FP32", (-1, 64))
MASK = TensorSpec("mask", "BOOL", (-1, 64))
PROBS = TensorSpec("probabilities", "FP32", (-1, 10))
SIG = Signature(inputs=(PIXELS, MASK), outputs=(PROBS,), batched=True)


def inputs(batch_pixels: int = 2, batch_mask: int = 2) -> dict[str, np.ndarray]:
    return {
        "pixels": np.zeros((batch_pixels, 64), np.float32),
        "mask": np.ones((batch_mask, 64), bool),
    }


def test_valid_inputs_return_the_batch_size() -> None:
    assert SIG.validate_inputs(inputs(3, 3)) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("mask"), "missing input 'mask': expected BOOL [-1,64]"),
        (lambda d: d.update(extra=np.zeros(1)), "unknown input 'extra'"),
        (
            lambda d: d.update(pixels=np.zeros((2, 65), np.int64)),
            "input 'pixels': expected FP32 [-1,64], got INT64 [2,65]",
        ),
        (
            lambda d: d.update(pixels=np.zeros((2, 64, 1), np.float32)),
            "input 'pixels': expected FP32 [-1,64], got FP32 [2,64,1]",
        ),
        (
            lambda d: d.update(mask=np.ones((3, 64), bool)),
            "input 'mask': batch size 3 differs from input 'pixels' batch size 2",
        ),
        # The datatype alone differs (the shape is right): the datatype is checked too.
        (
            lambda d: d.update(pixels=np.zeros((2, 64), np.float64)),
            "input 'pixels': expected FP32 [-1,64], got FP64 [2,64]",
        ),
        (
            lambda d: d.update(pixels=np.zeros((2, 64), np.int64)),
            "input 'pixels': expected FP32 [-1,64], got INT64 [2,64]",
        ),
        (
            lambda d: d.update(mask=np.ones((2, 64), np.uint8)),
            "input 'mask': expected BOOL [-1,64], got UINT8 [2,64]",
        ),
    ],
)
def test_invalid_inputs_name_the_input_the_expected_and_the_actual(change, message) -> None:
    tensors = inputs()
    change(tensors)
    with pytest.raises(InvalidInput) as err:
        SIG.validate_inputs(tensors)
    assert message in err.value.message


def test_outputs_that_break_the_signature_are_the_backends_fault() -> None:
    with pytest.raises(BackendFailed, match="returned output 'probabilities' as FP64"):
        SIG.validate_outputs({"probabilities": np.zeros((2, 10))}, 2, "b")
    with pytest.raises(BackendFailed, match="with batch size 2"):
        SIG.validate_outputs({"probabilities": np.zeros((3, 10), np.float32)}, 2, "b")
    with pytest.raises(BackendFailed, match="returned no output 'probabilities'"):
        SIG.validate_outputs({}, 2, "b")
    SIG.validate_outputs({"probabilities": np.zeros((2, 10), np.float32)}, 2, "b")


@pytest.mark.parametrize("datatype", ["FP64", "INT64", "FP16"])
def test_a_declared_input_of_the_right_shape_but_another_datatype_is_refused(datatype) -> None:
    with pytest.raises(InvalidInput) as err:
        SIG.check_input("pixels", datatype, (2, 64))
    assert err.value.message == f"input 'pixels': expected FP32 [-1,64], got {datatype} [2,64]"
    SIG.check_input("pixels", "FP32", (2, 64))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.float16, np.int32])
def test_an_output_of_the_right_shape_but_another_datatype_is_the_backends_fault(dtype) -> None:
    with pytest.raises(BackendFailed) as err:
        SIG.validate_outputs({"probabilities": np.zeros((2, 10), dtype)}, 2, "b")
    assert err.value.reason == "bad_output"
    assert "returned output 'probabilities' as " in err.value.message
    assert "[2,10], signature expects FP32 [-1,10]" in err.value.message


def test_a_backend_may_be_wider_than_the_signature_but_not_narrower() -> None:
    dynamic = [TensorSpec("pixels", "FP32", (-1, -1)), TensorSpec("mask", "BOOL", (-1, 64))]
    assert (
        compatibility_problems(SIG, dynamic, [TensorSpec("probabilities", "FP32", (-1, 10))]) == []
    )

    fixed_batch = [TensorSpec("pixels", "FP32", (1, 64)), TensorSpec("mask", "BOOL", (-1, 64))]
    problems = compatibility_problems(SIG, fixed_batch, [PROBS])
    assert problems == [
        "input 'pixels': signature allows any size in dimension 0, the model fixes it to 1"
    ]


def test_compatibility_names_every_mismatch() -> None:
    problems = compatibility_problems(
        SIG,
        [TensorSpec("pixels", "FP64", (-1, 64)), TensorSpec("lengths", "INT64", (-1,))],
        [TensorSpec("probabilities", "FP32", (-1, 10, 1))],
    )
    assert "input 'pixels': signature declares FP32 [-1,64], the model has FP64 [-1,64]" in problems
    assert any(p.startswith("input 'mask': the model has no such input") for p in problems)
    assert "model input 'lengths' is not in the signature (the model requires it)" in problems
    assert any("output 'probabilities': signature declares rank 2" in p for p in problems)
