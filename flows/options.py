"""One declaration per option: the ``gill`` command's arguments and the flows' parameter models are generated from
the options dataclasses the runners take (their fields, types, defaults and attribute docstrings), so an option
is declared once, where the library or the runner defines it, and validated once, by the dataclass itself.

Why not jsonargparse or tyro: both read the same dataclasses and docstrings, but each would replace the whole
``gill`` parser tree (its subcommand groups, the judging commands, the exit codes of bad input); this module adds
the generated arguments to the existing ``argparse`` parsers instead, in a few lines.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from gill.config import GILLConfig
from gill.errors import GillError
from gill.presets import get_preset


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass and its bases (``name: T = x`` followed by a string literal)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def option_help(cls: type, name: str) -> str:
    """An option's description: its attribute docstring as plain text ('' when it has none)."""
    return plain_text(field_docs(cls).get(name, ""))


def plain_text(docstring: str) -> str:
    """A docstring's reStructuredText markup as a person reads it in a help text: ``code`` -> code,
    :attr:`~a.b` -> b."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", docstring)
    return text.replace("``", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (kind, False)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument_kwargs(kind: Any, default: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field of type ``kind``."""
    kind, _ = _unwrap_optional(kind)
    origin = typing.get_origin(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = typing.get_args(kind)
        return {"choices": choices, "type": type(choices[0])}
    if origin in (tuple, list, Sequence):
        item = typing.get_args(kind)[0]
        return {"type": _comma_separated(item if item in (int, float, str, Path) else str), "metavar": "A,B,..."}
    if kind in (int, float, str, Path):
        return {"type": kind}
    return {"type": str}


def add_options(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    dests: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` (``include`` or all but ``exclude``), with its type,
    choices, default and description. ``defaults`` overrides a field's default for this command; ``dests`` renames
    the argument (flag and namespace attribute); ``notes`` adds what this command does with a field to its help."""
    hints, defaults, dests, notes = _hints(cls), dict(defaults or {}), dict(dests or {}), dict(notes or {})
    for field in dataclasses.fields(cls):
        if (include is not None and field.name not in include) or field.name in exclude or not field.init:
            continue
        default = defaults.get(field.name, _default(field))
        dest = dests.get(field.name, field.name)
        kwargs = _argument_kwargs(hints[field.name], default)
        required = default is dataclasses.MISSING
        shown = "" if required or default is None else f" (default: {_shown(default)})"
        parser.add_argument(
            _flag(dest),
            dest=dest,
            default=None if required else default,
            required=required,
            help=" ".join(filter(None, [option_help(cls, field.name) + shown, notes.get(field.name)])).strip() or None,
            **kwargs,
        )


def _comma_separated(item: type) -> Any:
    """An argparse type for a comma-separated list of ``item`` values, returned as a tuple."""

    def parse(text: str) -> tuple:
        try:
            return tuple(item(v.strip()) for v in text.split(",") if v.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from err

    parse.__name__ = f"comma-separated {item.__name__}"
    return parse


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def options_from(cls: type, source: Any, dests: Mapping[str, str] | None = None, **fixed: Any) -> Any:
    """An instance of ``cls`` from an argparse namespace (or any object with the fields as attributes); ``fixed``
    sets fields the command decides itself. Fields absent from ``source`` keep their defaults."""
    dests = dict(dests or {})
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name in fixed:
            values[field.name] = fixed[field.name]
            continue
        attr = dests.get(field.name, field.name)
        if hasattr(source, attr):
            value = getattr(source, attr)
            kind, _ = _unwrap_optional(hints[field.name])
            if isinstance(value, list) and typing.get_origin(kind) is tuple:
                value = tuple(value)
            values[field.name] = value
    return cls(**values)


# -- flow parameters ------------------------------------------------------------------------------------------------


def _pydantic_type(kind: Any) -> Any:
    """Tuples become lists at the flow boundary (JSON has no tuples; Prefect's UI edits lists)."""
    inner, optional = _unwrap_optional(kind)
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0]
        inner = list[item]
        return inner | None if optional else inner
    return kind


def option_fields(
    cls: type,
    *,
    include: Sequence[str] | None = None,
    prefix: str = "",
    rename: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pydantic field definitions (for :func:`pydantic.create_model`) of the dataclass ``cls``'s fields, described
    by their docstrings. A field ``name`` becomes ``rename[name]``, else ``prefix + name``."""
    hints, rename, defaults = _hints(cls), dict(rename or {}), dict(defaults or {})
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if (include is not None and field.name not in include) or not field.init:
            continue
        default = defaults.get(field.name, _default(field))
        if isinstance(default, tuple):
            default = list(default)
        spec = Field(... if default is dataclasses.MISSING else default, description=option_help(cls, field.name))
        out[rename.get(field.name, prefix + field.name)] = (_pydantic_type(hints[field.name]), spec)
    return out


def option_problems(cls: type, values: Mapping[str, Any]) -> list[str]:
    """What the dataclass ``cls`` says is wrong with ``values`` (its own validation, all problems at once)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    try:
        cls(**kwargs)
    except GillError as err:
        return list(err.problems) or [str(err)]
    except (TypeError, ValueError) as err:
        return [str(err)]
    return []


def _problem_param(problem: str, mapping: Mapping[str, str]) -> str | None:
    """The parameter a dataclass's problem message is about (it starts with the field name), if any."""
    head = problem.split("=", 1)[0].split(":", 1)[0].split(" ", 1)[0].strip()
    return mapping.get(head)


def _init_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A pydantic error (``ValidationError.errors()``) in the form ``from_exception_data`` takes back."""
    out = {"type": error["type"], "loc": error["loc"], "input": error["input"]}
    if error.get("ctx"):
        out["ctx"] = error["ctx"]
    return out


def params_model(
    name: str,
    doc: str,
    *,
    groups: Sequence[tuple[type, Mapping[str, Any]]],
    base: type[BaseModel] = BaseModel,
    fields: Mapping[str, Any] | None = None,
) -> type[BaseModel]:
    """A pydantic parameter model for a flow: the fields of each options dataclass of ``groups`` (each with the
    :func:`option_fields` arguments that select and name them) plus ``fields``. Unknown parameters are refused,
    and each dataclass validates its own values: every problem is reported at once, type errors and the
    dataclasses' own checks together."""
    definitions: dict[str, Any] = dict(fields or {})
    mappings: list[tuple[type, dict[str, str]]] = []
    for cls, selection in groups:
        made = option_fields(cls, **selection)
        definitions.update(made)
        rename, prefix = dict(selection.get("rename") or {}), selection.get("prefix", "")
        include = selection.get("include")
        names = [f.name for f in dataclasses.fields(cls) if f.init and (include is None or f.name in include)]
        mappings.append((cls, {n: rename.get(n, prefix + n) for n in names}))

    def check(cls_: type[BaseModel], data: Any, handler: Any) -> Any:
        errors: list[Any] = []
        if isinstance(data, Mapping):
            for options_cls, mapping in mappings:
                values = {field: data[param] for field, param in mapping.items() if param in data}
                for problem in option_problems(options_cls, values):
                    param = _problem_param(problem, mapping)
                    errors.append(
                        {
                            "type": PydanticCustomError("option", "{problem}", {"problem": problem}),
                            "loc": (param,) if param else (),
                            "input": data.get(param) if param else None,
                        }
                    )
        try:
            model = handler(data)
        except ValidationError as err:
            if not errors:
                raise
            errors = [_init_error(e) for e in err.errors()] + errors
            model = None
        if errors:
            raise ValidationError.from_exception_data(cls_.__name__, errors)
        return model

    validator = model_validator(mode="wrap")(classmethod(check))
    where: dict[str, Any] = {"__config__": ConfigDict(extra="forbid")} if base is BaseModel else {"__base__": base}
    return create_model(name, __doc__=doc, __validators__={"_dataclass_checks": validator}, **where, **definitions)


# -- the model a command or flow runs with --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """Which models a command or flow runs with: a preset or a config file, plus optional backbone overrides."""

    preset: Literal["tiny", "paper"] = "tiny"
    """Named preset: tiny (CPU, built in) or paper."""
    config_path: Path | None = None
    """JSON config file; overrides the preset when given."""
    lm: str | None = None
    """Override the LM backbone (Hub id, gill-tiny/opt or local folder)."""
    vision: str | None = None
    """Override the vision encoder (Hub id, gill-tiny/clip or local folder)."""
    sd: str | None = None
    """Override the Stable Diffusion pipeline (Hub id, gill-tiny/sd or local folder)."""
    clip_metric: str | None = None
    """Override the metric CLIP model (Hub id, gill-tiny/clip or local folder)."""

    def gill_config(self, build: bool = True) -> GILLConfig:
        """The validated config (``build``: build the tiny zoo into the cache on first use)."""
        config = GILLConfig.load(self.config_path) if self.config_path else get_preset(self.preset, build=build)
        return config.with_backbones(lm=self.lm, vision=self.vision, sd=self.sd, clip_metric=self.clip_metric)
