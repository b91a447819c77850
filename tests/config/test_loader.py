import textwrap

import pytest

from gateway.config.loader import ConfigError, parse_config

VALID = """\
server: {http_port: "${PORT:-8100}"}
backends:
  digits-cpu:
    type: onnx
    path: models/digits/1/model.onnx
    max_concurrency: 2
models:
  digits:
    version: 1
    signature:
      inputs:  [{name: pixels, datatype: FP32, shape: [-1, 64]}]
      outputs: [{name: probabilities, datatype: FP32, shape: [-1, 10]}]
    route: {strategy: fallback, backends: [digits-cpu]}
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(textwrap.dedent(text), env=env or {})
    return err.value.problems


def test_a_valid_config_loads_into_typed_objects() -> None:
    loaded = parse_config(VALID, env={})
    config = loaded.config
    assert config.server.http_port == 8100
    assert config.models["digits"].version == "1"
    assert config.models["digits"].signature.is_batched()
    assert config.backends["digits-cpu"].max_concurrency == 2
    assert len(loaded.sha256) == 64


def test_environment_variables_are_expanded_with_defaults() -> None:
    assert parse_config(VALID, env={"PORT": "9001"}).config.server.http_port == 9001
    problems = problems_of(VALID.replace("${PORT:-8100}", "${PORT}"))
    assert problems == [
        "server.http_port (line 1): environment variable PORT is not set (and has no default)"
    ]


def test_unknown_keys_and_bad_values_name_their_yaml_path_and_line() -> None:
    text = VALID.replace("max_concurrency: 2", "max_concurency: 2").replace(
        "datatype: FP32, shape: [-1, 64]", "datatype: FLOAT, shape: [-1, 64]"
    )
    problems = problems_of(text)
    assert (
        "backends.digits-cpu.max_concurency (line 6): unknown key (check the spelling)" in problems
    )
    assert any(
        p.startswith("models.digits.signature.inputs[0].datatype (line 11): Input should be")
        and "'FLOAT'" in p
        for p in problems
    ), problems


def test_routes_must_name_defined_backends() -> None:
    problems = problems_of(VALID.replace("backends: [digits-cpu]", "backends: [digits-cpu, gone]"))
    assert problems == [
        "models.digits.route.backends[1] (line 13): unknown backend 'gone' (defined: ['digits-cpu'])"
    ]


def test_a_tensor_model_needs_a_signature_and_dimensions_are_checked() -> None:
    text = VALID.replace("shape: [-1, 10]", "shape: [-2, 10]")
    assert any("dimension -2 is invalid" in p for p in problems_of(text))
    dropped = ("inputs:", "outputs:", "signature:")
    no_signature = "\n".join(
        line for line in VALID.splitlines() if not any(key in line for key in dropped)
    )
    assert any("signature: required" in p for p in problems_of(no_signature))


def test_invalid_yaml_is_reported_not_raised() -> None:
    problems = problems_of("backends: [unclosed\n")
    assert problems[0].startswith("invalid YAML:")


VENDOR = """\
  gpt:
    type: openai
    base_url: http://127.0.0.1:9/v1
    model: m
"""


def test_a_key_of_another_backend_type_is_refused_with_the_reason() -> None:
    # Keys that validated and then did nothing: retries on a local model,
    # max_queue_wait_ms on a vendor.
    text = VALID.replace(
        "    max_concurrency: 2\n", "    max_concurrency: 2\n    retries: {max: 2}\n"
    )
    text = text.replace("models:\n", VENDOR + "    max_queue_wait_ms: 50\nmodels:\n", 1)
    problems = problems_of(text)
    assert len(problems) == 2, problems
    assert problems[0].startswith("backends.digits-cpu.retries (line 7): onnx backends do not take")
    assert "fallback backend" in problems[0]
    assert problems[1].startswith(
        "backends.gpt.max_queue_wait_ms (line 12): openai backends do not"
    )
    assert "max_queue and the request's deadline" in problems[1]


def test_each_backend_type_keeps_its_own_keys() -> None:
    text = VALID.replace(
        "    max_concurrency: 2\n", "    max_concurrency: 2\n    max_queue_wait_ms: 5\n"
    )
    text = text.replace("models:\n", VENDOR + "    retries: {max: 3, backoff_ms: 10}\nmodels:\n", 1)
    backends = parse_config(text, env={}).config.backends
    assert backends["digits-cpu"].max_queue_wait_ms == 5
    assert backends["gpt"].retries.max == 3
