"""The GILL chat demo in the browser: a Gradio app like the official GILL demo (official §4.5), for ``gill ui``.

:func:`build_app` lays out the page over a loaded :class:`gill.pipeline.GILLPipeline`: the chat history, a message
box that takes text and images, and the official demo's controls (how often images come, temperature, the most
words), plus the retrieve-or-generate mode, "always return an image" and the Stable Diffusion steps. Each turn runs
through :class:`gill.pipeline.ChatSession` (the official prompt format ``Q: ...\\nA:``; paper section 3.3); each
returned image is shown with a caption that says whether it was generated or retrieved, the decision classifier's
``p_gen`` / ``p_ret`` and why, and its score (:func:`image_caption`). Images and their JSON sidecars are written
to a folder of the work folder, as ``gill chat`` writes them.

:func:`serve` launches it offline: no analytics or version check (``analytics_enabled=False``), no share link,
no server-side rendering (a Node process), no MCP server, no monitoring endpoint, no browser run history, and a
theme of system fonts only (:data:`THEME`), so the page loads nothing from outside this machine. gill sets no
environment variable for this; Gradio itself sets ``HF_HUB_DISABLE_TELEMETRY=True`` for the process when
:func:`build_app` creates a Blocks with analytics off (not on import).

Its API (for scripts and tests, e.g. ``gradio_client``): ``/chat`` (message ``{"text", "files"}`` and the
controls; returns the chat history and an empty message box) and ``/reset``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from gill.errors import GillError
from gill.pipeline import (
    MODES,
    ChatSession,
    GenerationSettings,
    GILLOutput,
    GILLPipeline,
    ImageResult,
    TextResult,
    load_prompt_images,
    save_images,
)

logger = logging.getLogger(__name__)

TITLE = "GILL chat"
KIND_NAMES = {"gen": "generated", "ret": "retrieved"}
"""How a caption names an image's kind (``ImageResult.kind``)."""
MODE_LABELS = {"auto": "auto (decision classifier)", "gen": "always generate", "ret": "always retrieve"}
MODE_CHOICES = [(MODE_LABELS[mode], mode) for mode in MODES]
"""The mode radio: ``GenerationSettings.mode``'s values, labelled."""

SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif")
SYSTEM_MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace")
THEME = gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO))
"""Gradio's default theme with the machine's own fonts: plain font names make no ``@font-face`` and no Google Fonts
link (a ``GoogleFont`` would load from fonts.googleapis.com when it is not installed locally)."""

IMAGE_FREQUENCY_MAX = 5.0
TEMPERATURE_MAX = 2.0
MAX_NEW_TOKENS_MAX = 256
SD_STEPS_MAX = 100


def image_caption(result: ImageResult) -> str:
    """The line under a returned image: generated or retrieved, the decision's ``p_gen`` / ``p_ret`` (``n/a``
    without a classifier) and reason, and the image's score (cosine with the ``[IMG0]`` retrieval embedding)."""
    decision = result.decision
    probs = " · ".join(
        f"{name} {'n/a' if value is None else f'{value:.2f}'}"
        for name, value in (("p_gen", decision.p_gen), ("p_ret", decision.p_ret))
    )
    score = "n/a" if math.isnan(result.score) else f"{result.score:.3f}"
    origin = f"bank key {result.key}" if result.kind == "ret" else f"seed {result.seed}"
    parts = [KIND_NAMES[result.kind], probs, f"score {score}", f"decision: {decision.reason}", origin]
    if result.safety_flagged:
        parts.append("flagged by the safety checker, not shown")
    return " · ".join(parts)


@dataclasses.dataclass(frozen=True)
class Controls:
    """The per-turn controls of the page (what a turn changes of the app's base :class:`GenerationSettings`)."""

    image_frequency: float
    temperature: float
    max_new_tokens: int
    mode: str
    force_image: bool
    sd_steps: int

    def settings(self, base: GenerationSettings) -> GenerationSettings:
        """``base`` with these controls (validated: a :class:`gill.errors.ConfigError` lists what is wrong)."""
        return dataclasses.replace(
            base,
            image_frequency=float(self.image_frequency),
            temperature=float(self.temperature),
            max_new_tokens=int(self.max_new_tokens),
            mode=self.mode,
            force_image=bool(self.force_image),
            num_inference_steps=int(self.sd_steps),
        )


class ChatApp:
    """The app's behaviour, apart from its layout: one chat turn and a reset over a shared pipeline.

    A browser session's state is two lists: the messages shown (Gradio's ``messages`` format) and the prompt
    history of :class:`ChatSession` (text and PIL images). The pipeline is shared by every session; Gradio's queue
    runs one turn at a time.
    """

    def __init__(self, pipe: GILLPipeline, settings: GenerationSettings, out_dir: Path) -> None:
        self.pipe = pipe
        self.settings = settings
        self.out_dir = Path(out_dir)
        self._turns = itertools.count(1)

    def respond(
        self, message: dict[str, Any] | None, shown: list[dict], history: list, controls: Controls
    ) -> tuple[list[dict], list]:
        """Answer one message (``{"text": str, "files": [paths]}``); returns the new shown messages and history.

        Bad input (no text and no image, an unreadable image, invalid settings) raises ``gr.Error`` with the
        problems, and the conversation stays as it was.
        """
        text = str((message or {}).get("text") or "").strip()
        files = [_file_path(f) for f in (message or {}).get("files") or []]
        if not text and not files:
            raise gr.Error("Type a message, or attach an image.")
        try:
            settings = controls.settings(self.settings)
            images = load_prompt_images(files)
            session = ChatSession(self.pipe, settings)
            session.history = list(history)
            for image in images:
                session.add_image(image)
            output = session.turn(text)
        except GillError as err:
            raise gr.Error(err.render()) from err
        turn = next(self._turns)
        saved = save_images(output, self.out_dir, prefix=f"turn{turn:04d}-")
        for warning in output.warnings:
            gr.Warning(warning)
        user = {"role": "user", "content": [*({"path": f} for f in files), *([text] if text else [])]}
        reply = {"role": "assistant", "content": reply_content(output, saved)}
        logger.info("turn %d: %d image(s), stop %s, in %s", turn, len(output.images), output.stop_reason, self.out_dir)
        return [*shown, user, reply], session.history

    @staticmethod
    def reset() -> tuple[list[dict], list]:
        """A new conversation: nothing shown, no history."""
        return [], []


