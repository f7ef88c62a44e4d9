"""Request bodies of the OpenAI API: parsed strictly (a wrong type is an error, never coerced),
unknown fields ignored (as vLLM does), every range checked with the field's name in the error."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..engine import SamplingParams
from ..errors import InvalidParameterError
from .errors import APIError

MAX_LOGPROBS = 20
COMPLETION_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for completions; chat's is the rest of the context
ROLES = ("system", "developer", "user", "assistant")


def _error(message: str):
    return PydanticCustomError("invalid", message)


def _prompts(value: Any) -> list:
    """A string, a list of strings, a list of token ids or a list of those -> a non-empty list of prompts."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_id(t) for t in value)):
        value = [value]
    if not isinstance(value, list) or not value or not all(
            isinstance(p, str) or (isinstance(p, list) and all(_is_id(t) for t in p)) for p in value):
        raise _error("must be a string, a list of strings, a list of token ids or a list of lists of token ids")
    if any(len(p) == 0 for p in value):
        raise _error("must not be empty")
    return value


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise _error("must be a non-empty string or a list of non-empty strings")
    return value


def _content(value: Any) -> str | None:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in value):
            raise _error("only text parts ({'type': 'text', 'text': ...}) are supported")
        return "\n".join(p["text"] for p in value)
    raise _error("must be a string or a list of text parts")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage in every chunk (vLLM's extension)


class ChatMessage(_Body):
    role: str
    content: Annotated[str | None, BeforeValidator(_content)]
    name: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.role not in ROLES:
            raise _error(f"unknown role {self.role!r}; accepted: {', '.join(ROLES)}")
        if self.content is None and self.role != "assistant":
            raise _error(f"a {self.role} message needs content")
        return self


class _GenerationRequest(_Body):
    """Fields both generation endpoints take. None means the default."""
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)          # -1 or 0: every token
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    stop: Annotated[list[str], BeforeValidator(_stop)] = []
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    logit_bias: dict[str, float] | None = None
    include_stop_str_in_output: bool | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("stream_options", "stream_options is only allowed when stream is true")
        return self

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.continuous_usage_stats)

    def sampling_params(self, max_tokens: int, vocab_size: int) -> SamplingParams:
        """The engine's settings for this request; `max_tokens` already resolved against the context."""
        fields = dict(temperature=1.0 if self.temperature is None else self.temperature,
                      top_p=self.top_p, top_k=max(self.top_k or 0, 0), min_p=self.min_p, seed=self.seed, n=self.n,
                      stop=self.stop, stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
                      min_tokens=self.min_tokens, presence_penalty=self.presence_penalty,
                      frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
                      logit_bias=self.logit_bias, logprobs=self.top_logprobs_wanted(),
                      include_stop_str_in_output=self.include_stop_str_in_output)
        try:  # SamplingParams' own defaults stand for every field the request left out
            params = SamplingParams(max_tokens=max_tokens, **{k: v for k, v in fields.items() if v is not None})
            params.check_vocabulary(vocab_size)
        except InvalidParameterError as e:  # its messages begin with the setting's name
            first = str(e).split(" ", 1)[0]
            raise APIError(400, str(e), first if first in type(self).model_fields else None) from None
        return params


class CompletionRequest(_GenerationRequest):
    prompt: Annotated[list, BeforeValidator(_prompts)]
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if self.suffix:
            raise PydanticCustomError("suffix", "suffix is not supported")
        if self.echo and self.logprobs is not None:
            raise PydanticCustomError("logprobs", "echo with logprobs (the prompt's logprobs) is not supported")
        return self

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def new_tokens(self) -> int:
        return COMPLETION_MAX_TOKENS if self.max_tokens is None else self.max_tokens


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _check_chat(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise PydanticCustomError("top_logprobs", "top_logprobs needs logprobs set to true")
        return self

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.content or ""}
                for m in self.messages]


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _check(self):
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError("prompt", "give either prompt or messages")
        if self.messages is not None and not self.messages:
            raise PydanticCustomError("messages", "messages must not be empty")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


def parse(cls: type[BaseModel], raw: bytes) -> BaseModel:
    """The request body as `cls`, or a 400 APIError naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise _describe(e.errors()[0]) from None


def _describe(error: dict) -> APIError:
    loc = error["loc"]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    if error["type"] == "missing":
        return APIError(400, f"{param}: a required field is missing", param)
    if error["type"] == "too_short":
        return APIError(400, f"{param} must not be empty", param)
    if error["type"] in ("stream_options", "suffix", "top_logprobs", "logprobs", "prompt", "messages"):
        return APIError(400, error["msg"], error["type"])
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if error["type"].endswith("_type") and not isinstance(given, dict):
        message += f" (got {_json_type(given)})"
    return APIError(400, f"{param}: {message}" if param else message, param)


def _json_type(value) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
