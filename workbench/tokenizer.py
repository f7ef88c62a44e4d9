"""Tokenizer: byte-level BPE built from a GGUF vocabulary (or read from tokenizer.json),
special tokens, and the chat template rendered with jinja.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as FastTokenizer

from .errors import CheckpointError, InvalidParameterError
from .io import atomic_write_text

# GPT-2's split rule; llama.cpp's pre-tokenizer types for byte-level vocabularies add rules before it.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> regexes applied in turn (each piece is split further by the next).
PRE_TOKENIZER_SPLITS = {
    "gpt2": [_GPT2_SPLIT],
    "default": [_GPT2_SPLIT],
    "smollm": [r"\p{N}", _GPT2_SPLIT],      # digits one by one, then GPT-2's rule
    "starcoder": [r"\p{N}", _GPT2_SPLIT],
    "llama-bpe": [_LLAMA3_SPLIT],
    "llama3": [_LLAMA3_SPLIT],
}
_CONTROL = 3  # GGUF token type of control tokens such as <|im_start|>


def _byte_level_tokenizer(tokens: list[str], merges: list[str], splits: list[str],
                          special: list[str]) -> FastTokenizer:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    tok = FastTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


class Tokenizer:
    """Text <-> token ids, plus the model's chat template and stop tokens."""

    def __init__(self, backend: FastTokenizer, *, bos_token: str | None, eos_token: str | None,
                 chat_template: str | None, add_bos_token: bool = False, pad_token: str | None = None,
                 gguf_pre: str | None = None):
        self.backend = backend
        self.gguf_pre = gguf_pre  # llama.cpp's name for the split rules, kept for GGUF export
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, ckpt) -> "Tokenizer":
        """Build from a `GGUFCheckpoint`'s tokenizer.ggml.* fields."""
        kind = ckpt.field("tokenizer.ggml.model")
        if kind is None:
            raise CheckpointError(f"{ckpt.path}: holds no tokenizer (tokenizer.ggml.model is missing)")
        tokens = ckpt.field("tokenizer.ggml.tokens")
        if kind != "gpt2":
            return cls._from_gguf_via_transformers(ckpt, kind)
        pre = ckpt.field("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZER_SPLITS:
            raise CheckpointError(f"{ckpt.path}: pre-tokenizer {pre!r} is not supported "
                                  f"(supported: {', '.join(sorted(PRE_TOKENIZER_SPLITS))})")
        types = ckpt.field("tokenizer.ggml.token_type") or [1] * len(tokens)
        special = [t for t, kind_ in zip(tokens, types) if kind_ == _CONTROL]
        backend = _byte_level_tokenizer(tokens, ckpt.field("tokenizer.ggml.merges") or [],
                                        PRE_TOKENIZER_SPLITS[pre], special)

        def token(key):
            idx = ckpt.field(f"tokenizer.ggml.{key}")
            return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

        return cls(backend, bos_token=token("bos_token_id"), eos_token=token("eos_token_id"),
                   pad_token=token("padding_token_id"),
                   chat_template=ckpt.field("tokenizer.chat_template"),
                   add_bos_token=bool(ckpt.field("tokenizer.ggml.add_bos_token", False)), gguf_pre=pre)

    @classmethod
    def _from_gguf_via_transformers(cls, ckpt, kind: str) -> "Tokenizer":
        """Vocabularies other than byte-level BPE (sentencepiece 'llama', ...) via transformers."""
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise CheckpointError(f"{ckpt.path}: tokenizer type {kind!r} needs transformers installed "
                                  "(built natively: gpt2 byte-level BPE)") from None
        hf = AutoTokenizer.from_pretrained(str(ckpt.path.parent), gguf_file=ckpt.path.name)
        return cls(hf.backend_tokenizer, bos_token=hf.bos_token, eos_token=hf.eos_token,
                   pad_token=hf.pad_token, chat_template=getattr(hf, "chat_template", None),
                   add_bos_token=bool(getattr(hf, "add_bos_token", False)))

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Read tokenizer.json (+ tokenizer_config.json) from a Hugging Face model directory."""
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.is_file():
            raise CheckpointError(f"{path}: no tokenizer.json (the workbench needs a fast tokenizer file)")
        try:
            backend = FastTokenizer.from_file(str(tj))
        except Exception as e:
            raise CheckpointError(f"{tj}: unreadable tokenizer ({e})") from None
        cfg = {}
        if (path / "tokenizer_config.json").is_file():
            cfg = json.loads((path / "tokenizer_config.json").read_text())
        template = cfg.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()

        def content(v):
            return v.get("content") if isinstance(v, dict) else v

        return cls(backend, bos_token=content(cfg.get("bos_token")), eos_token=content(cfg.get("eos_token")),
                   pad_token=content(cfg.get("pad_token")), chat_template=template,
                   add_bos_token=bool(cfg.get("add_bos_token", False)), gguf_pre=cfg.get("gguf_pre"))

    def save(self, path: str | Path):
        """Write tokenizer.json and tokenizer_config.json (what `AutoTokenizer` reads)."""
        path = Path(path)
        atomic_write_text(path / "tokenizer.json", self.backend.to_str())
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
            "add_bos_token": self.add_bos_token, "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
            "chat_template": self.chat_template,
            "gguf_pre": self.gguf_pre,
        }
        atomic_write_text(path / "tokenizer_config.json", json.dumps({k: v for k, v in cfg.items() if v is not None}, indent=2))

    # ---- use ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self):
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self):
        return self.token_to_id(self.eos_token)

    @property
    def stop_token_ids(self) -> set[int]:
        """Tokens that end a generation: EOS, end-of-turn and end-of-text markers in the vocabulary."""
        ids = {self.eos_token_id}
        for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>"):
            ids.add(self.token_to_id(marker))
        return {i for i in ids if i is not None}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's jinja template (sandboxed, as transformers does)."""
        if not self.chat_template:
            raise CheckpointError("this tokenizer has no chat template; pass a plain prompt instead")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def __len__(self) -> int:
        return self.vocab_size


def _raise_template_error(message):
    raise InvalidParameterError(f"chat template: {message}")
