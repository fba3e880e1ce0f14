"""Our checkpoint format (save/load, strict errors, backbone checks) and the import of the official release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flows.command.parser import main
from gill.adapters import DecisionHead, build_adapters
from gill.checkpoint import (
    ADAPTERS_FILE,
    CHECKSUMS_KEY,
    CONFIG_FILE,
    check_backbones,
    load_adapters,
    record_checksums,
    save_pretrained,
)
from gill.errors import InputError
from gill.factory import derive_dims
from gill.official import (
    config_from_model_args,
    import_official,
    load_official_decision_head,
    official_state_dict,
    read_model_args,
)
from gill.presets import paper_config
from gill.tokenization import ImgTokens, img_token_strings

ASSETS = Path(__file__).parent / "assets" / "official"


@pytest.fixture(scope="module")
def tiny(tiny_config):
    torch.manual_seed(0)
    dims = derive_dims(tiny_config)
    tokens = ImgTokens(strings=img_token_strings(8), ids=tuple(range(595, 603)))
    return tiny_config, dims, build_adapters(tiny_config, dims), tokens


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_save_then_load_gives_back_the_same_adapters_config_tokens_and_decision_head(tiny, tmp_path):
    config, dims, adapters, tokens = tiny
    head = DecisionHead(dims.lm_hidden)
    out = save_pretrained(tmp_path / "ckpt", adapters, config, tokens, {"step": 7}, decision_head=head)
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, ADAPTERS_FILE, "decision.safetensors"])
    loaded = load_adapters(out, config=config)
    assert_same_tensors(loaded.adapters.state_dict(), adapters.state_dict())
    assert_same_tensors(loaded.decision_head.state_dict(), head.state_dict())
    assert loaded.config == config and loaded.img_tokens == tokens
    assert all(p.requires_grad and p.dtype == torch.float32 for p in loaded.adapters.parameters())
    record = json.loads((out / CONFIG_FILE).read_text())
    assert record["backbones"]["lm"] == {"id": config.backbones.lm.id, "revision": "main"}
    assert record["extra"] == {"step": 7} and record["weights"]["num_parameters"] == 65_185
    assert {"gill_version", "git_sha", "created"} <= set(record["provenance"])


def test_strict_loading_lists_every_missing_unexpected_and_misshaped_tensor(tiny, tmp_path):
    config, _, adapters, tokens = tiny
    out = save_pretrained(tmp_path / "ckpt", adapters, config, tokens)
    state = load_file(str(out / ADAPTERS_FILE))
    del state["mapper.out.bias"]
    state["mapper.extra.weight"] = torch.zeros(3, 2)
    state["input_proj.linear.weight"] = torch.zeros(5, 48)
    save_file(state, str(out / ADAPTERS_FILE))
    record_checksums(out)  # weights that do not fit their config, recorded as such (not a damaged copy)
    with pytest.raises(InputError) as info:
        load_adapters(out)
    message = str(info.value)
    assert "missing: mapper.out.bias (32)" in message
    assert "unexpected: mapper.extra.weight (3, 2)" in message
    assert "shape mismatch: input_proj.linear.weight: checkpoint (5, 48), expected (256, 48)" in message


def test_a_checkpoint_for_other_backbones_is_detected_naming_both(tiny, tmp_path):
    config, _, adapters, tokens = tiny
    out = save_pretrained(tmp_path / "ckpt", adapters, config, tokens)
    with pytest.raises(InputError) as info:
        load_adapters(out, config=paper_config())
    message = str(info.value)
    assert config.backbones.lm.id in message and "facebook/opt-6.7b" in message and "vision:" in message
    check_backbones(config, config.with_backbones(clip_metric="/elsewhere"))  # the metric CLIP does not matter


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte of a safetensors file is tensor data: the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", [ADAPTERS_FILE, "decision.safetensors"])
def test_a_flipped_byte_in_the_weights_is_reported_as_corruption_naming_the_file(tiny, tmp_path, damaged):
    from gill.retrieval import checkpoint_id

    config, dims, adapters, tokens = tiny
    out = save_pretrained(tmp_path / "ckpt", adapters, config, tokens, decision_head=DecisionHead(dims.lm_hidden))
    recorded = json.loads((out / CONFIG_FILE).read_text())[CHECKSUMS_KEY]
    assert set(recorded) == {ADAPTERS_FILE, "decision.safetensors"}
    before = checkpoint_id(out)
    flip_last_byte(out / damaged)
    with pytest.raises(InputError, match="checkpoint corrupted") as info:
        load_adapters(out)
    assert str(out / damaged) in str(info.value) and "re-export" in info.value.render()
    if damaged == ADAPTERS_FILE:  # the bank lookup says so too, instead of "built by another checkpoint"
        with pytest.raises(InputError, match=f"checkpoint corrupted: '{out / damaged}'"):
            checkpoint_id(out)
    else:
        assert checkpoint_id(out) == before  # the id is the adapters' hash only


def test_a_checkpoint_saved_before_checksums_still_loads(tiny, tmp_path):
    config, _, adapters, tokens = tiny
    out = save_pretrained(tmp_path / "ckpt", adapters, config, tokens)
    record = json.loads((out / CONFIG_FILE).read_text())
    del record[CHECKSUMS_KEY]
    (out / CONFIG_FILE).write_text(json.dumps(record))
    assert_same_tensors(load_adapters(out).adapters.state_dict(), adapters.state_dict())


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_unreadable_weights_file_of_a_checkpoint_without_checksums_is_named_not_a_traceback(tiny, tmp_path, damage):
    config, _, adapters, tokens = tiny
    out = save_pretrained(tmp_path / "ckpt", adapters, config, tokens)
    record = json.loads((out / CONFIG_FILE).read_text())
    del record[CHECKSUMS_KEY]  # as written before checksums: nothing to verify against
    (out / CONFIG_FILE).write_text(json.dumps(record))
    weights = out / ADAPTERS_FILE
    data = weights.read_bytes()
    weights.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(InputError, match="checkpoint corrupted") as err:
        load_adapters(out)
    assert str(weights) in str(err.value)


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(InputError, match="not a gill checkpoint"):
        load_adapters(tmp_path)


# -- official release -----------------------------------------------------------------------------------------


def write_official_release(tmp_path: Path, tiny, decision_width: int | None = None) -> Path:
    """A release folder in the official layout at tiny sizes: bf16, ``{'state_dict': ...}``, ``module.model.*``."""
    config, dims, adapters, _ = tiny
    src = tmp_path / "release"
    src.mkdir()
    state = {"module." + k: v.to(torch.bfloat16) for k, v in official_state_dict(adapters).items()}
    torch.save({"state_dict": state}, src / "pretrained_ckpt.pth.tar")
    args = json.loads((ASSETS / "model_args.json").read_text())
    args.update(
        opt_version=config.backbones.lm.id,
        visual_encoder=config.backbones.vision.id,
        ret_emb_dim=config.adapters.ret_emb_dim,
        gen_emb_dim=dims.sd_text_dim,
    )
    (src / "model_args.json").write_text(json.dumps(args))
    if decision_width:
        weights = {"1.weight": torch.randn(2, decision_width), "1.bias": torch.randn(2)}
        torch.save({"state_dict": weights}, src / "decision_model.pth.tar")
    return src


def test_importing_a_tiny_official_release_keeps_every_tensor_exactly(tiny, tmp_path, capsys):
    config, dims, adapters, _ = tiny
    src = write_official_release(tmp_path, tiny, decision_width=dims.lm_hidden + 1)
    out = tmp_path / "imported"
    assert main(["import-official", str(src), "--out", str(out), "--sd", config.backbones.sd.id]) == 0
    assert "imported 65,185 adapter parameters" in capsys.readouterr().out
    loaded = load_adapters(out, config=config)
    expected = {k: v.to(torch.bfloat16).float() for k, v in adapters.state_dict().items()}  # bf16 -> fp32 is exact
    assert_same_tensors(loaded.adapters.state_dict(), expected)
    assert loaded.config.adapters == config.adapters  # mapper sizes read back from the tensors
    assert loaded.decision_head.with_retrieval_score
    assert loaded.img_tokens.ids == tuple(range(595, 603))  # our tokenizer's ids, not the official 50266..
    assert loaded.record["extra"]["imported_from"]["official_img_token_ids"][0] == 50266


def test_official_import_names_unknown_and_missing_tensors_in_one_error(tiny, tmp_path):
    config, *_ = tiny
    src = write_official_release(tmp_path, tiny)
    blob = torch.load(src / "pretrained_ckpt.pth.tar", weights_only=True)
    blob["state_dict"]["model.lm.some_weight"] = torch.zeros(2)
    del blob["state_dict"]["module.model.visual_fc.bias"]
    blob["state_dict"]["module.model.logit_scale"] = torch.zeros(1)
    torch.save(blob, src / "pretrained_ckpt.pth.tar")
    with pytest.raises(InputError) as info:
        import_official(src, tmp_path / "out", sd=config.backbones.sd.id)
    message = str(info.value)
    assert "unexpected: model.lm.some_weight (2)" in message
    assert "missing: retrieval.image_proj.bias (32)" in message
    assert "shape mismatch: retrieval.logit_scale: checkpoint (1), expected ()" in message
    assert not (tmp_path / "out").exists()


def test_the_real_official_decision_model_loads_on_cpu():
    head = load_official_decision_head(ASSETS / "decision_model.pth.tar", derive_dims(paper_config()))
    assert head.linear.weight.shape == (2, 4096) and not head.with_retrieval_score
    torch.testing.assert_close(head.linear.bias.detach(), torch.tensor([-0.0100, -0.0029]), atol=5e-5, rtol=0)
    assert head.linear.weight.device.type == "cpu" and head.linear.weight.dtype == torch.float32


def test_the_real_model_args_map_to_the_paper_config():
    config = config_from_model_args(read_model_args(ASSETS / "model_args.json"))
    paper = paper_config()
    assert config.adapters == paper.adapters
    assert (config.backbones.lm, config.backbones.vision, config.backbones.sd) == (
        paper.backbones.lm,
        paper.backbones.vision,
        paper.backbones.sd,
    )
    with pytest.raises(InputError, match="text_fc_mode"):
        config_from_model_args({**read_model_args(ASSETS / "model_args.json"), "text_fc_mode": "linear"})


def test_an_imported_logit_scale_above_ln_100_is_kept_and_used_exactly(tiny, tmp_path):
    import copy
    import math

    config, dims, adapters, tokens = tiny
    adapters = copy.deepcopy(adapters)
    with torch.no_grad():
        adapters.retrieval.logit_scale.fill_(5.0)  # exp(5) = 148 > 100: CLIP would have clamped it
    src = write_official_release(tmp_path, (config, dims, adapters, tokens))
    out = tmp_path / "imported"
    assert main(["import-official", str(src), "--out", str(out), "--sd", config.backbones.sd.id]) == 0
    loaded = load_adapters(out, config=config).adapters.retrieval
    assert loaded.logit_scale.item() == 5.0  # bf16 holds 5.0 exactly
    assert loaded.scale().item() == pytest.approx(math.exp(5.0), rel=1e-6)
