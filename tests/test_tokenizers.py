"""Locally trained tokenizers behave like the real ones: OPT prepends BOS, CLIP has end-of-word bytes."""

from __future__ import annotations

from transformers import AutoTokenizer

from gill.tokenization import add_img_tokens


def test_opt_tokenizer_prepends_bos_like_opt(tiny_zoo):
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "opt")
    ids = tok("a red circle").input_ids
    assert ids[0] == tok.bos_token_id and tok.bos_token == "</s>" == tok.eos_token
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle"


def test_img_tokens_are_single_tokens_and_keep_bos(tiny_zoo):
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "opt")
    before = len(tok)
    img = add_img_tokens(tok, 8)
    assert img.strings == tuple(f"[IMG{i}]" for i in range(8))
    assert list(img.ids) == list(range(before, before + 8))
    ids = tok("a red circle" + img.suffix).input_ids
    assert ids[0] == tok.bos_token_id
    assert ids[-8:] == list(img.ids)
    assert ids[1:-8] == tok("a red circle", add_special_tokens=False).input_ids
    assert add_img_tokens(tok, 8) == img and len(tok) == before + 8  # idempotent


def test_clip_tokenizer_pads_to_77_and_knows_every_word_final_byte(tiny_zoo):
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "sd" / "tokenizer")
    assert tok.model_max_length == 77
    batch = tok(["a red circle", "wow!"], padding="max_length", max_length=77, truncation=True).input_ids
    assert all(len(row) == 77 for row in batch)
    ids = tok("zebra quokka!").input_ids  # words never seen in the corpus
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "zebraquokka!"


def test_spaces_next_to_img_tokens_are_absorbed_as_the_official_tokenizer_does(tiny_zoo):
    """Official §1.2: "[IMG0] [IMG1]" and "[IMG0][IMG1]" give the same ids, and no lone space token precedes [IMG0]."""
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "opt")
    img = add_img_tokens(tok, 8)
    spaced = tok("a red star " + " ".join(img.strings) + " then", add_special_tokens=False).input_ids
    tight = tok("a red star" + img.suffix + "then", add_special_tokens=False).input_ids
    assert spaced == tight
    assert spaced[: -len(img.ids) - 1] == tok("a red star", add_special_tokens=False).input_ids
    assert tok.decode(spaced) == "a red star" + img.suffix + "then"
