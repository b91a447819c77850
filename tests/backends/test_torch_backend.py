"""`type: torch` backends: TorchScript and torch.export artifacts built here
from small modules, served by TorchBackend and through the runtime, answers
compared with the eager modules'."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from gateway.backends.torch_backend import (
    BACKEND_TYPE,
    TORCH_DTYPES,
    TorchBackend,
    TorchLoadError,
)
from gateway.backends.torch_config import TorchBackendConfig
from gateway.config.loader import ConfigError, parse_config
from gateway.core.datatypes import NUMPY_DTYPES
from gateway.core.errors import DeadlineExceeded
from gateway.core.types import InferRequest, RequestContext
from gateway.runtime import Runtime, build_runtime
from tests.torch_support import (
    AFFINE_INPUTS,
    AFFINE_OUTPUTS,
    affine,
    require_torch,
    save_export,
    save_torchscript,
)

torch = require_torch()

# This torch deprecates TorchScript (in favour of torch.export), which still serves
# models that do not export.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


class Clone(torch.nn.Module):
    def forward(self, x):
        return x.clone()


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


class AddOneInPlace(torch.nn.Module):
    def forward(self, x):
        return x.add_(1)


class Named(torch.nn.Module):
    def forward(self, x):
        return {"double": x * 2, "plus_one": x + 1}


class Slow(torch.nn.Module):
    """Work in proportion to the rows, for a run that outlasts a deadline."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((64, 64), 0.01))

    def forward(self, x):
        for _ in range(50):
            x = torch.tanh(x @ self.weight)
        return x


def script(module: Any, path: Path) -> Path:
    return save_torchscript(torch, module, path)


def spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def backend_config(path: Path, **keys: Any) -> TorchBackendConfig:
    keys = {
        "inputs": AFFINE_INPUTS,
        "outputs": AFFINE_OUTPUTS,
        "max_concurrency": 1,
        "intra_op_threads": 1,
        **keys,
    }
    return TorchBackendConfig(type="torch", path=str(path), **keys)


def serve(backend: TorchBackend, inputs: dict[str, np.ndarray], outputs: list[str]) -> Any:
    async def call() -> dict[str, np.ndarray]:
        return await backend.infer(inputs, outputs, None)

    return asyncio.run(call())


Build = Callable[[str, TorchBackendConfig, Path], TorchBackend]


@pytest.fixture()
def build() -> Iterator[Build]:
    """TorchBackend, closed after the test."""
    built: list[TorchBackend] = []

    def load(name: str, config: TorchBackendConfig, path: Path) -> TorchBackend:
        built.append(TorchBackend(name, config, path))
        return built[-1]

    yield load
    for backend in built:
        asyncio.run(backend.close())


@pytest.fixture(scope="module")
def eager() -> Any:
    return affine(torch)


@pytest.fixture(scope="module")
def artifacts(eager: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("torch-artifacts")
    example = (torch.zeros(2, 4), torch.zeros(2, 3))
    return {
        "torchscript": save_torchscript(torch, eager, where / "affine.pt"),
        "export": save_export(torch, eager, where / "affine.pt2", *example),
    }


def affine_inputs(rows: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, 4)).astype(np.float32),
        "shift": rng.standard_normal((rows, 3)).astype(np.float32),
    }


def eager_answer(eager: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        y, label = eager(torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["shift"]))
    return {"y": y.numpy(), "label": label.numpy()}


