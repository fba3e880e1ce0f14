"""``gill ui``: the Gradio chat demo answers chat turns through its API with text and captioned images (generated or
retrieved, with p_gen / p_ret), keeps and resets the conversation, passes uploaded images to the model, stays
offline, and refuses bad arguments (exit 2) before it loads anything or starts a server."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from conftest import BLOCKED_CONNECTIONS
from gradio_client import Client, handle_file
from PIL import Image
from shard_helpers import pipeline_in, trained_workdir

from flows.command import ui as ui_command
from flows.command.parser import main
from flows.ui import THEME, build_app, serve
from gill.pipeline import GenerationSettings

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "", None}


class RecordingPipe:
    """The pipeline, recording the prompt of every call (what the model was really given)."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self.prompts: list[list] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, prompt, settings=None, **overrides):
        self.prompts.append(list(prompt))
        return self._pipe(prompt, settings, **overrides)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_world, tiny_config) -> Path:
    """A small trained work folder with its retrieval bank (no decision classifier)."""
    root = tmp_path_factory.mktemp("ui-work")
    return trained_workdir(root, small_world, tiny_config, steps=4, run_id="ui", bank=True)


@pytest.fixture(scope="module")
def served(workdir, tmp_path_factory):
    """The app on a free loopback port (SD at 2 steps), with the host names it looked up while serving."""
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(host, *args, **kwargs):
        if (host.decode() if isinstance(host, bytes) else host) not in LOCAL_NAMES:
            looked_up.append(str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # the test's client only; the app needs no variable
        blocked_before = len(BLOCKED_CONNECTIONS)
        pipe = RecordingPipe(pipeline_in(workdir))
        out_dir = tmp_path_factory.mktemp("ui-out")
        app = build_app(pipe, out_dir, GenerationSettings(num_inference_steps=2, image_frequency=1.3))
        port = _free_port()
        serve(app, host="127.0.0.1", port=port, files=out_dir, prevent_thread_lock=True)
        try:
            yield {
                "url": f"http://127.0.0.1:{port}/",
                "app": app,
                "pipe": pipe,
                "out": out_dir,
                "looked_up": looked_up,
                "blocked_before": blocked_before,
            }
        finally:
            app.close()


def _client(served, tmp_path) -> Client:
    return Client(served["url"], verbose=False, download_files=str(tmp_path))


def _chat(client: Client, text: str, *, mode="auto", force_image=True, files=(), frequency=1.3) -> list[dict]:
    """One turn through the API; returns the conversation the page shows."""
    message = {"text": text, "files": [handle_file(str(f)) for f in files]}
    shown, cleared = client.predict(message, frequency, 0.0, 16, mode, force_image, 2, api_name="/chat")
    assert cleared == {"text": "", "files": []}  # the message box is emptied
    return shown


def _images_and_captions(message: dict) -> list[tuple[Path, str]]:
    """(downloaded file, the caption shown right under it) of each image in a message."""
    parts = message["content"]
    return [
        (Path(part["file"]), parts[i + 1]["text"])
        for i, part in enumerate(parts)
        if part["type"] == "file" and i + 1 < len(parts) and parts[i + 1]["type"] == "text"
    ]


def test_a_turn_returns_a_generated_image_with_its_caption(served, tmp_path):
    shown = _chat(_client(served, tmp_path), "a red star", mode="auto")
    user, reply = shown
    assert user["role"] == "user" and user["content"] == [{"text": "a red star", "type": "text"}]
    assert reply["role"] == "assistant"
    ((image_file, caption),) = _images_and_captions(reply)
    with Image.open(image_file) as image:  # the image really came back, as a file
        assert image.size[0] > 0
    # No decision classifier in this work folder: the pipeline generates, and the caption says why.
    assert caption.startswith("*generated · p_gen n/a · p_ret n/a · score ")
    assert "decision: no decision classifier" in caption and "seed 1337" in caption
    sidecars = sorted(served["out"].glob("turn*-00-gen.json"))  # saved in the work folder too, as gill chat does
    assert sidecars and json.loads(sidecars[-1].read_text())["kind"] == "gen"


def test_a_retrieved_image_is_captioned_with_its_bank_key(served, tmp_path):
    shown = _chat(_client(served, tmp_path), "a blue circle", mode="ret")
    ((image_file, caption),) = _images_and_captions(shown[-1])
    assert image_file.is_file()
    assert caption.startswith("*retrieved · p_gen n/a · p_ret n/a · score ") and "decision: mode" in caption
    assert "bank key " in caption


def test_the_conversation_is_kept_and_reset(served, tmp_path):
    client, prompts = _client(served, tmp_path), served["pipe"].prompts
    _chat(client, "a red star", force_image=False)
    shown = _chat(client, "and a square?", force_image=False)
    assert [m["role"] for m in shown] == ["user", "assistant", "user", "assistant"]
    assert prompts[-1][0] == "Q: a red star\nA:" and prompts[-1][-1] == "Q: and a square?\nA:"  # history sent

    shown_after, cleared = client.predict(api_name="/reset")
    assert shown_after == [] and cleared == {"text": "", "files": []}
    shown = _chat(client, "and a square?", force_image=False)
    assert len(shown) == 2
    assert prompts[-1] == ["Q: and a square?\nA:"]  # the model no longer sees the earlier turns


def test_an_uploaded_image_goes_before_the_text(served, tmp_path):
    picture = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(picture)
    shown = _chat(_client(served, tmp_path), "what is this?", files=[picture], force_image=False)
    assert [part["type"] for part in shown[0]["content"]] == ["file", "text"]  # shown in the user's message
    prompt = served["pipe"].prompts[-1]
    assert isinstance(prompt[0], Image.Image) and prompt[0].size == (32, 32)
    assert prompt[1:] == ["Q: what is this?\nA:"]


def test_bad_input_is_an_error_message_and_changes_nothing(served, tmp_path):
    client = _client(served, tmp_path)
    calls = len(served["pipe"].prompts)
    with pytest.raises(Exception, match="Type a message, or attach an image"):
        _chat(client, "   ")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG")
    with pytest.raises(Exception, match="cannot read the prompt images"):
        _chat(client, "what is this?", files=[broken])
    with pytest.raises(Exception, match="less than minimum value"):  # the sliders' bounds are checked too
        _chat(client, "a red star", frequency=-1.0)
    assert len(served["pipe"].prompts) == calls


def test_the_app_stays_offline(served):
    """No analytics, no share link, system fonts only; serving and answering looked up no outside host name and
    tried no outside connection (this test runs after the others of this module)."""
    app = served["app"]
    assert app.analytics_enabled is False and app.share is False and app.local_url == served["url"]
    assert THEME._stylesheets == [] and THEME._font_css == []  # no font to load: no Google Fonts, no @font-face
    page = urllib.request.urlopen(served["url"], timeout=30).read().decode()
    css = urllib.request.urlopen(served["url"] + "theme.css", timeout=30).read().decode()
    assert "ui-sans-serif" in css
    for text in (page, css):
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text
    assert served["looked_up"] == []
    assert len(BLOCKED_CONNECTIONS) == served["blocked_before"]


# -- the command ------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the command loads a pipeline or starts a server."""

    def refuse(*args, **kwargs):
        raise AssertionError("loaded or served despite bad input")

    monkeypatch.setattr(ui_command, "load_pipeline", refuse)
    monkeypatch.setattr(ui_command, "serve", refuse)


def test_bad_arguments_exit_2_before_anything_starts(no_loading, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    rc = main(["ui", "--workdir", str(missing), "--port", "70000", "--temperature", "-1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot start gill ui; no server was started" in err
    assert f"--workdir {str(missing)!r}: no such folder" in err
    assert "--port: must be in 1..65535, got 70000" in err and "temperature: must be >= 0" in err

    (tmp_path / "empty").mkdir()  # a folder without a trained run
    assert main(["ui", "--workdir", str(tmp_path / "empty"), "--port", str(_free_port())]) == 2
    assert "no trained checkpoint under" in capsys.readouterr().err


def test_a_port_in_use_exits_2(no_loading, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc = main(["ui", "--workdir", str(tmp_path), "--port", str(busy.getsockname()[1])])
    assert rc == 2 and "cannot listen on 127.0.0.1 port" in capsys.readouterr().err


def test_the_command_serves_the_work_folder_on_loopback(workdir, monkeypatch, tmp_path, capsys):
    """``gill ui --workdir W`` loads W's checkpoint and bank and serves on 127.0.0.1 with the given settings."""
    launched = {}

    def fake_serve(app, **kwargs):
        launched.update(app=app, **kwargs)

    monkeypatch.setattr(ui_command, "serve", fake_serve)
    port = _free_port()
    argv = ["ui", "--workdir", str(workdir), "--port", str(port), "--sd-steps", "3", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert launched["host"] == "127.0.0.1" and launched["port"] == port and launched["files"] == tmp_path / "o"
    assert isinstance(launched["app"], gr.Blocks) and launched["app"].analytics_enabled is False
    config = launched["app"].get_config_file()
    steps = [c for c in config["components"] if c["props"].get("label") == "Stable Diffusion steps"]
    frequency = [c for c in config["components"] if c["props"].get("label") == "Image frequency"]
    assert steps[0]["props"]["value"] == 3 and frequency[0]["props"]["value"] == 1.3  # gill chat's default
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().out
