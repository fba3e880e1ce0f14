"""The ``gill`` command (a front end: every subcommand calls a stage runner or a judging function).

:func:`main` is the console entry point. It sets gill's offline-friendly Hugging Face defaults for this process
(:func:`gill.hub.configure_environment`) *before* the command's modules import the model stack, because
``huggingface_hub`` reads some of them when it is imported; the parser and the subcommands live in
:mod:`flows.command.main`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gill.hub import configure_environment


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gill ARGS``; returns the exit status."""
    configure_environment()
    from flows.command.main import main as run  # after the environment is set (see the module docstring)

    return run(argv)
