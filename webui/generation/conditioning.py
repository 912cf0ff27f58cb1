"""Prompt text -> text-encoder embeddings, with A1111's emphasis, BREAK, 75-token chunks and clip skip.

A prompt is parsed into (text, weight) fragments, tokenized into chunks of 75 tokens (breaking at a
recent comma like A1111, or at BREAK), each chunk wrapped in BOS/EOS to 77 tokens and encoded
separately; the chunks' embeddings are concatenated, so prompts have no length limit. Weights scale
each token's embedding, then the mean is restored so emphasis does not change overall magnitude.
Scheduled prompts (`[a:b:10]`, `[a|b]`) become one embedding per step, swapped in between steps.
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
    """Hidden states for the UNet's cross-attention (+ pooled vector for SDXL)."""

    hidden: torch.Tensor            # [1, 77 * chunks, dim]
    pooled: torch.Tensor | None     # [1, pooled_dim] (SDXL only)

    @property
    def chunk_count(self) -> int:
        return self.hidden.shape[1] // (CHUNK_TOKENS + 2)


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
    if torch.all(weights == 1):
        return hidden
    original_mean = hidden.float().mean()
    weighted = hidden * weights.to(hidden.dtype).reshape(1, -1, 1)
    new_mean = weighted.float().mean()
    return weighted * (original_mean / new_mean).to(hidden.dtype)


class PromptEncoder:
    """Encodes prompts for one loaded pipeline; caches by text within a request."""

    def __init__(self, pipeline, family: str, clip_skip: int = 1):
        self.pipeline = pipeline
        self.family = family_named(family)
        self.clip_skip = max(1, clip_skip)
        self._cache: dict[str, PromptEmbedding] = {}

    @property
    def _device(self) -> torch.device:
        return getattr(self.pipeline, self.family.text_encoders[0]).device

    @torch.no_grad()
    def encode(self, prompt: str) -> PromptEmbedding:
        """Each text encoder tokenizes the prompt into chunks (the same split for all: they share CLIP's
        vocabulary); each chunk is encoded by the family's rule and weighted by the first tokenizer's weights."""
        if prompt in self._cache:
            return self._cache[prompt]
        encoders = [getattr(self.pipeline, name) for name in self.family.text_encoders]
        chunked = [tokenize_weighted(getattr(self.pipeline, name), prompt) for name in self.family.tokenizers]
        hidden_parts, pooled = [], None
        for chunks in zip(*chunked):
            ids = [torch.tensor([chunk.ids], device=self._device) for chunk in chunks]
            hidden, chunk_pooled = self.family.encode_token_ids(encoders, ids, self.clip_skip)
            hidden_parts.append(_apply_weights(hidden, torch.tensor(chunks[0].weights, device=hidden.device)))
            pooled = chunk_pooled if pooled is None else pooled  # the first chunk's pooled vector, like A1111
        embedding = PromptEmbedding(torch.cat(hidden_parts, dim=1), pooled)
        self._cache[prompt] = embedding
        return embedding

    def padded(self, embedding: PromptEmbedding, chunk_count: int) -> PromptEmbedding:
        """Extend with empty-prompt chunks so positive and negative have equal length (as A1111 does)."""
        missing = chunk_count - embedding.chunk_count
        if missing <= 0:
            return embedding
        empty = self.encode("")
        return PromptEmbedding(torch.cat([embedding.hidden] + [empty.hidden] * missing, dim=1), embedding.pooled)


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