def assert_same(answer: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert answer.keys() == expected.keys()
    for name, value in expected.items():
        assert answer[name].dtype == value.dtype, name
        np.testing.assert_allclose(answer[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


# -- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("artifact", ["torchscript", "export"])
def test_answers_equal_the_eager_modules(
    build: Build, artifact: str, artifacts: dict[str, Path], eager: Any
) -> None:
    path = artifacts[artifact]
    backend = build("affine", backend_config(path), path)
    assert backend.format == artifact
    inputs = affine_inputs(5)
    expected = eager_answer(eager, inputs)
    assert_same(serve(backend, inputs, ["y", "label"]), expected)
    assert_same(serve(backend, inputs, ["label"]), {"label": expected["label"]})
    assert not backend.busy()


@pytest.mark.parametrize("artifact", ["torchscript", "export"])
def test_format_may_be_set_for_any_suffix(
    build: Build, artifact: str, artifacts: dict[str, Path], eager: Any, tmp_path: Path
) -> None:
    path = tmp_path / "affine.bin"
    path.write_bytes(artifacts[artifact].read_bytes())
    backend = build("affine", backend_config(path, format=artifact), path)
    inputs = affine_inputs(2)
    assert_same(serve(backend, inputs, ["y", "label"]), eager_answer(eager, inputs))


def test_a_dict_result_is_named_by_its_keys_and_one_tensor_is_the_one_output(
    build: Build,
    tmp_path: Path,
) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    outputs = [spec("plus_one", "FP32", [-1, 3]), spec("double", "FP32", [-1, 3])]
    named = script(Named(), tmp_path / "named.pt")
    inputs = [spec("x", "FP32", [-1, 3])]
    backend = build("named", backend_config(named, inputs=inputs, outputs=outputs), named)
    answer = serve(backend, {"x": x}, ["double", "plus_one"])
    np.testing.assert_array_equal(answer["double"], x * 2)
    np.testing.assert_array_equal(answer["plus_one"], x + 1)
    single = script(Clone(), tmp_path / "clone.pt")
    config = backend_config(single, inputs=inputs, outputs=[spec("y", "FP32", [-1, 3])])
    np.testing.assert_array_equal(serve(build("one", config, single), {"x": x}, ["y"])["y"], x)


@pytest.mark.parametrize(
    "datatype",
    sorted(TORCH_DTYPES),
)
def test_every_datatype_reaches_the_model_and_comes_back(
    build: Build, datatype: str, tmp_path: Path
) -> None:
    path = script(Clone(), tmp_path / "clone.pt")
    tensors = [spec("x", datatype, [-1, 3])]
    backend = build("clone", backend_config(path, inputs=tensors, outputs=tensors), path)
    x = (np.arange(6).reshape(2, 3) % (2 if datatype == "BOOL" else 100)).astype(
        NUMPY_DTYPES[datatype]
    )
    answer = serve(backend, {"x": x}, ["x"])["x"]
    assert answer.dtype == x.dtype
    np.testing.assert_array_equal(answer, x)


def test_inputs_are_shared_with_the_model_unless_it_writes_into_them(
    build: Build, tmp_path: Path
) -> None:
    tensors = [spec("x", "FP32", [-1, 2])]
    identity = script(Identity(), tmp_path / "identity.pt")
    backend = build("id", backend_config(identity, inputs=tensors, outputs=tensors), identity)
    assert not backend.copies_inputs
    x = np.ones((3, 2), np.float32)
    assert np.shares_memory(serve(backend, {"x": x}, ["x"])["x"], x)  # zero-copy
    # A read-only buffer (a binary request's body) is copied: torch tensors are writable.
    frozen = np.ones((3, 2), np.float32)
    frozen.flags.writeable = False
    answer = serve(backend, {"x": frozen}, ["x"])["x"]
    assert not np.shares_memory(answer, frozen)
    np.testing.assert_array_equal(answer, frozen)

    in_place = script(AddOneInPlace(), tmp_path / "in_place.pt")
    backend = build("inc", backend_config(in_place, inputs=tensors, outputs=tensors), in_place)
    assert backend.copies_inputs  # seen writing into its inputs by the dry run
    np.testing.assert_array_equal(serve(backend, {"x": x}, ["x"])["x"], x + 1)
    np.testing.assert_array_equal(x, np.ones((3, 2), np.float32))  # the caller's, untouched


def test_each_backend_runs_with_its_own_intra_op_threads(
    build: Build, artifacts: dict[str, Path]
) -> None:
    path = artifacts["torchscript"]
    one = build("one", backend_config(path, intra_op_threads=1), path)
    two = build("two", backend_config(path, intra_op_threads=2), path)
    # Threads of the backends' own pools (torch.set_num_threads is per thread there).
    assert one._pool.submit(torch.get_num_threads).result() == 1
    assert two._pool.submit(torch.get_num_threads).result() == 2
    assert one._pool.submit(torch.get_num_threads).result() == 1


# -- deadlines -------------------------------------------------------------------------


def test_a_deadline_that_passes_during_a_run_is_deadline_exceeded(tmp_path: Path) -> None:
    path = script(Slow(), tmp_path / "slow.pt")
    tensors = [spec("x", "FP32", [-1, 64])]
    backend = TorchBackend("slow", backend_config(path, inputs=tensors, outputs=tensors), path)
    probe = np.ones((256, 64), np.float32)

    async def scenario() -> None:
        # The fastest of a few runs: TorchScript's first runs also profile and optimize.
        durations = []
        for _ in range(3):
            started = time.perf_counter()
            await backend.infer({"x": probe}, ["x"], None)
            durations.append(time.perf_counter() - started)
        probe_s = min(durations)
        # A run of about 0.4 s, and a deadline at an eighth of it.
        rows = len(probe) * max(1, math.ceil(0.4 / probe_s))
        long_s = probe_s * rows / len(probe)
        long_input = np.ones((rows, 64), np.float32)
        with pytest.raises(DeadlineExceeded, match="backend 'slow' did not answer"):
            await backend.infer({"x": long_input}, ["x"], time.monotonic() + long_s / 8)
        # The caller gave up; torch's run goes on: a reload must not close under it.
        assert backend.busy()
        # One execution slot: this run starts once the long one has ended.
        await backend.infer({"x": probe[:1]}, ["x"], None)
        assert not backend.busy()
        await backend.close()

    asyncio.run(scenario())


def test_a_deadline_already_passed_is_deadline_exceeded(
    build: Build, artifacts: dict[str, Path]
) -> None:
    path = artifacts["torchscript"]
    backend = build("affine", backend_config(path), path)

    async def late() -> None:
        await backend.infer(affine_inputs(1), ["y"], time.monotonic() - 1)

    with pytest.raises(DeadlineExceeded):
        asyncio.run(late())


# -- refusals at load ------------------------------------------------------------------


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(TorchLoadError, match=f"model file not found: {path}"):
        TorchBackend("affine", backend_config(path), path)


@pytest.mark.parametrize(
    ("content", "artifact", "message"),
    [
        ("garbage", "torchscript", "as torchscript"),
        ("garbage", "export", "as export"),
        ("export", "torchscript", "as torchscript"),  # the other format's file
        ("torchscript", "export", "as export"),
    ],
)
def test_an_artifact_torch_cannot_read_is_refused(
    content: str, artifact: str, message: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    if content == "garbage":
        path.write_bytes(b"not a model at all")
    else:
        path.write_bytes(artifacts[content].read_bytes())
    with pytest.raises(TorchLoadError, match=f"torch cannot load {path} {message}: "):
        TorchBackend("affine", backend_config(path, format=artifact), path)


@pytest.mark.parametrize("artifact", ["torchscript", "export"])
@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (
            [spec("y", "FP32", [-1, 4]), spec("label", "INT64", [-1])],
            r"output 'y' is declared FP32 \[-1,4\], the model returned FP32 \[1,3\]",
        ),
        (
            [spec("y", "FP32", [-1, 3]), spec("label", "INT32", [-1])],
            r"output 'label' is declared INT32 \[-1\], the model returned INT64 \[1\]",
        ),
        (
            [spec("y", "FP32", [-1, 3]), spec("label", "INT64", [-1, 1])],
            r"output 'label' is declared INT64 \[-1,1\], the model returned INT64 \[1\]",
        ),
        ([spec("y", "FP32", [-1, 3])], r"it returned 2 outputs, the config declares 1 \(\['y'\]\)"),
    ],
)
def test_declared_outputs_the_model_does_not_return_are_refused(
    artifact: str, outputs: list[dict[str, Any]], message: str, artifacts: dict[str, Path]
) -> None:
    path = artifacts[artifact]
    with pytest.raises(TorchLoadError, match=message):
        TorchBackend("affine", backend_config(path, outputs=outputs), path)


def test_a_dict_with_other_keys_than_the_declared_outputs_is_refused(tmp_path: Path) -> None:
    path = script(Named(), tmp_path / "named.pt")
    config = backend_config(
        path,
        inputs=[spec("x", "FP32", [-1, 3])],
        outputs=[spec("double", "FP32", [-1, 3]), spec("triple", "FP32", [-1, 3])],
    )
    with pytest.raises(
        TorchLoadError, match=r"a dict of \['double', 'plus_one'\], the declared outputs are"
    ):
        TorchBackend("named", config, path)


@pytest.mark.parametrize("artifact", ["torchscript", "export"])
def test_declared_inputs_the_model_does_not_take_are_refused(
    artifact: str, artifacts: dict[str, Path]
) -> None:
    path = artifacts[artifact]
    inputs = [spec("x", "FP32", [-1, 5]), spec("shift", "FP32", [-1, 3])]
    with pytest.raises(
        TorchLoadError, match=r"a dry run on zeros failed \(.*x FP32 \[-1,5\], shift FP32"
    ):
        TorchBackend("affine", backend_config(path, inputs=inputs), path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is usable here")
def test_a_cuda_device_without_a_usable_gpu_is_refused(artifacts: dict[str, Path]) -> None:
    path = artifacts["torchscript"]
    with pytest.raises(TorchLoadError, match="device cuda:1: CUDA is not usable here"):
        TorchBackend("affine", backend_config(path, device="cuda:1"), path)


# -- through the config loader and the runtime -----------------------------------------


def gateway_yaml(backends: dict[str, Any], models: dict[str, Any]) -> str:
    return yaml.safe_dump({"backends": backends, "models": models}, sort_keys=False)


def torch_backend(path: Path, **keys: Any) -> dict[str, Any]:
    return {
        "type": "torch",
        "path": str(path),
        "inputs": AFFINE_INPUTS,
        "outputs": AFFINE_OUTPUTS,
        "max_concurrency": 1,
        "intra_op_threads": 1,
        **keys,
    }


def model(backend: str, inputs: list[dict[str, Any]] = AFFINE_INPUTS) -> dict[str, Any]:
    return {
        "signature": {"inputs": inputs, "outputs": AFFINE_OUTPUTS},
        "route": {"backends": [backend]},
    }


def test_a_signature_the_backend_does_not_fit_is_refused_naming_the_backend(
    artifacts: dict[str, Path],
) -> None:
    wider = [spec("x", "FP32", [-1, 5]), spec("shift", "FP32", [-1, 3])]
    document = gateway_yaml(
        {"affine-torch": torch_backend(artifacts["torchscript"])},
        {"affine": model("affine-torch", wider)},
    )
    with pytest.raises(ConfigError) as refused:
        build_runtime(parse_config(document))
    [problem] = refused.value.problems
    assert problem.startswith("models.affine.route.backends[0]")
    assert problem.endswith(
        ": backend 'affine-torch' does not fit the signature: "
        "input 'x': signature declares size 5 in dimension 1, the model has 4"
    )


def test_a_load_failure_is_a_config_problem_of_the_backend(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    document = gateway_yaml(
        {"affine-torch": torch_backend(missing)}, {"affine": model("affine-torch")}
    )
    with pytest.raises(ConfigError) as refused:
        build_runtime(parse_config(document))
    [problem] = refused.value.problems
    assert problem.startswith("backends.affine-torch")
    assert problem.endswith(f": model file not found: {missing}")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"inputs": [spec("text", "BYTES", [-1])]},
            "backends.m.*inputs: 'text' is BYTES, which no torch tensor holds",
        ),
        ({"path": "model.onnx"}, r"backends\.m.*format: cannot tell it from the suffix"),
        ({"device": "gpu"}, r"backends\.m\.device.*expected cpu, cuda or cuda:N"),
        ({"providers": ["cuda"]}, r"backends\.m\.providers.*torch backends do not take it"),
        (
            {"outputs": [spec("y", "FP32", [-1]), spec("y", "INT64", [-1])]},
            r"outputs: duplicate names \['y'\]",
        ),
    ],
)
def test_the_loader_refuses_a_config_that_cannot_load(keys: dict[str, Any], message: str) -> None:
    backend = {**torch_backend(Path("m.pt")), **keys}
    document = gateway_yaml({"m": backend}, {"affine": model("m")})
    with pytest.raises(ConfigError, match=message):
        parse_config(document)


