"""Prompt text -> text-encoder embeddings, with A1111's emphasis, BREAK, 75-token chunks and clip skip.

A prompt is parsed into (text, weight) fragments, tokenized into chunks of 75 tokens (breaking at a
recent comma like A1111, or at BREAK), each chunk wrapped in BOS/EOS to 77 tokens and encoded
separately; the chunks' embeddings are concatenated, so prompts have no length limit. Weights scale
each token's embedding, then the mean is restored so emphasis does not change overall magnitude.
Scheduled prompts (`[a:b:10]`, `[a|b]`) become one embedding per step, swapped in between steps.

Families with a whole-prompt text encoder (`ModelFamily.sequence_text_encoder`: SD3's T5) encode it once
for the whole prompt, up to the family's token limit, after the CLIP chunks; emphasis weights its tokens the
same way, BREAK does not split it, and a longer prompt is cut at the limit with a note for the user.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from webui.generation.prompt_syntax import BREAK_MARKER, get_prompt_schedule, parse_prompt_attention
from webui.models.families import family_named

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20  # A1111's default "comma padding backtrack"


@dataclass(frozen=True)
class TokenChunk:
    ids: tuple[int, ...]        # exactly CHUNK_TOKENS + 2, with BOS/EOS/padding
    weights: tuple[float, ...]  # same length, 1.0 on special tokens


@dataclass
class PromptEmbedding:
    """Hidden states for the denoiser's text attention (+ pooled vector for SDXL/SD3)."""

    hidden: torch.Tensor            # [1, 77 * chunks, dim]: the CLIP chunks
    pooled: torch.Tensor | None     # [1, pooled_dim] (families conditioned on pooled text)
    sequence: torch.Tensor | None = None  # [1, tokens, dim]: the whole-prompt encoder's part (SD3's T5)

    @property
    def chunk_count(self) -> int:
        return self.hidden.shape[1] // (CHUNK_TOKENS + 2)

    @property
    def embeds(self) -> torch.Tensor:
        """What the pipeline's `prompt_embeds` gets: the CLIP chunks, then the whole-prompt part."""
        return self.hidden if self.sequence is None else torch.cat([self.hidden, self.sequence], dim=1)


