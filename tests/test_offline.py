"""Offline behaviour: availability checks, and the paper preset failing at once with one helpful message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import BLOCKED_CONNECTIONS

from flows.command.parser import main
from gill.config import ModelRef
from gill.errors import MissingWeightsError
from gill.hub import check_backbone, require_backbones
from gill.presets import PAPER_CLIP, PAPER_LM, PAPER_SD, paper_config


def test_paper_preset_without_weights_names_every_missing_model_and_the_fix():
    before = len(BLOCKED_CONNECTIONS)
    with pytest.raises(MissingWeightsError) as info:
        require_backbones(paper_config().backbones, preset="paper")
    message = str(info.value)
    for model_id in (PAPER_LM, PAPER_CLIP, PAPER_SD):
        assert model_id in message
        assert f"hf download {model_id}" in message
    assert message.count(f"{PAPER_CLIP} (needed as") == 1  # vision and clip_metric share one id: listed once
    assert "vision, clip_metric" in message
    assert "HF_HOME" in message and "--preset tiny" in message and "HF_HUB_OFFLINE=1" in message
    assert len(BLOCKED_CONNECTIONS) == before, "an availability check must never touch the network"


def test_models_check_command_reports_paper_backbones_missing(capsys):
    assert main(["models", "check", "--preset", "paper"]) == 3
    out, err = capsys.readouterr()
    assert out.count("MISSING") == 4 and PAPER_LM in out
    assert "Missing model weights for preset 'paper'" in err


def test_models_check_passes_for_the_tiny_zoo(tiny_zoo, capsys):
    assert main(["models", "check", "--preset", "tiny"]) == 0
    assert capsys.readouterr().out.count("ok ") == 4
    assert main(["models", "check", "--preset", "tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in rows] == ["lm", "vision", "sd", "clip_metric"]
    assert all(r["available"] and r["local_dir"].startswith(str(tiny_zoo)) for r in rows)


def test_paper_demo_fails_before_doing_any_work(tmp_path, capsys):
    code = main(["demo", "--preset", "paper", "--workdir", str(tmp_path / "w")])
    assert code == 3
    assert PAPER_LM in capsys.readouterr().err
    assert not (tmp_path / "w" / "world").exists()


def test_the_console_command_fails_fast_in_a_fresh_process(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE")  # gill must switch offline mode on by itself
    proc = subprocess.run(
        [sys.executable, "-m", "flows.command", "models", "check", "--preset", "paper"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 3
    assert "Downloads are off (HF_HUB_OFFLINE=1)" in proc.stderr and PAPER_SD in proc.stderr


def test_a_local_folder_without_weights_is_reported_incomplete(tmp_path, tiny_zoo):
    folder = tmp_path / "opt"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_zoo / "opt" / "config.json").read_text())
    status = check_backbone("lm", ModelRef(id=str(folder)))
    assert not status.available
    assert "weights" in status.problem and "tokenizer" in status.problem


def test_a_missing_local_path_is_named(tmp_path):
    status = check_backbone("sd", ModelRef(id=str(tmp_path / "nowhere")))
    assert not status.available and "nowhere" in status.problem and "does not exist" in status.problem


def test_a_model_in_the_hf_cache_is_found_by_its_hub_id(tmp_path, monkeypatch, tiny_zoo):
    """Hub ids resolve through the standard cache layout (models--owner--name/snapshots/<rev>)."""
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-opt" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_zoo / "opt", snapshot)
    (cache / "models--acme--tiny-opt" / "refs").mkdir()
    (cache / "models--acme--tiny-opt" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    status = check_backbone("lm", ModelRef(id="acme/tiny-opt"))
    assert status.available, status.problem
    assert status.local_dir == snapshot


def test_precompute_under_paper_names_both_missing_encoders_before_loading_either():
    from gill.data.precompute import load_encoders

    with pytest.raises(MissingWeightsError) as info:
        load_encoders(paper_config())
    message = str(info.value)
    assert PAPER_CLIP in message and PAPER_SD in message
    assert PAPER_LM not in message  # precompute does not need the LM
