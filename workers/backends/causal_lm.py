"""A Hugging Face causal LM with its tokenizer, driven step by step with a left-padded KV cache.

Implements :class:`workers.engines.generation.model.LanguageModel`. A :class:`KVBatch` keeps the cache of
the sequences decoded together, a 2D attention mask (0 on left padding) and each row's next position,
so rows of different lengths share one forward pass and give what each would give alone.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest
from shared.jobs import ChatMessage
from shared.tools import Tool
from workers.backends.device import resolve_device, resolve_dtype
from workers.backends.inputs import tokenize_or_blame
from workers.constraints.vocabulary import Vocabulary
from workers.tools import ToolFormat, model_tool_format, template

log = logging.getLogger(__name__)

#: Context length when neither the models file nor the model config gives one.
FALLBACK_CONTEXT_LENGTH = 2048


def _pad_left(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` with ``size`` zero entries prepended along ``dim``."""
    if size == 0:
        return t
    shape = list(t.shape)
    shape[dim] = size
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class KVBatch:
    """Sequences decoded together: the model's cache, the attention mask and each row's next position.

    The cache is ``[rows, kv_heads, columns, head_dim]`` per layer; ``mask`` is ``[rows, columns]``
    with 0 on each row's left padding. Rows join by left-padding to a common width; columns that are
    padding in every row are trimmed after rows leave.
    """

    def __init__(self, lm: CausalLM, cache: Cache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self._lm = lm
        self.cache = cache
        self.mask = mask
        self.positions = positions
        # Only a cache of plain full-attention layers can be padded, merged and trimmed by hand.
        self._plain = all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def joinable(self) -> bool:
        """True for plain ``DynamicLayer`` caches; sliding-window and other caches only run alone."""
        return self._plain

    @property
    def multi_token(self) -> bool:
        """True for plain caches: a row fed fewer tokens than another leaves masked holes, which
        only a plain cache can hold (a sliding window would count them)."""
        return self._plain

    @torch.inference_mode()
    def step(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed each row its tokens; returns float32 logits ``[rows, vocab]`` after each row's last."""
        device = self.mask.device
        width = max(len(fed) for fed in tokens)
        if width == 1:
            ids = torch.tensor([fed[0] for fed in tokens], dtype=torch.long, device=device).unsqueeze(1)
            new = self.mask.new_ones(len(self), 1)
            positions = self.positions.unsqueeze(1)
        else:
            if not self._plain:
                raise ValueError("this model's cache takes one token a row per step")
            # Rows stay right-aligned: one fed fewer tokens than the widest gets masked columns
            # (holes) before its own, which :meth:`_compact` turns into left padding in time.
            ids = torch.full((len(self), width), self._lm._pad_id, dtype=torch.long)
            new = torch.zeros((len(self), width), dtype=self.mask.dtype)
            for row, fed in enumerate(tokens):
                ids[row, width - len(fed) :] = torch.tensor(fed, dtype=torch.long)
                new[row, width - len(fed) :] = 1
            ids, new = ids.to(device), new.to(device)
            positions = self.positions.unsqueeze(1) + (new.cumsum(dim=1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, new], dim=1)
        logits = self._lm._forward(ids, self.mask, positions, self.cache)
        self.positions = self.positions + new.sum(dim=1)
        if width > 1:
            self._compact()
        return logits

    @torch.inference_mode()
    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows``, in that order (repeats copy a row's cache)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        if self._plain:
            for layer in self.cache.layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        else:
            self.cache.batch_select_indices(index)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        if self._plain:
            self._trim()

    @torch.inference_mode()
    def join(self, other: KVBatch) -> None:
        """Append ``other``'s rows, left-padding the narrower batch to the wider one's columns."""
        if len(self) and not (self._plain and other._plain):
            raise ValueError("this model's cache cannot merge batches")
        if not len(self):
            self.cache, self.mask, self.positions = other.cache, other.mask, other.positions
            self._plain = other._plain
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        pad_self, pad_other = width - self.mask.shape[1], width - other.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, 2, pad_self), _pad_left(theirs.keys, 2, pad_other)])
            mine.values = torch.cat(
                [_pad_left(mine.values, 2, pad_self), _pad_left(theirs.values, 2, pad_other)]
            )
        self.mask = torch.cat([_pad_left(self.mask, 1, pad_self), _pad_left(other.mask, 1, pad_other)])
        self.positions = torch.cat([self.positions, other.positions])

    def _compact(self) -> None:
        """Move each row's holes in front of its tokens once holes are over a quarter of the cache
        (attention over them is wasted work); they become left padding, and columns that are
        padding in every row are trimmed. Keys carry their positions (rotary embeddings are applied
        as they are written), so moving a column changes nothing a query sees through the mask."""
        started = self.mask.cummax(dim=1).values.bool()  # from each row's first attended column
        holes = int((started & (self.mask == 0)).sum())
        if 4 * holes <= self.mask.numel():
            return
        order = torch.sort(self.mask, dim=1, stable=True).indices  # padding first, tokens in order
        self.mask = self.mask.gather(1, order)
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row (they only cost attention time)."""
        if self.mask.shape[0] == 0:
            return
        used = self.mask.any(dim=0)
        first = int(used.int().argmax())  # first column some row attends to
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:]
            layer.values = layer.values[:, :, first:]


class CausalLM:
    """A loaded causal language model and its tokenizer, ready for :class:`GenerationEngine`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        context_length: int,
        name: str = "model",
        tool_parser: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._context_length = context_length
        self._device = next(model.parameters()).device
        self._vocab = len(tokenizer)
        self._tool_format = model_tool_format(tool_parser, _template_text(tokenizer.chat_template))
        #: Special tokens decoding skips, but for the tool format's markers (Mistral's [TOOL_CALLS]).
        special = {*tokenizer.all_special_ids}
        special.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
        markers = set(self._tool_format.markers) if self._tool_format is not None else set()
        kept = {i for i in special if tokenizer.convert_ids_to_tokens(i) in markers}
        self._skipped = frozenset(special - kept) if kept else None
        self._eos = _eos_token_ids(model, tokenizer)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._token_bytes = TokenBytes(tokenizer)
        # transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (the old name warns).
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    @classmethod
    def load(cls, spec: ModelSpec) -> CausalLM:
        """Load ``spec.source`` (a local folder or a hub id) on the spec's device and dtype, in eval mode."""
        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
        model = AutoModelForCausalLM.from_pretrained(spec.source, dtype=dtype)
        model.to(device)
        model.eval()
        config = model.config.get_text_config()
        context_length = (
            spec.context_length or getattr(config, "max_position_embeddings", None) or FALLBACK_CONTEXT_LENGTH
        )
        # Settles the tokenizer's truncation/padding state now: encoding from several threads is then
        # read-only on the Rust side (a first call could otherwise reset it while another thread reads).
        tokenizer("warm up", add_special_tokens=True)
        lm = cls(
            model, tokenizer, context_length=context_length, name=spec.name, tool_parser=spec.tool_parser
        )
        log.info(
            "loaded causal LM %s on %s (%s): context %d, eos %s, chat template %s, tool calls %s",
            spec.name,
            device,
            dtype,
            context_length,
            sorted(lm.eos_token_ids),
            "yes" if tokenizer.chat_template else "no",
            lm.tool_format.name if lm.tool_format else "none",
        )
        return lm

    # -- tokenizer (called from request threads and the engine thread) --------------------------------

    @property
    def context_length(self) -> int:
        """Most tokens, prompt plus completion, one sequence may hold."""
        return self._context_length

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's eos token and every eos id of the generation config."""
        return self._eos

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1`` (the tokenizer's, added tokens included)."""
        return self._vocab

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """The UTF-8 bytes each token stands for (a special token: its literal text)."""
        return self._token_bytes(ids)

    def vocabulary(self) -> Vocabulary:
        """Every token's bytes (special tokens: their text, and marked), for grammars."""
        special = set(self.tokenizer.all_special_ids)
        special.update(i for i, token in self.tokenizer.added_tokens_decoder.items() if token.special)
        return Vocabulary(
            tokens=self._token_bytes(range(self._vocab)),
            special=frozenset(i for i in special if i < self._vocab),
            eos=self._eos,
            encode=lambda text: self._encode(text, add_special_tokens=False),
        )

    @property
    def tool_format(self) -> ToolFormat | None:
        """The models file's ``tool_parser``, else the one the chat template teaches; None when the
        template does not render tools."""
        return self._tool_format

    def chat_prompt(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] | None = None) -> list[int]:
        """Render the chat template (with ``tools``) with the assistant's turn opened, then tokenize it."""
        if not self.tokenizer.chat_template:
            raise InvalidRequest(
                f"model {self.name!r} has no chat template; use the completions endpoint",
                param="messages",
            )
        conversation = template.conversation(messages, self._tool_format)
        offered = [tool.model_dump(exclude_none=True) for tool in tools] if tools else None
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, tools=offered, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as exc:  # e.g. a template that refuses a system message
            raise InvalidRequest(f"the chat template rejected the messages: {exc}", param="messages") from exc
        # The template writes the special tokens it wants (BOS included); do not add them twice.
        return self._encode_or_blame(text, False, _message_texts(messages), "messages")

    def completion_prompt(self, text: str) -> list[int]:
        """Tokenize a plain prompt; an empty one becomes the BOS (else eos) token, as GPT models expect."""
        ids = self._encode_or_blame(text, True, [("prompt", text)], "prompt")
        if not ids:
            start = self.tokenizer.bos_token_id
            if start is None:
                start = self.tokenizer.eos_token_id
            ids = [start] if start is not None else []
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        if self._skipped is None:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return self.tokenizer.decode([i for i in ids if i not in self._skipped], skip_special_tokens=False)

    def _encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def _encode_or_blame(
        self, text: str, add_special_tokens: bool, sources: list[tuple[str, str]], param: str
    ) -> list[int]:
        """Tokenize ``text``; an :class:`InvalidRequest` naming the source text (or ``param``) it fails on."""
        return tokenize_or_blame(
            lambda batch: self._encode(batch[0], add_special_tokens=add_special_tokens),
            [text],
            lambda _: sources,
            lambda _: param,
        )

    # -- model (engine thread only) --------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, KVBatch]:
        """Run left-padded prompts; returns their next-token logits and their :class:`KVBatch`."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        # Explicit positions: a left-padded row starts at 0 where its tokens start.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits, cache = self._forward_new(ids, mask, positions)
        lengths = mask.sum(dim=1)
        return logits, KVBatch(self, cache, mask, lengths)

    @torch.inference_mode()
    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Float32 logits ``[len(ids) - 1, vocab]``: row ``t`` is the model's guess for ``ids[t + 1]``."""
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self._device)
        out = self.model(input_ids=tokens, use_cache=False)
        return out.logits[0, :-1, : self._vocab].float()

    def _forward_new(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, Cache]:
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        return self._last_logits(out.logits), out[self._cache_arg]

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return self._last_logits(out.logits)

    def _last_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # Embedding matrices are often padded past the tokenizer: never sample an id it cannot decode.
        return logits[:, -1, : self._vocab].float()


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character standing for each byte, reversed."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenBytes:
    """Maps token ids to the bytes they decode to, for logprobs (whose tokens may split a character).

    Decoding one id alone turns half a character into U+FFFD, so byte-level BPE tokens are mapped
    through GPT-2's alphabet and SentencePiece byte-fallback tokens (``<0xE2>``) read as their byte;
    other tokenizers fall back to decoding the id alone.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._special = set(tokenizer.all_special_ids)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = str(getattr(backend, "decoder", "") or "")
        self._alphabet = _byte_level_alphabet() if "ByteLevel" in decoder else None
        self._sentencepiece = "ByteFallback" in decoder or "Metaspace" in decoder or "▁" in decoder

    def __call__(self, ids: Sequence[int]) -> list[bytes]:
        tokens = self._tokenizer.convert_ids_to_tokens(list(ids))
        return [self._one(i, token) for i, token in zip(ids, tokens, strict=True)]

    def _one(self, token_id: int, token: str | None) -> bytes:
        if token is None:
            return b""
        if token_id in self._special:
            return token.encode()
        alphabet = self._alphabet
        if alphabet is not None and all(c in alphabet for c in token):
            return bytes(alphabet[c] for c in token)
        if self._sentencepiece:
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                return bytes([int(token[3:5], 16)])
            return token.replace("▁", " ").encode()
        return self._tokenizer.decode([token_id]).encode()


def _template_text(chat_template: str | dict | None) -> str | None:
    """The chat template's text; of named templates, the one for tools (transformers' choice)."""
    if isinstance(chat_template, dict):
        return chat_template.get("tool_use") or chat_template.get("default")
    return chat_template


def _message_texts(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """Each message's texts with the request parameter they came from."""
    texts = []
    for i, message in enumerate(messages):
        texts.append((f"messages.{i}.content", message.content))
        if message.name is not None:
            texts.append((f"messages.{i}.name", message.name))
    return texts


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return frozenset(ids)
