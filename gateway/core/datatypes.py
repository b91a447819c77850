"""KServe v2 tensor datatypes and their numpy counterparts.

BYTES tensors are numpy object arrays holding `bytes` elements; every other
datatype maps to a fixed-width numpy dtype (little-endian on the wire, as the
binary tensor extension requires).
"""

from __future__ import annotations

import numpy as np

# v2 name -> numpy dtype. BF16 is left out on purpose: numpy has no native
# bfloat16, so it cannot be decoded without an extra dependency.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

DATATYPES: frozenset[str] = frozenset(NUMPY_DTYPES)

_BY_NUMPY: dict[np.dtype, str] = {
    dt.newbyteorder("="): name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (BYTES for object/str/bytes arrays)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    name = _BY_NUMPY.get(array.dtype.newbyteorder("="))
    if name is None:
        raise ValueError(f"numpy dtype {array.dtype} has no KServe v2 datatype")
    return name


# ONNX Runtime's type strings (NodeArg.type) -> v2 names.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