def reply_content(output: GILLOutput, saved: Sequence[Path]) -> list[Any]:
    """The parts of the assistant's message, in the model's order: text, and each image followed by its caption
    (a safety-flagged image is only its caption). ``saved``: the PNGs :func:`gill.pipeline.save_images` wrote."""
    pngs = iter(saved)
    parts: list[Any] = []
    for item in output.items:
        if isinstance(item, TextResult):
            parts.append(item.text)
            continue
        assert isinstance(item, ImageResult)
        caption = image_caption(item)
        if item.image is not None:
            parts.append({"path": str(next(pngs)), "alt_text": caption})
        parts.append(f"*{caption}*")
    return parts or ["(no reply)"]


def _file_path(item: Any) -> str:
    """An uploaded file's path: Gradio passes a path, a ``{"path": ...}`` dict or a ``FileData``."""
    if isinstance(item, dict):
        return str(item["path"])
    return str(getattr(item, "path", item))


def build_app(pipe: GILLPipeline, out_dir: str | Path, settings: GenerationSettings | None = None) -> gr.Blocks:
    """The chat page over ``pipe``; ``settings`` are the controls' starting values and every other decoding option
    (default: ``gill chat``'s: image frequency 1.3); images and sidecars go to ``out_dir``. Serve it with
    :func:`serve`."""
    settings = settings or GenerationSettings(image_frequency=1.3)
    chat = ChatApp(pipe, settings, Path(out_dir))
    where = "with a retrieval bank" if pipe.bank is not None else "without a retrieval bank (generation only)"
    head = "with a decision classifier" if pipe.model.decision_head is not None else "without a decision classifier"
    with gr.Blocks(analytics_enabled=False, title=TITLE) as app:
        gr.Markdown(
            f"## {TITLE}\nCheckpoint `{pipe.checkpoint_dir}`, {where}, {head}. Each image says whether it was "
            "generated (Stable Diffusion) or retrieved (the bank), with the classifier's p_gen / p_ret and its score."
        )
        chatbot = gr.Chatbot(label="Conversation", height=520, buttons=["copy", "copy_all"])
        shown, history = gr.State([]), gr.State([])
        message = gr.MultimodalTextbox(
            placeholder="Type a message; attach images with the clip (they go before the text)",
            file_types=["image"],
            file_count="multiple",
            show_label=False,
        )
        with gr.Row():
            image_frequency = gr.Slider(
                0.0,
                IMAGE_FREQUENCY_MAX,
                value=settings.image_frequency,
                step=0.1,
                label="Image frequency",
                info="multiplies the odds of an image at each step (1 = unchanged, 0 = never)",
            )
            temperature = gr.Slider(
                0.0, TEMPERATURE_MAX, value=settings.temperature, step=0.05, label="Temperature", info="0 = greedy"
            )
            max_new_tokens = gr.Slider(
                1, MAX_NEW_TOKENS_MAX, value=settings.max_new_tokens, step=1, label="Maximum new tokens"
            )
        with gr.Accordion("More", open=False):
            with gr.Row():
                mode = gr.Radio(MODE_CHOICES, value=settings.mode, label="Retrieve or generate")
                force_image = gr.Checkbox(value=settings.force_image, label="Always return an image")
                sd_steps = gr.Slider(
                    1, SD_STEPS_MAX, value=settings.num_inference_steps, step=1, label="Stable Diffusion steps"
                )
        reset = gr.Button("Reset the conversation", variant="secondary")

        def respond(msg, shown_now, history_now, freq, temp, tokens, mode_now, force, steps):
            controls = Controls(freq, temp, tokens, mode_now, force, steps)
            new_shown, new_history = chat.respond(msg, shown_now, history_now, controls)
            return new_shown, new_shown, new_history, None

        def clear():
            new_shown, new_history = chat.reset()
            return new_shown, new_shown, new_history, None

        controls = [image_frequency, temperature, max_new_tokens, mode, force_image, sd_steps]
        outputs = [chatbot, shown, history, message]
        message.submit(respond, [message, shown, history, *controls], outputs, api_name="chat")
        reset.click(clear, None, outputs, api_name="reset")
    return app


def serve(app: gr.Blocks, *, host: str, port: int, files: str | Path, prevent_thread_lock: bool = False) -> Any:
    """Launch ``app`` on ``host:port``, offline (see the module docstring); ``files``: the folder the app writes its
    images to (Gradio serves only files from there, its own upload cache, the working and temp folders).
    With ``prevent_thread_lock`` it returns once the server runs (stop it with ``app.close()``)."""
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=prevent_thread_lock,
        show_error=True,
        allowed_paths=[str(Path(files).resolve())],
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        run_history=False,
        theme=THEME,
        quiet=True,
    )
