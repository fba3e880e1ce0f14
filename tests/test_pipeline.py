"""GILLPipeline on a tiny trained checkpoint: decoding, forced [IMG], generation, retrieval, the decision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import bank_in, pipeline_in, trained_workdir

from flows.workdir import Workdir
from gill.errors import ConfigError, InputError
from gill.pipeline import GenerationSettings, GILLPipeline, ImageResult, TextResult
from gill.presets import get_preset

FAST = GenerationSettings(max_new_tokens=6, num_inference_steps=2, seed=5)


@pytest.fixture(scope="module")
def workdir(tiny_config, small_world, tmp_path_factory) -> Path:
    """The small world's 16 pairs, precomputed, and a 12-step tiny run (``runs/pipe/final``)."""
    return trained_workdir(tmp_path_factory.mktemp("pipeline-work"), small_world, tiny_config, steps=12, run_id="pipe")


@pytest.fixture(scope="module")
def pipe(workdir) -> GILLPipeline:
    return pipeline_in(workdir)


def test_the_newest_run_is_the_default_checkpoint(workdir):
    assert Workdir(Path(workdir)).checkpoint() == workdir / "runs" / "pipe" / "final"
    with pytest.raises(InputError, match="no trained checkpoint"):
        Workdir(Path(workdir / "nothing-here")).checkpoint()


def test_kv_cached_decoding_equals_uncached_decoding_token_for_token(pipe, small_world):
    image = Image.open(next(small_world.cc3m_images_dir.rglob("*.jpg")))
    prompt = [image, "a picture of"]
    for sampled in ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9}):
        settings = dataclasses.replace(FAST, max_new_tokens=12, image_frequency=3.0, max_images=2, **sampled)
        embeds = pipe.encode_prompt(prompt)
        cached = pipe.generate_text(embeds, settings)
        plain = pipe.generate_text(embeds, dataclasses.replace(settings, use_cache=False))
        assert cached.token_ids == plain.token_ids and len(cached.token_ids) > 0
        assert cached.blocks == plain.blocks
        for a, b in zip(cached.img_states, plain.img_states, strict=True):
            assert torch.allclose(a, b, atol=1e-4)


def test_forced_img_gives_text_and_a_generated_image(pipe):
    out = pipe(["a small red star on the left of a grey background"], FAST, force_image=True, mode="gen")
    assert out.token_ids[:8] == pipe.img_ids  # the forced run, all 8 tokens
    (image,) = out.images
    assert image.kind == "gen" and image.image is not None and not image.safety_flagged
    assert image.image.size == (64, 64)  # the tiny SD pipeline's native size
    assert -1.0 <= image.score <= 1.0 and image.decision.reason == "mode"
    assert isinstance(out.items[0], ImageResult)
    assert any(isinstance(item, TextResult) for item in out.items) or out.stop_reason in ("newline", "eos")


def test_img_states_exist_when_img0_is_the_last_token_allowed(pipe):
    decoded = pipe.generate_text(
        pipe.encode_prompt(["a blue circle"]), dataclasses.replace(FAST, max_new_tokens=1, force_image=True)
    )
    assert decoded.blocks == [0] and decoded.token_ids == pipe.img_ids
    (states,) = decoded.img_states
    assert states.shape == (8, pipe.model.dims.lm_hidden) and torch.isfinite(states).all()


def test_gen_yields_an_image_of_the_configured_size_and_the_same_seed_gives_the_same_image(pipe):
    settings = dataclasses.replace(FAST, force_image=True, mode="gen", height=32, width=48)
    first = pipe(["a green square"], settings).images[0].image
    again = pipe(["a green square"], settings).images[0].image
    other = pipe(["a green square"], dataclasses.replace(settings, seed=6)).images[0].image
    assert first.size == (48, 32)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


