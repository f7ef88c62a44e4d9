"""Incremental detokenization with stop strings, for text streamed one token at a time.

Decoding the whole output after every token costs O(length) per token (quadratic overall). Like
vLLM, `Detokenizer` decodes only a short window: the tokens since the last complete piece of text
(`prefix_offset`) with and without the new ones; the difference is the new text. Decoding from a
few tokens back rather than from the new token alone keeps what tokenizers do at word starts
(a leading space) right. While the window ends inside a UTF-8 character (byte-level tokens split
emoji and CJK characters), decoding ends in U+FFFD and nothing is appended until the character is
complete.

Stop strings: after each token the tail of the text (where a stop string could newly end) is
searched; the text is cut before the stop string (after it with `include_stop_str_in_output`).
`ready()` never hands out text that could still become the start of a stop string: a suffix that
is a proper prefix of one is held back until the next tokens settle it.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 4  # settled tokens a window keeps before new ones that brought no text


class Detokenizer:
    def __init__(self, tokenizer, stop: list[str] = (), include_stop: bool = False):
        self.tokenizer, self.stop, self.include_stop = tokenizer, list(stop), include_stop
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        self.text = ""            # the output text so far (complete characters, cut at a stop string)
        self.emitted = 0          # characters of `text` already handed out by `ready`
        self.stopped = False      # a stop string was found
        self.stop_str: str | None = None
        self.finished = False     # no more tokens: hold nothing back
        self._prefix_offset = 0   # window start: the tokens before it are fully in `text`
        self._read_offset = 0     # tokens up to here are in `text`

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _window(self) -> tuple[str, str]:
        """(text of the window's settled tokens, text of the whole window)."""
        return (self._decode(self.ids[self._prefix_offset:self._read_offset]),
                self._decode(self.ids[self._prefix_offset:]))

    def add(self, token: int, check_stop: bool = True):
        """Append a token; `check_stop=False` (before min_tokens) ignores stop strings it completes."""
        if self.stopped or self.finished:
            return
        self.ids.append(token)
        settled, window = self._window()
        if window.endswith(REPLACEMENT):
            return  # inside a character: wait for its other bytes
        if len(window) > len(settled):
            self._append(window[len(settled):], check_stop)
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        else:  # no text (a skipped special token): settled, but keep the window short
            self._read_offset = len(self.ids)
            self._prefix_offset = max(self._prefix_offset, self._read_offset - CONTEXT_TOKENS)

    def _append(self, piece: str, check_stop: bool):
        start = max(0, len(self.text) - self.longest_stop + 1)  # a stop string ending in `piece` starts here or later
        self.text += piece
        if not (check_stop and self.stop):
            return
        found = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if found:
            i, s = min(found)
            self.text = self.text[:i + len(s) if self.include_stop else i]
            self.stopped, self.stop_str = True, s

    def finish(self):
        """No more tokens: keep an incomplete trailing character as U+FFFD (as a full decode shows it)."""
        if not self.stopped and not self.finished and self._read_offset < len(self.ids):
            settled, window = self._window()
            self.text += window[len(settled):]
        self.finished = True

    def ready(self) -> str:
        """New text safe to show: never part of a stop string, nor a prefix that may become one."""
        safe = len(self.text)
        if not (self.stopped or self.finished) and self.stop:
            tail = self.text[max(self.emitted, safe - self.longest_stop + 1):]
            safe -= max((k for s in self.stop for k in range(1, min(len(s), len(tail) + 1))
                         if tail.endswith(s[:k])), default=0)
        chunk = self.text[self.emitted:safe]
        self.emitted = max(self.emitted, safe)
        return chunk
