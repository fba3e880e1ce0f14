"""Read and write GILL's official PartiPrompts votes TSV layout.

The released files (``data_manifests/partiprompts/PartiPromptsAllDecisions_{Alignment,Realism}.tsv``) are
UTF-8 TSV with the header ``Prompt Category Challenge Note Decisions``, one prompt per line, no quoting (prompts
may contain ``"``), and ``Decisions`` = the judges' votes, comma-separated, in judge order, each one of
``ret``, ``gen`` or ``same``. Two released rows have only four votes. The aggregated file
(``PartiPromptsDecisionsConfident.tsv``) has the same first four columns and a last column ``Decision`` holding
one label.

Lines are split on tabs only (never parsed as CSV), so ``write_votes(read_votes(f))`` reproduces a released
file byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gill.errors import InputError
from gill.manifests import shipped_file
from gill.utils.io import atomic_write_text

VOTE_VALUES = ("ret", "gen", "same")
"""The values a judge may give: retrieved image better, generated image better, or no preference."""

TEXT_COLUMNS = ("Prompt", "Category", "Challenge", "Note")
VOTES_HEADER = (*TEXT_COLUMNS, "Decisions")
CONFIDENT_HEADER = (*TEXT_COLUMNS, "Decision")
MAX_PROBLEMS = 50  # problems listed in one error; the rest are counted


@dataclass
class VoteRow:
    """One prompt of the votes file: its PartiPrompts columns and the judges' votes in judge order."""

    prompt: str
    category: str
    challenge: str
    note: str
    votes: list[str] = field(default_factory=list)

    def text_fields(self) -> list[str]:
        """The four text columns, in file order."""
        return [self.prompt, self.category, self.challenge, self.note]