def test_the_cache_key_follows_what_the_answers_depend_on(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    def prefix(path: Path, **keys: Any) -> bytes:
        document = gateway_yaml({"m": torch_backend(path, **keys)}, {"affine": model("m")})
        runtime = build_runtime(parse_config(document))
        asyncio.run(runtime.close())
        return runtime.service.models["affine"].cache_prefix

    path = artifacts["torchscript"]
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    assert prefix(path, intra_op_threads=2) == prefix(path)  # the same answers
    assert prefix(copy) != prefix(path)  # another artifact
    # Keys that cannot change here without failing the load (no GPU, one valid order).
    assert {"format", "device", "inputs", "outputs"} <= set(BACKEND_TYPE.cache_identity)


BATCH = 4


def test_dynamic_batching_merges_concurrent_requests_with_the_same_answers(
    artifacts: dict[str, Path], eager: Any
) -> None:
    path = artifacts["export"]
    # BATCH one-row requests fill a batch at once: no waiting on the (long) delay.
    batching = {"max_batch_size": BATCH, "max_queue_delay_us": 10_000_000}
    document = gateway_yaml(
        {
            "batched": torch_backend(path, batching=batching),
            "single": torch_backend(path),
        },
        {"batched": model("batched"), "single": model("single")},
    )
    runtime = build_runtime(parse_config(document))
    requests = [affine_inputs(1, seed) for seed in range(BATCH)]

    async def ask(runtime: Runtime, model: str, inputs: dict[str, np.ndarray]) -> Any:
        ctx = RequestContext(request_id=f"{model}", protocol="test")
        response = await runtime.service.infer(InferRequest(model, None, inputs), ctx)
        return response.outputs, ctx.execution

    async def scenario() -> tuple[list[Any], list[Any]]:
        try:
            batched = await asyncio.wait_for(
                asyncio.gather(*(ask(runtime, "batched", r) for r in requests)), 10
            )
            single = [await ask(runtime, "single", r) for r in requests]
            return batched, single
        finally:
            await runtime.close()

    batched, single = asyncio.run(scenario())
    executions = [execution for _, execution in batched]
    assert sum(e.leads for e in executions) == 1, "the requests were not one execution"
    assert [e.inferences for e in executions] == [1] * BATCH
    for (answer, _), (alone, _), inputs in zip(batched, single, requests):
        assert_same(answer, alone)
        assert_same(answer, eager_answer(eager, inputs))