BATCH_PIXEL_TOLERANCE = 2
"""Most a pixel of an 8-bit image may differ (of 255) between a batched and a one-image SD call. Measured on the tiny
preset: at most 1, on at most 5 of 64x64x3 values of an image (batched CPU kernels round differently)."""


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_batch_of_generations_gives_each_image_what_it_gets_alone(pipe):
    """generate_images: one SD call, one generator per image; each image equals the single call with its seed, up to
    BATCH_PIXEL_TOLERANCE (and 1% of values differing), while other seeds give clearly other images."""
    settings = dataclasses.replace(FAST, max_new_tokens=1, force_image=True, num_inference_steps=4)
    prompts = ["a green square", "a red circle on the left", "two blue stars", "a grey triangle", "a yellow star"]
    states = [pipe.generate_text(pipe.encode_prompt([p]), settings).img_states[0] for p in prompts]
    seeds = [11, 12, 13, 14, 11]  # the last one shares the first's seed, with another prompt
    batch = pipe.generate_images(states, settings, seeds=seeds)
    alone = [
        pipe.generate_images([h], dataclasses.replace(settings, seed=s))[0] for h, s in zip(states, seeds, strict=True)
    ]
    assert len(batch) == 5 and not any(r.safety_flagged for r in batch)
    for together, single in zip(batch, alone, strict=True):
        diff = np.abs(_pixels(together.image) - _pixels(single.image))
        assert diff.max() <= BATCH_PIXEL_TOLERANCE and (diff > 0).mean() <= 0.01
    image, flagged = pipe.generate_image(states[0], dataclasses.replace(settings, seed=11))  # the batch-of-one case
    assert not flagged and image.tobytes() == alone[0].image.tobytes()
    other = pipe.generate_images(states[:1], settings, seeds=[99])[0]
    assert np.abs(_pixels(other.image) - _pixels(batch[0].image)).mean() > 10 * BATCH_PIXEL_TOLERANCE
    with pytest.raises(ValueError, match="2 seeds"):
        pipe.generate_images(states[:1], settings, seeds=[1, 2])
    assert pipe.generate_images([], settings) == []


def test_image_frequency_zero_never_returns_an_image(pipe):
    out = pipe(["a picture of"], FAST, image_frequency=0.0, max_new_tokens=10)
    assert out.images == [] and not set(pipe.img_ids) & set(out.token_ids)


def test_the_official_ret_scale_factor_scales_the_absolute_img0_logit(pipe):
    """Official §4.3: with ret_scale_factor > 1 the [IMG0] logit becomes |logit| x factor (so -2 turns into +6)."""
    img0 = pipe.img_ids[0]
    logits = torch.full((pipe.model.vocab_size,), -5.0)
    logits[7], logits[img0] = 4.0, -2.0
    generator = torch.Generator().manual_seed(0)
    official = dataclasses.replace(FAST, temperature=0.0, ret_scale_factor=3.0)
    assert pipe._next_token(logits, official, sampled=1, blocks=0, generator=generator) == img0  # |-2| x 3 = 6 > 4
    ours = dataclasses.replace(FAST, temperature=0.0, image_frequency=3.0)
    assert pipe._next_token(logits, ours, sampled=1, blocks=0, generator=generator) == 7  # -2 + ln 3 < 4
    unchanged = dataclasses.replace(FAST, temperature=0.0, ret_scale_factor=1.0)  # <= 1: the official code skips it
    assert pipe._next_token(logits, unchanged, sampled=1, blocks=0, generator=generator) == 7
    with pytest.raises(ConfigError, match="give one of them"):
        dataclasses.replace(FAST, image_frequency=2.0, ret_scale_factor=1.3)


def test_chat_help_states_what_the_image_frequency_default_means(capsys):
    from flows.command.parser import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default 1.3: odds 30% higher" in text and "--ret-scale-factor" in text


def test_bad_inputs_are_reported_together(pipe):
    with pytest.raises(InputError) as err:
        pipe(["", 3, "   "], FAST)
    text = str(err.value) + " ".join(err.value.problems)
    assert "prompt[1]" in text and "int" in text
    with pytest.raises(InputError, match="empty"):
        pipe([], FAST)


