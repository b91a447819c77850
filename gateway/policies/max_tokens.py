"""`type: max_tokens`: a ceiling on how many tokens one chat answer may cost.

A chat request asking for more than `max` (in `max_completion_tokens` or
`max_tokens`) is lowered to `max` (`over: clamp`) or refused with 400
(`over: refuse`); one that does not say gets `max_tokens: max`, so no answer
runs to the vendor's own limit.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field

from gateway.config.schema import PolicyCommon
from gateway.core.errors import InvalidInput
from gateway.core.llm import ChatRequest
from gateway.core.types import RequestContext
from gateway.policies.base import Policy
from gateway.policies.registry import PolicyType, register

_FIELDS = ("max_completion_tokens", "max_tokens")


class MaxTokensConfig(PolicyCommon):
    type: Literal["max_tokens"]
    max: int = Field(ge=1)
    over: Literal["clamp", "refuse"] = "clamp"


class MaxTokens(Policy):
    kinds = frozenset({"chat"})

    def __init__(self, config: MaxTokensConfig) -> None:
        super().__init__("max_tokens")
        self.max = config.max
        self.refuse = config.over == "refuse"

    def on_request(self, request: ChatRequest, ctx: RequestContext) -> ChatRequest:
        body = request.body
        asked = [(f, body[f]) for f in _FIELDS if isinstance(body.get(f), int)]
        over = [(f, n) for f, n in asked if n > self.max]
        if asked and not over:
            return request
        if over and self.refuse:
            field, count = over[0]
            ctx.note_policy(self.name, "refused")
            raise InvalidInput(f"{field}: at most {self.max} for model '{ctx.model}', got {count}")
        changed = dict(body)
        for field, _ in over or [("max_tokens", 0)]:
            changed[field] = self.max
        ctx.note_policy(self.name, "clamped" if over else "set")
        return dataclasses.replace(request, body=changed)


POLICY_TYPE = register(
    PolicyType(
        name="max_tokens",
        config=MaxTokensConfig,
        build=MaxTokens,
        kinds=MaxTokens.kinds,
    )
)