def default_votes_path(aspect: str = "alignment") -> Path:
    """The shipped votes file: ``aspect`` is ``alignment`` (which image matches the prompt) or ``realism``."""

    return shipped_file("partiprompts_votes", aspect)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        hint = "for votes, pass --votes PATH to a PartiPromptsAllDecisions_*.tsv file"
        raise InputError(f"{path} does not exist", [], hint=hint) from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text", [f"byte {err.start}: {err.reason}"]) from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_table(path: Path, expected: tuple[str, ...]) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """``(rows, problems)``: ``(line number, fields)`` of each well-formed data line, and ``(line, problem)``."""
    lines = _read_lines(path)
    if not lines:
        raise InputError(f"{path} is empty", [], hint="expected the header " + "\t".join(expected))
    header = lines[0].split("\t")
    problems: list[tuple[int, str]] = []
    missing = [name for name in expected if name not in header]
    if missing:
        problems.append((1, f"line 1 (header): missing column(s) {', '.join(missing)}"))
    elif tuple(header) != expected:
        problems.append(
            (1, f"line 1 (header): columns must be exactly {' '.join(expected)} in this order, got {' '.join(header)}")
        )
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(expected):
            problems.append((number, f"line {number}: {len(fields)} tab-separated column(s), expected {len(expected)}"))
            continue
        if not fields[0].strip():
            problems.append((number, f"line {number}: empty Prompt"))
        rows.append((number, fields))
    return rows, problems


def _raise(path: Path, numbered: list[tuple[int, str]], header: tuple[str, ...] = VOTES_HEADER) -> None:
    problems = [text for _, text in sorted(numbered, key=lambda p: p[0])]  # stable: a line's problems stay in order
    shown = problems[:MAX_PROBLEMS]
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    kind = "votes" if header == VOTES_HEADER else "confident-labels"
    raise InputError(
        f"{path} is not a valid {kind} file ({len(problems)} problem(s))",
        shown,
        hint=f"expected UTF-8 TSV with header {' '.join(header)}; values from {'/'.join(VOTE_VALUES)}, "
        "votes comma-separated",
    )


def parse_votes(text: str) -> tuple[list[str], list[str]]:
    """``(votes, bad values)`` of one ``Decisions`` cell, e.g. ``"ret,gen,same"``."""
    votes = [v.strip() for v in text.strip().split(",")] if text.strip() else []
    return votes, [v for v in votes if v not in VOTE_VALUES]


def read_votes(path: str | os.PathLike[str]) -> list[VoteRow]:
    """Every row of a votes TSV, in file order.

    Raises one :class:`InputError` naming the file and listing every problem with its line number (missing
    header columns, wrong column counts, empty prompts, rows without votes, unknown vote values, a prompt on two
    lines, a file with no rows).
    """
    path = Path(path)
    table, problems = _read_table(path, VOTES_HEADER)
    rows = []
    first_line: dict[str, int] = {}
    if not table and not problems:
        problems.append((1, "no vote rows after the header"))
    for number, fields in table:
        earlier = first_line.setdefault(fields[0], number)
        if earlier != number:
            problems.append(
                (
                    number,
                    f"line {number}: the prompt repeats line {earlier} ({fields[0][:60]!r}); each "
                    "prompt once, with all its votes in one Decisions cell",
                )
            )
        votes, bad = parse_votes(fields[4])
        if not votes:
            problems.append((number, f"line {number}: no votes in Decisions"))
        elif bad:
            problems.append(
                (
                    number,
                    f"line {number}: unknown vote value(s) {', '.join(repr(b) for b in bad)} "
                    f"(allowed: {', '.join(VOTE_VALUES)})",
                )
            )
        rows.append(VoteRow(*fields[:4], votes=votes))
    if problems:
        _raise(path, problems)
    return rows


def read_confident(path: str | os.PathLike[str]) -> list[tuple[VoteRow, str]]:
    """Rows of a ``PartiPromptsDecisionsConfident.tsv``-layout file: ``(row without votes, label)``."""
    path = Path(path)
    table, problems = _read_table(path, CONFIDENT_HEADER)
    out = []
    for number, fields in table:
        label = fields[4].strip()
        if label not in VOTE_VALUES:
            problems.append((number, f"line {number}: unknown Decision {label!r} (allowed: {', '.join(VOTE_VALUES)})"))
        out.append((VoteRow(*fields[:4]), label))
    if problems:
        _raise(path, problems, CONFIDENT_HEADER)
    return out


def _check_cells(cells: Sequence[str], where: str) -> list[str]:
    return [f"{where}: a cell contains a tab or newline: {c!r}" for c in cells if any(ch in c for ch in "\t\r\n")]


def _write(path: str | os.PathLike[str], header: tuple[str, ...], lines: list[list[str]]) -> Path:
    problems = [p for i, cells in enumerate(lines) for p in _check_cells(cells, f"row {i + 1}")]
    if problems:
        raise InputError(f"cannot write {path}", problems[:MAX_PROBLEMS])
    text = "".join("\t".join(cells) + "\n" for cells in [list(header), *lines])
    return atomic_write_text(path, text)


def write_votes(path: str | os.PathLike[str], rows: Sequence[VoteRow]) -> Path:
    """Write ``rows`` in the released votes layout (atomically); the inverse of :func:`read_votes`."""
    bad = [
        f"row {i + 1}: unknown vote value(s) {[v for v in r.votes if v not in VOTE_VALUES]}"
        for i, r in enumerate(rows)
        if not r.votes or any(v not in VOTE_VALUES for v in r.votes)
    ]
    if bad:
        raise InputError(f"cannot write {path}", bad[:MAX_PROBLEMS])
    return _write(path, VOTES_HEADER, [[*r.text_fields(), ",".join(r.votes)] for r in rows])


def write_confident(path: str | os.PathLike[str], rows: Sequence[VoteRow], labels: Sequence[str]) -> Path:
    """Write the official ``PartiPromptsDecisionsConfident.tsv`` layout: the text columns plus ``Decision``."""
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    bad = [f"row {i + 1}: unknown label {lab!r}" for i, lab in enumerate(labels) if lab not in VOTE_VALUES]
    if bad:
        raise InputError(f"cannot write {path}", bad[:MAX_PROBLEMS])
    return _write(path, CONFIDENT_HEADER, [[*r.text_fields(), lab] for r, lab in zip(rows, labels, strict=True)])