def test_a_prompt_longer_than_the_context_is_truncated_from_the_left(pipe):
    long = "a red star " * 400  # far beyond the tiny OPT's 512 positions
    out = pipe([long], FAST, max_new_tokens=2)
    assert out.warnings and "kept its last" in out.warnings[0]


def test_a_checkpoint_with_other_backbones_is_refused_naming_both(workdir):
    paper = get_preset("paper")
    with pytest.raises(InputError) as err:
        GILLPipeline.from_pretrained(Workdir(Path(workdir)).checkpoint(), config=paper)
    assert "facebook/opt-6.7b" in " ".join(err.value.problems) and "gill-tiny/opt" in " ".join(err.value.problems)


@pytest.fixture(scope="module")
def banked(workdir) -> GILLPipeline:
    """The pipeline with a retrieval bank of the 16 training images, built by the same checkpoint."""

    bank_in(workdir, Workdir(Path(workdir)).checkpoint(), progress=False)
    return pipeline_in(workdir)


def _with_decision(pipe: GILLPipeline, gen_bias: float, ret_bias: float) -> GILLPipeline:
    from gill.adapters import DecisionHead

    head = DecisionHead(pipe.model.dims.lm_hidden)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([gen_bias, ret_bias]))
    pipe.model.decision_head = head.eval()
    return pipe


def test_ret_yields_a_bank_image_whose_key_exists(banked, workdir):
    from gill.data.shards import index_shard, read_samples

    out = banked(["a small red star"], FAST, force_image=True, mode="ret")
    (image,) = out.images
    assert image.kind == "ret" and image.key is not None and image.shard is not None
    (sample,) = read_samples(index_shard(workdir / image.shard), [image.key])
    from io import BytesIO

    assert Image.open(BytesIO(sample.jpeg)).convert("RGB").tobytes() == image.image.convert("RGB").tobytes()
    assert image.caption == sample.caption and -1.0 <= image.score <= 1.0
    assert image.scaled_score == pytest.approx(image.score * float(banked.model.adapters.retrieval.scale().detach()))


def test_auto_follows_the_decision_classifier(banked):
    try:
        ret = _with_decision(banked, gen_bias=-3.0, ret_bias=3.0)(["a blue circle"], FAST, force_image=True)
        assert ret.images[0].kind == "ret" and ret.images[0].decision.reason == "classifier"
        assert ret.images[0].decision.p_ret > 0.99
        gen = _with_decision(banked, gen_bias=3.0, ret_bias=-3.0)(["a blue circle"], FAST, force_image=True)
        assert gen.images[0].kind == "gen" and gen.images[0].decision.p_gen > 0.99
    finally:
        banked.model.decision_head = None
    plain = banked(["a blue circle"], FAST, force_image=True)
    assert plain.images[0].kind == "gen" and plain.images[0].decision.reason == "no decision classifier"


def test_two_image_blocks_never_return_the_same_bank_image(banked):
    settings = dataclasses.replace(
        FAST, force_image=True, mode="ret", max_images=2, image_frequency=1e6, max_new_tokens=8
    )
    keys = [image.key for image in banked(["shapes"], settings).images]
    assert len(keys) == 2 and len(set(keys)) == 2


