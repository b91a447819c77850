"""The config of `type: sagemaker` backends
(docs/configuration.md#backendsname-with-type-sagemaker), validated once at
load: names, region and headers as the SageMaker runtime API accepts them, and
the tensors a tensor model's payload carries.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.backends.vendors import sagemaker_payloads as payloads
from gateway.config.schema import BackendCommon, RetryConfig, TensorSpecConfig
from gateway.core.signature import TensorSpec

# The name patterns of botocore's sagemaker-runtime service model.
_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,1024}")  # visible US-ASCII, as AWS asks

# config key -> the InvokeEndpoint header that carries it.
HEADER_KEYS = {
    "target_model": "x-amzn-sagemaker-target-model",
    "target_variant": "x-amzn-sagemaker-target-variant",
    "inference_component": "x-amzn-sagemaker-inference-component",
    "custom_attributes": "x-amzn-sagemaker-custom-attributes",
}


class SageMakerBackendConfig(BackendCommon):
    """A SageMaker real-time endpoint; AWS credentials from botocore's standard chain."""

    keys_of_other_types: ClassVar[dict[str, str]] = {
        "max_queue_wait_ms": "it predicts waits from local execution times, and an "
        "endpoint call's time is the endpoint's; waiting is bounded by max_queue and the "
        "request's deadline",
        "api_key_env": "requests are signed with AWS credentials from the standard chain "
        "(environment, shared files, SSO, web identity, container or instance role); "
        "`profile` picks a named profile",
        "base_url": "the URL comes from `region` and `endpoint_name`; `endpoint_url` "
        "replaces its scheme and host (a VPC endpoint)",
        "headers": "SageMaker drops headers it does not define: see target_model, "
        "target_variant, inference_component and custom_attributes",
    }

    type: Literal["sagemaker"]
    region: str
    endpoint_name: str
    # None: https://runtime.sagemaker.<region>.amazonaws.com (.com.cn in China).
    endpoint_url: str | None = None
    # None: the default chain (AWS_PROFILE, else environment keys, else the default profile...).
    profile: str | None = None
    # Tensor models: how inputs travel, and how the answer is read.
    content_type: payloads.ContentType = "application/json"
    accept: payloads.ContentType | None = None  # None: as content_type
    json_request_key: str | None = "instances"  # None: the body is the input's nested list
    json_response_key: str | None = "predictions"  # None: the body is the output's nested list
    # What the endpoint takes and answers (tensor models; checked against their signatures).
    inputs: list[TensorSpecConfig] | None = None
    outputs: list[TensorSpecConfig] | None = None
    # Chat: the body's `model` (TGI's documented placeholder; LMI ignores it). None: omitted.
    model: str | None = "tgi"
    target_model: str | None = None  # a multi-model endpoint's model artifact
    target_variant: str | None = None
    inference_component: str | None = None
    custom_attributes: str | None = None
    max_concurrency: int = Field(64, ge=1)
    connect_timeout_ms: int = Field(2000, ge=1)
    # Connection errors, 429 and 5xx are retried within the deadline.
    retries: RetryConfig = RetryConfig()

    @field_validator("region")
    @classmethod
    def _region(cls, region: str) -> str:
        if not _REGION.fullmatch(region):
            raise ValueError(f"expected an AWS region such as us-east-1, got {region!r}")
        return region

    @field_validator("endpoint_name", "target_variant", "inference_component")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        if name is not None and (len(name) > 63 or not _NAME.fullmatch(name)):
            raise ValueError(
                "expected a SageMaker name: letters, digits and hyphens, at most 63, "
                "starting and ending with a letter or digit"
            )
        return name

    @field_validator("target_model", "custom_attributes")
    @classmethod
    def _header_value(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_VALUE.fullmatch(value):
            raise ValueError("expected 1 to 1024 visible US-ASCII characters")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _tensors(self) -> SageMakerBackendConfig:
        if (self.inputs is None) != (self.outputs is None):
            raise ValueError("inputs and outputs are declared together (for tensor models)")
        if self.inputs is None or self.outputs is None:
            return self
        for side, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not specs:
                raise ValueError(f"{side}: declare at least one tensor")
            names = [s.name for s in specs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{side}: duplicate names {dupes}")
        problems = payloads.format_problems(
            self.content_type,
            self.answer_type(),
            tensor_specs(self.inputs),
            tensor_specs(self.outputs),
            self.json_request_key,
            self.json_response_key,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def answer_type(self) -> str:
        return self.accept or self.content_type

    def base_url(self) -> str:
        if self.endpoint_url is not None:
            return self.endpoint_url
        suffix = ".amazonaws.com.cn" if self.region.startswith("cn-") else ".amazonaws.com"
        return f"https://runtime.sagemaker.{self.region}{suffix}"


def tensor_specs(specs: list[TensorSpecConfig]) -> list[TensorSpec]:
    return [TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in specs]


# -- the backend -----------------------------------------------------------------------
