"""The JSON OpenAI's API answers with: completions and chat completions, whole or as stream chunks,
with usage and logprobs. One `*Response` per request gathers its choices as their outputs come."""

from __future__ import annotations

import time
import uuid

LOGPROB_FLOOR = -9999.0  # JSON has no -inf (a token that top-p or a logit bias ruled out)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Choice:
    def __init__(self, index: int):
        self.index = index
        self.text = ""
        self.num_tokens = 0
        self.finish_reason: str | None = None
        self.logprobs: list = []     # TokenLogprob of every token (a whole response only)
        self.offset = 0              # characters of text before the next token (completions' text_offset)


class _Response:
    id_prefix = object_name = chunk_object = ""

    def __init__(self, model_name: str, tokenizer, prompt_ids: list[list[int]], n: int, logprobs: int | None,
                 stream: bool):
        self.stream = stream
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_name, self.tokenizer, self.n, self.top = model_name, tokenizer, n, logprobs
        self.prompt_tokens = sum(len(p) for p in prompt_ids)
        self.choices = {i: _Choice(i) for i in range(len(prompt_ids) * n)}

    def add(self, prompt_index: int, out) -> dict | None:
        """Take one output; the choice's stream delta, or None when it brings nothing to send."""
        choice = self.choices[prompt_index * self.n + out.index]
        choice.num_tokens = len(out.token_ids)
        new_logprobs = (out.new_logprobs or []) if self.top is not None else []
        if out.finished:
            choice.finish_reason = out.finish_reason
        if not self.stream:
            choice.logprobs += new_logprobs
            choice.text = out.text
            return None
        if not (out.delta_text or out.finished or new_logprobs):
            return None
        return self._delta(choice, out.delta_text, new_logprobs)

    def usage(self) -> dict:
        return usage(self.prompt_tokens, sum(c.num_tokens for c in self.choices.values()))

    def chunk(self, choices: list[dict], with_usage: bool = False) -> dict:
        body = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model_name,
                "choices": choices}
        if with_usage:
            body["usage"] = None
        return body

    def usage_chunk(self) -> dict:
        return {**self.chunk([]), "usage": self.usage()}

    def body(self) -> dict:
        return {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model_name,
                "choices": [self._whole(c) for c in self.choices.values()], "usage": self.usage()}

    def first_deltas(self) -> list[dict]:
        return []

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _delta(self, choice: _Choice, text: str, logprobs: list) -> dict:
        raise NotImplementedError

    def _whole(self, choice: _Choice) -> dict:
        raise NotImplementedError


def _logprob(value: float) -> float:
    return max(float(value), LOGPROB_FLOOR)


class CompletionResponse(_Response):
    id_prefix, object_name, chunk_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, model_name, tokenizer, prompt_ids, n, logprobs, stream, echo: list[str] | None = None):
        super().__init__(model_name, tokenizer, prompt_ids, n, logprobs, stream)
        self.echo = echo  # the prompts' text, shown before each choice's completion
        if echo:
            for c in self.choices.values():
                c.offset = len(echo[c.index // n])

    def first_deltas(self) -> list[dict]:
        if not self.echo:
            return []
        return [{"index": c.index, "text": self.echo[c.index // self.n], "logprobs": None, "finish_reason": None}
                for c in self.choices.values()]

    def _logprobs(self, choice: _Choice, entries: list) -> dict | None:
        if self.top is None:
            return None
        tokens, values, tops, offsets = [], [], [], []
        for e in entries:
            text = self._token(e.token_id)
            tokens.append(text)
            values.append(_logprob(e.logprob))
            top = {self._token(t): _logprob(lp) for t, lp in e.top[:self.top]}
            top.setdefault(text, _logprob(e.logprob))  # the sampled token is always listed
            tops.append(top)
            offsets.append(choice.offset)
            choice.offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def _delta(self, choice, text, logprobs):
        return {"index": choice.index, "text": text, "logprobs": self._logprobs(choice, logprobs),
                "finish_reason": choice.finish_reason}

    def _whole(self, choice):
        prefix = self.echo[choice.index // self.n] if self.echo else ""
        return {"index": choice.index, "text": prefix + choice.text,
                "logprobs": self._logprobs(choice, choice.logprobs), "finish_reason": choice.finish_reason}


class ChatResponse(_Response):
    id_prefix, object_name, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def first_deltas(self) -> list[dict]:
        return [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for c in self.choices.values()]

    def _entry(self, token_id: int, logprob: float) -> dict:
        text = self._token(token_id)
        return {"token": text, "logprob": _logprob(logprob), "bytes": list(text.encode("utf-8"))}

    def _logprobs(self, entries: list) -> dict | None:
        if self.top is None:
            return None
        return {"content": [{**self._entry(e.token_id, e.logprob),
                             "top_logprobs": [self._entry(t, lp) for t, lp in e.top[:self.top]]} for e in entries]}

    def _delta(self, choice, text, logprobs):
        return {"index": choice.index, "delta": {"content": text} if text else {},
                "logprobs": self._logprobs(logprobs), "finish_reason": choice.finish_reason}

    def _whole(self, choice):
        return {"index": choice.index, "message": {"role": "assistant", "content": choice.text},
                "logprobs": self._logprobs(choice.logprobs), "finish_reason": choice.finish_reason}
