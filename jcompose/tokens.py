"""User words -> their token positions in a prompt (for layout control and capture)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_positions(tokenizer: Any, prompt: str, words: Sequence[str], max_length: int | None = None) -> list[int]:
    """Positions in the encoded `prompt` (BOS at 0) of every token of each of `words`.

    A word may span several BPE tokens ("backpack" -> "back", "pack</w>"): all its positions are
    returned. Every occurrence in the prompt counts.

    Args:
      tokenizer: a CLIP tokenizer (as loaded by `jcompose.models.loading.load_tokenizer`).
      prompt: the prompt the UNet is conditioned on.
      words: the words to locate, e.g. ["backpack", "dog"].
      max_length: the context length (default: the tokenizer's model_max_length); positions past
        it are truncated away and so not found.

    Raises:
      ValueError: a word does not occur in the (truncated) prompt, naming both.
    """
    max_length = max_length or tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=True, max_length=max_length).input_ids
    positions: list[int] = []
    for word in words:
        piece = tokenizer(word, add_special_tokens=False).input_ids
        if not piece:
            raise ValueError(f"word {word!r} encodes to no tokens")
        found = [i for i in range(len(ids) - len(piece) + 1) if ids[i : i + len(piece)] == piece]
        if not found:
            raise ValueError(
                f"word {word!r} (tokens {tokenizer.convert_ids_to_tokens(piece)}) is not in the prompt {prompt!r} "
                f"as encoded to {max_length} tokens: {tokenizer.convert_ids_to_tokens(ids)}"
            )
        for start in found:
            positions.extend(range(start, start + len(piece)))
    return sorted(set(positions))
