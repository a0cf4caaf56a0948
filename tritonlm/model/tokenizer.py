"""Qwen2 tokenizer: byte-level BPE (HF ``tokenizers``), chat template (jinja2), streaming detokenizer.

Built either from GGUF metadata (vocab, merges, token types, chat template) or from a HF
``tokenizer.json`` (+ ``tokenizer_config.json`` / ``chat_template.jinja``). Imports no torch.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from tritonlm.errors import ModelLoadError, TokenizationError

# Qwen2's pre-tokenizer split (the "qwen2" pre-tokenizer of llama.cpp / tokenizer.json).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# GGUF token types (llama.cpp's llama_token_type)
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = 1, 2, 3, 4, 5, 6


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}


def _byte_level_decode(token: str) -> bytes | None:
    try:
        return bytes(UNICODE_TO_BYTE[ch] for ch in token)
    except KeyError:
        return None


def build_byte_level_bpe(
    tokens: Sequence[str],
    merges: Sequence[str] | Sequence[tuple[str, str]],
    special_tokens: Iterable[tuple[int, str, bool]],
    skip_ids: Iterable[int] = (),
) -> HFTokenizer:
    """A Qwen2-style byte-level BPE ``tokenizers.Tokenizer``.

    ``special_tokens`` are ``(id, content, is_special)``; they are matched before BPE.
    ``skip_ids`` (unused placeholder slots) are left out of the vocabulary.
    """
    skip = set(skip_ids)
    vocab = {tok: i for i, tok in enumerate(tokens) if i not in skip}
    merge_pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    bpe = models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False, ignore_merges=False)
    tok = HFTokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    added = sorted(special_tokens)
    tok.add_special_tokens(
        [AddedToken(content, special=is_special, normalized=False) for _, content, is_special in added if is_special]
    )
    tok.add_tokens(
        [AddedToken(content, special=False, normalized=False) for _, content, is_special in added if not is_special]
    )
    for token_id, content, _ in added:
        if tok.token_to_id(content) != token_id:
            raise ModelLoadError(f"special token {content!r} maps to {tok.token_to_id(content)}, expected {token_id}")
    return tok


class Tokenizer:
    """Encode / decode / chat template for one model.

    ``vocab_size`` is the width of the model's logits (it may exceed the number of real
    tokens; the extra ids decode to nothing and are never produced by ``encode``).
    """

    def __init__(
        self,
        hf_tokenizer: HFTokenizer,
        *,
        vocab_size: int | None = None,
        chat_template: str | None = None,
        eos_token_ids: Sequence[int] = (),
        bos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self._tok = hf_tokenizer
        self.num_tokens = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.vocab_size = max(vocab_size or 0, self.num_tokens)
        self.chat_template = chat_template
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id
        self._special_ids = frozenset(i for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special)
        self._template = None

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        """From decoded GGUF key/values (``tokenizer.ggml.*``)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"GGUF tokenizer.ggml.model={kind!r}: only byte-level BPE ('gpt2') is supported")
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [_GGUF_NORMAL] * len(tokens))
        merges: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
        specials = []
        unused = []
        for i, (text, kind_id) in enumerate(zip(tokens, types, strict=True)):
            if kind_id == _GGUF_CONTROL:
                specials.append((i, text, True))
            elif kind_id == _GGUF_USER_DEFINED:
                specials.append((i, text, False))
            elif kind_id == _GGUF_UNUSED:
                unused.append(i)
        hf = build_byte_level_bpe(tokens, merges, specials, skip_ids=unused)
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eos_ids = [int(eos)] if eos is not None else []
        # Instruct models end a turn with <|im_end|>; <|endoftext|> ends a document: stop on both.
        for text in ("<|im_end|>", "<|endoftext|>"):
            if text in tokens and types[tokens.index(text)] == _GGUF_CONTROL:
                eos_ids.append(tokens.index(text))
        bos = meta.get("tokenizer.ggml.bos_token_id")
        pad = meta.get("tokenizer.ggml.padding_token_id")
        return cls(
            hf,
            vocab_size=len(tokens),
            chat_template=meta.get("tokenizer.chat_template"),
            eos_token_ids=eos_ids,
            bos_token_id=None if bos is None else int(bos),
            pad_token_id=None if pad is None else int(pad),
        )

    @classmethod
    def from_dir(cls, path: str | Path, *, vocab_size: int | None = None) -> Tokenizer:
        """From a HF folder: ``tokenizer.json`` plus ``tokenizer_config.json`` / ``chat_template.jinja``."""
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        try:
            hf = HFTokenizer.from_file(str(tok_file))
        except Exception as exc:  # the tokenizers library raises a bare Exception
            raise ModelLoadError(f"{tok_file}: cannot load tokenizer ({exc})") from exc
        config: dict[str, Any] = {}
        cfg_file = folder / "tokenizer_config.json"
        if cfg_file.exists():
            try:
                config = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as exc:
                raise ModelLoadError(f"{cfg_file}: invalid JSON ({exc})") from exc
        template = config.get("chat_template")
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text()

        def token_id(value: Any) -> int | None:
            if isinstance(value, dict):
                value = value.get("content")
            return None if value is None else hf.token_to_id(value)

        eos_ids: list[int] = []
        model_cfg = folder / "config.json"
        gen_cfg = folder / "generation_config.json"
        for f in (gen_cfg, model_cfg):
            if f.exists():
                try:
                    eos = json.loads(f.read_text()).get("eos_token_id")
                except json.JSONDecodeError:
                    eos = None
                if isinstance(eos, int):
                    eos_ids.append(eos)
                elif isinstance(eos, list):
                    eos_ids.extend(int(e) for e in eos)
        tok_eos = token_id(config.get("eos_token"))
        if tok_eos is not None:
            eos_ids.append(tok_eos)
        return cls(
            hf,
            vocab_size=vocab_size,
            chat_template=template,
            eos_token_ids=eos_ids,
            bos_token_id=token_id(config.get("bos_token")),
            pad_token_id=token_id(config.get("pad_token")),
        )

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template) for HF."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / "tokenizer.json"))
        added = {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "rstrip": t.rstrip,
                "normalized": t.normalized,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(self._tok.get_added_tokens_decoder().items())
        }

        def name(token: int | None) -> str | None:
            return None if token is None else self._tok.id_to_token(token)

        config = {
            "tokenizer_class": "Qwen2Tokenizer",
            "added_tokens_decoder": added,
            "bos_token": None,
            "eos_token": name(self.eos_token_ids[0] if self.eos_token_ids else None),
            "pad_token": name(self.pad_token_id),
            "unk_token": None,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 131072,
            "errors": "replace",
            "split_special_tokens": False,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    # ---- encode / decode ---------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special-token text such as ``<|im_end|>`` becomes its id."""
        if not isinstance(text, str):
            raise TokenizationError(f"encode expects str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str):
                raise TokenizationError(f"encode expects str, got {type(t).__name__}")
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        self._check_ids(ids)
        data = b"".join(self.token_bytes[i] for i in ids if not (skip_special_tokens and i in self._special_ids))
        return data.decode("utf-8", errors="replace")

    def _check_ids(self, ids: Sequence[int]) -> None:
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise TokenizationError(f"token id {i!r} outside the vocabulary [0, {self.vocab_size})")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special_ids

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each id decodes to (special tokens: their text; unused ids: ``b""``)."""
        out = [b""] * self.vocab_size
        added = self._tok.get_added_tokens_decoder()
        for token, i in self._tok.get_vocab(with_added_tokens=False).items():
            raw = _byte_level_decode(token)
            out[i] = raw if raw is not None else token.encode("utf-8")
        for i, t in added.items():
            out[i] = t.content.encode("utf-8")
        return out

    @property
    def backend(self) -> HFTokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    # ---- chat template -----------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render ``messages`` with the model's own jinja2 chat template."""
        if self.chat_template is None:
            raise TokenizationError("this tokenizer has no chat template; pass raw text instead")
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise TokenizationError("messages must be a list of {'role': ..., 'content': ...} dicts")
        template = self._compiled_template()
        try:
            return template.render(
                messages=list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._tok.id_to_token(self.bos_token_id) if self.bos_token_id is not None else "",
                eos_token=self._tok.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else "",
                **extra,
            )
        except TokenizationError:
            raise
        except Exception as exc:
            raise TokenizationError(f"chat template failed: {exc}") from exc

    def _compiled_template(self) -> Any:
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise TokenizationError(f"chat template: {message}")

            def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
                return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

            environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            environment.filters["tojson"] = tojson
            environment.globals["raise_exception"] = raise_exception
            environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = environment.from_string(self.chat_template)
        return self._template


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas that never split a UTF-8 character.

    Bytes of an incomplete character are held back until the character completes (or the
    stream is flushed, when they become U+FFFD, as in ``Tokenizer.decode``).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._token_bytes = tokenizer.token_bytes
        self._special = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def push(self, token_id: int) -> str:
        """Feed one token; returns the text completed by it (possibly ``""``)."""
        if token_id in self._special:
            return ""
        delta = self._decoder.decode(self._token_bytes[token_id])
        self.text += delta
        return delta

    def flush(self) -> str:
        delta = self._decoder.decode(b"", final=True)
        self.text += delta
        return delta
