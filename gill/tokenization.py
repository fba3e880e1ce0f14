"""The single place where the LM tokenizer gains GILL's ``[IMG]`` tokens (paper section 3.1; docs/official-gill.md
§1.2).

The official code first adds an unused ``<|image|>`` cls token (a leftover that only shifts ids, docs/official-gill.md
§8.18); we do not. [IMG] ids are whatever the tokenizer assigns and are always read back from it,
never hard-coded (the official 50266..50273 are an artefact of OPT's vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken


def img_token_strings(num_img_tokens: int) -> tuple[str, ...]:
    """``("[IMG0]", ..., "[IMG{n-1}]")``."""
    return tuple(f"[IMG{i}]" for i in range(num_img_tokens))


@dataclass(frozen=True, kw_only=True)
class ImgTokens:
    """The [IMG] tokens as added to a tokenizer."""

    strings: tuple[str, ...]
    """Token strings, ``[IMG0]`` first."""
    ids: tuple[int, ...]
    """Their ids in the tokenizer, in the same order."""

    @property
    def suffix(self) -> str:
        """What is appended to a caption: the tokens joined with no space (as the official last commit does)."""
        return "".join(self.strings)


def add_img_tokens(tokenizer: Any, num_img_tokens: int) -> ImgTokens:
    """Add ``[IMG0]..[IMG{n-1}]`` as single tokens (idempotent) and return their ids.

    Spaces around an [IMG] token are absorbed into it (the official tokenizer strips them), so chat history and
    prompts read ``text[IMG0]..[IMG7]next`` whatever spacing the text had.

    Raises:
        ValueError: if the tokenizer still splits a token (it would then not be a single embedding row).
    """
    strings = img_token_strings(num_img_tokens)
    # lstrip/rstrip: whitespace next to an [IMG] token belongs to it, as with the official (slow, transformers 4)
    # OPT tokenizer: "a star [IMG0] then" gives [a, star, [IMG0], then], never a lone space token (official §1.2).
    tokenizer.add_tokens([AddedToken(s, lstrip=True, rstrip=True, normalized=False) for s in strings])
    ids = tuple(tokenizer.convert_tokens_to_ids(s) for s in strings)
    for s, i in zip(strings, ids, strict=True):
        pieces = tokenizer(s, add_special_tokens=False).input_ids
        if pieces != [i]:
            raise ValueError(f"tokenizer splits {s!r} into {pieces}; expected the single id {i}")
    return ImgTokens(strings=strings, ids=ids)