@dataclass(frozen=True)
class SequenceTokens:
    """A prompt's tokens for a whole-prompt encoder (T5): ids ending in EOS, padded to the limit."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    prompt_tokens: int   # how many the prompt had before it was cut (EOS not counted)
    limit: int           # how many the encoder reads (EOS included)

    @property
    def truncated(self) -> bool:
        return self.prompt_tokens > self.limit - 1


def tokenize_sequence(tokenizer, prompt: str, limit: int) -> SequenceTokens:
    """A prompt's T5 tokens with A1111 emphasis weights per fragment, EOS-terminated and padded to `limit`
    (diffusers' SD3 encoding: `padding="max_length"`, no attention mask); BREAK only separates words."""
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_prompt_attention(prompt):
        if text == BREAK_MARKER and weight == -1:
            continue
        tokens = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        ids += tokens
        weights += [weight] * len(tokens)
    count, room = len(ids), limit - 1
    ids, weights = ids[:room] + [tokenizer.eos_token_id], weights[:room] + [1.0]
    fill = limit - len(ids)
    return SequenceTokens(tuple(ids + [tokenizer.pad_token_id] * fill), tuple(weights + [1.0] * fill), count, limit)


def sequence_note(tokens: SequenceTokens) -> str:
    return (f"T5 reads {tokens.limit - 1} tokens: the prompt's {tokens.prompt_tokens} were truncated "
            f"(words after token {tokens.limit - 1} reach only the CLIP encoders)")


def tokenize_weighted(tokenizer, prompt: str) -> list[TokenChunk]:
    """Split a prompt into 77-token chunks with per-token weights (A1111 semantics)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk(keep_empty: bool = False) -> None:
        nonlocal ids, weights, last_comma
        if not ids and not keep_empty:
            return
        fill = CHUNK_TOKENS - len(ids)
        chunks.append(TokenChunk(
            ids=tuple([bos] + ids + [eos] + [pad] * fill),
            weights=tuple([1.0] + weights + [1.0] * (fill + 1)),
        ))
        ids, weights, last_comma = [], [], -1

    for text, weight in parse_prompt_attention(prompt):
        if text == BREAK_MARKER and weight == -1:
            close_chunk(keep_empty=True)
            continue
        for token in tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                # Move the words after the last comma into the next chunk so a phrase is not cut in two.
                carry_ids, carry_weights = ids[last_comma + 1:], weights[last_comma + 1:]
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                close_chunk()
                ids, weights = carry_ids, carry_weights
            if len(ids) == CHUNK_TOKENS:
                close_chunk()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close_chunk(keep_empty=True)
    return chunks


def _apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale tokens by their weights, then restore the original mean (A1111's emphasis)."""
    if hidden.shape[1] == 0 or torch.all(weights == 1):  # (a family may encode no CLIP hidden states)
        return hidden
    original_mean = hidden.float().mean()
    weighted = hidden * weights.to(hidden.dtype).reshape(1, -1, 1)
    new_mean = weighted.float().mean()
    return weighted * (original_mean / new_mean).to(hidden.dtype)


class PromptEncoder:
    """Encodes prompts for one loaded pipeline; caches by text within a request. `notes` collects what the
    user should know about the encoding (a prompt cut at T5's limit), once each."""

    def __init__(self, pipeline, family: str, clip_skip: int = 1, variant: str | None = None):
        self.pipeline = pipeline
        self.family = family_named(family)
        self.sequence_tokens = self.family.sequence_limit(variant)  # T5's limit (Flux: per variant)
        self.clip_skip = max(1, clip_skip)
        self._cache: dict[str, PromptEmbedding] = {}
        self.notes: list[str] = []
        self._truncated: dict[str, SequenceTokens] = {}

    @property
    def _device(self) -> torch.device:
        return getattr(self.pipeline, self.family.text_encoders[0]).device

    @property
    def _chunk_components(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(encoders, tokenizers) that read CLIP chunks: all but the whole-prompt encoder."""
        family = self.family
        pairs = [(encoder, tokenizer) for encoder, tokenizer in zip(family.text_encoders, family.tokenizers)
                 if encoder != family.sequence_text_encoder]
        return tuple(encoder for encoder, _ in pairs), tuple(tokenizer for _, tokenizer in pairs)

    @property
    def _joint_width(self) -> int:
        return self.family.joint_width(getattr(self.pipeline, self.family.denoiser).config)

    @torch.no_grad()
    def encode(self, prompt: str) -> PromptEmbedding:
        """Each CLIP text encoder tokenizes the prompt into chunks (the same split for all: they share CLIP's
        vocabulary); each chunk is encoded by the family's rule and weighted by the first tokenizer's weights.
        A whole-prompt encoder (T5) then reads the prompt once."""
        if prompt in self._cache:
            return self._cache[prompt]
        encoder_names, tokenizer_names = self._chunk_components
        encoders = [getattr(self.pipeline, name) for name in encoder_names]
        chunked = [tokenize_weighted(getattr(self.pipeline, name), prompt) for name in tokenizer_names]
        hidden_parts, pooled = [], None
        width = self._joint_width if self.family.sequence_text_encoder else None
        for chunks in zip(*chunked):
            ids = [torch.tensor([chunk.ids], device=self._device) for chunk in chunks]
            hidden, chunk_pooled = self.family.encode_chunk(encoders, ids, self.clip_skip, width)
            hidden_parts.append(_apply_weights(hidden, torch.tensor(chunks[0].weights, device=hidden.device)))
            pooled = chunk_pooled if pooled is None else pooled  # the first chunk's pooled vector, like A1111
        hidden = torch.cat(hidden_parts, dim=1)
        embedding = PromptEmbedding(hidden, pooled, self._encode_sequence(prompt, hidden))
        self._cache[prompt] = embedding
        return embedding

    def _encode_sequence(self, prompt: str, clip_hidden: torch.Tensor) -> torch.Tensor | None:
        family = self.family
        if family.sequence_text_encoder is None:
            return None
        encoder = getattr(self.pipeline, family.sequence_text_encoder, None)
        tokenizer = getattr(self.pipeline, family.sequence_tokenizer or "", None)
        clip_ids = torch.zeros(1, 1, dtype=torch.long, device=self._device)
        if encoder is None or tokenizer is None:  # a checkpoint without T5: zeros (the load warned about it)
            zeros = family.encode_sequence(None, None, self._joint_width, clip_ids, self.sequence_tokens)
            return zeros.to(clip_hidden)
        tokens = tokenize_sequence(tokenizer, prompt, self.sequence_tokens)
        if tokens.truncated:
            self._truncated[prompt] = tokens
            if sequence_note(tokens) not in self.notes:
                self.notes.append(sequence_note(tokens))
        ids = torch.tensor([tokens.ids], device=encoder.device)
        states = family.encode_sequence(encoder, ids, self._joint_width, clip_ids, self.sequence_tokens)
        return _apply_weights(states.to(clip_hidden.dtype), torch.tensor(tokens.weights, device=states.device))

    def sequence_infotext(self, prompt: str, steps: int) -> str | None:
        """The infotext's "T5" value for a prompt (each of its scheduled texts): "absent" when the checkpoint
        has no T5, "truncated at N tokens" when the prompt was cut, None otherwise or for families without a
        whole-prompt encoder."""
        family = self.family
        if family.sequence_text_encoder is None:
            return None
        if getattr(self.pipeline, family.sequence_text_encoder, None) is None:
            return "absent"
        texts = {entry.text for entry in get_prompt_schedule(prompt, steps)}
        cut = [self._truncated[text] for text in texts if text in self._truncated]
        return f"truncated at {cut[0].limit - 1} tokens" if cut else None

    def padded(self, embedding: PromptEmbedding, chunk_count: int) -> PromptEmbedding:
        """Extend with empty-prompt chunks so positive and negative have equal length (as A1111 does); the
        whole-prompt part stays after them (it always has the family's full length)."""
        missing = chunk_count - embedding.chunk_count
        if missing <= 0:
            return embedding
        empty = self.encode("")
        return PromptEmbedding(torch.cat([embedding.hidden] + [empty.hidden] * missing, dim=1), embedding.pooled,
                               embedding.sequence)


@dataclass
class ConditioningSchedule:
    """Per-step positive and negative embeddings for one request, equal chunk counts throughout."""

    positive: list[PromptEmbedding]   # index = step
    negative: list[PromptEmbedding]

    def changes_after(self, step: int) -> bool:
        nxt = step + 1
        return nxt < len(self.positive) and (
            self.positive[nxt] is not self.positive[step] or self.negative[nxt] is not self.negative[step]
        )


def _per_step(encoder: PromptEncoder, prompt: str, steps: int) -> list[PromptEmbedding]:
    schedule = get_prompt_schedule(prompt, steps)
    per_step = []
    for step in range(steps):
        # A1111: an entry applies while step <= its end_at_step.
        entry = next((e for e in schedule if step <= e.end_at_step), schedule[-1])
        per_step.append(encoder.encode(entry.text))
    return per_step


def build_conditioning(encoder: PromptEncoder, prompt: str, negative_prompt: str, steps: int) -> ConditioningSchedule:
    positive = _per_step(encoder, prompt, steps)
    negative = _per_step(encoder, negative_prompt, steps)
    longest = max(e.chunk_count for e in positive + negative)
    padded: dict[int, PromptEmbedding] = {}

    def pad(embedding: PromptEmbedding) -> PromptEmbedding:
        key = id(embedding)
        if key not in padded:
            padded[key] = encoder.padded(embedding, longest)
        return padded[key]

    return ConditioningSchedule([pad(e) for e in positive], [pad(e) for e in negative])


def batch_repeat(tensor: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.repeat(batch_size, *([1] * (tensor.dim() - 1)))