def test_a_bank_built_by_another_checkpoint_is_refused(workdir, banked, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from gill.checkpoint import FORMAT, record_checksums

    other = tmp_path / "other-ckpt"
    shutil.copytree(Workdir(Path(workdir)).checkpoint(), other)
    weights = load_file(str(other / "adapters.safetensors"))
    weights = {k: v + 0.01 for k, v in weights.items()}
    save_file(weights, str(other / "adapters.safetensors"), metadata={"format": FORMAT})
    record_checksums(other)  # another checkpoint, saved as such (not a damaged copy)
    with pytest.raises(InputError) as err:
        pipeline_in(workdir, other)
    assert "other checkpoints" in str(err.value) and "gill index build" in err.value.render()


def test_gill_generate_prints_the_reply_and_writes_images_with_sidecars(banked, workdir, tmp_path, capsys):
    import json

    from flows.command.parser import main

    out = tmp_path / "gen"
    argv = [
        "generate",
        "--workdir",
        str(workdir),
        "a red star",
        "--force-image",
        "--mode",
        "ret",
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (sidecar,) = out.glob("*.json")
    record = json.loads(sidecar.read_text())
    assert record["kind"] == "ret" and record["key"] in printed and sidecar.with_suffix(".png").is_file()
    assert record["decision"]["reason"] == "mode"
    bad = ["generate", "--workdir", str(workdir), "x", "--image", str(tmp_path / "nope.png"), "--image", str(sidecar)]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "nope.png: no such file" in err and f"{sidecar}: not a readable image" in err


def test_gill_index_query_ranks_a_training_caption_first_for_its_own_image(banked, workdir, small_world, capsys):
    import json

    from flows.command.parser import main

    assert main(["index", "query", "--workdir", str(workdir), "a star", "-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    captions = {line.split("\t")[0] for line in small_world.cc3m_train_tsv.read_text().splitlines()}
    assert all(r["caption"] in captions for r in rows)


def test_chat_keeps_the_history_and_handles_commands(banked, small_world, tmp_path):
    import io

    from flows.command.inference import run_chat
    from gill.pipeline import ChatSession

    image = next(small_world.cc3m_images_dir.rglob("*.jpg"))
    session = ChatSession(banked, dataclasses.replace(FAST, force_image=True, mode="gen"))
    script = [f"/image {image}", "/image /no/such.png", "what is this?", "/bogus", "and now?", "/reset", "/quit", "x"]
    lines = io.StringIO("\n".join(script) + "\n")
    said: list[str] = []
    turns = run_chat(session, tmp_path / "chat", lines, said.append)
    assert turns == 2 and session.history == []  # /reset emptied it; "x" came after /quit
    assert any("no such file" in s for s in said) and any("unknown command '/bogus'" in s for s in said)
    assert sorted(p.name for p in (tmp_path / "chat").glob("*.png")) == ["turn001-00-gen.png", "turn002-00-gen.png"]
    session.turn("hello")
    assert isinstance(session.history[-2], str) and session.history[-2].startswith("Q: hello\nA:")
    assert session.history[-1].endswith("\n") and banked.img_suffix() in session.history[-1]


def test_an_explicit_bank_folder_or_object_is_used_without_a_workdir(banked, workdir):
    """``from_pretrained(checkpoint, bank=...)``: the library takes the bank itself (a folder or a loaded bank)."""
    from gill.retrieval import bank_dir

    checkpoint = Workdir(Path(workdir)).checkpoint()
    by_folder = GILLPipeline.from_pretrained(
        checkpoint, bank=bank_dir(Workdir(Path(workdir)).banks, checkpoint), load_sd=False
    )
    by_object = GILLPipeline.from_pretrained(checkpoint, bank=banked.bank, load_sd=False)
    settings = dataclasses.replace(FAST, force_image=True, mode="ret")
    expected = banked(["a small red star"], settings).images[0].key
    assert by_folder(["a small red star"], settings).images[0].key == expected
    assert by_object(["a small red star"], settings).images[0].key == expected


def test_an_explicit_bank_of_another_checkpoint_is_refused(banked, workdir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from gill.checkpoint import FORMAT, record_checksums

    other = tmp_path / "other-ckpt"
    shutil.copytree(Workdir(Path(workdir)).checkpoint(), other)
    weights = {k: v + 0.01 for k, v in load_file(str(other / "adapters.safetensors")).items()}
    save_file(weights, str(other / "adapters.safetensors"), metadata={"format": FORMAT})
    record_checksums(other)
    with pytest.raises(InputError) as err:
        GILLPipeline.from_pretrained(other, bank=banked.bank, load_sd=False)
    assert "another checkpoint" in str(err.value)
