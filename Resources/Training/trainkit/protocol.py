"""A training protocol as a frozen dataclass: the paper's value and ours for every setting,
written once, each one a command-line option, the whole recorded in the model card with
whose value each setting is.

    @dataclass(frozen=True)
    class Protocol:
        preset: str = preset_field()
        batch_size: int = option(16, "slices per step", source="authors' code: train.py",
                                 ours=8, why="half the memory of a step on a CPU")

    add_protocol_arguments(parser, Protocol)          # --protocol paper|ours, --batch-size N
    protocol = protocol_from_arguments(Protocol, parser.parse_args())
    card["training"]["protocol"] = protocol_record(protocol)

A field's default is the paper's value (`Protocol()` is the paper's protocol). `--protocol ours`
starts from our values instead; an option given on the command line wins over either preset.
`source` says where the paper gives its value (the article, or a file of the authors' code);
a setting the paper does not speak about says so, and has our value in both presets.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional, Sequence, TypeVar

P = TypeVar("P")

PRESETS = ("paper", "ours")
#: `source` of a setting the papers do not speak about: both presets use our value.
NOT_IN_THE_PAPER = "not in the paper"

_PARSERS = {"float": float, "int": int, "str": str}
_SAME = object()


def option(default: Any, help: str, flags: Optional[Sequence[str]] = None,
           choices: Optional[Sequence[Any]] = None, *, source: str = NOT_IN_THE_PAPER, ours: Any = _SAME,
           why: str = "", nargs: Optional[str] = None, metavar: Optional[str] = None) -> Any:
    """A protocol field: the paper's value (`default`), the help text of its option, optionally
    its flags (default: `--field-name`) and the values allowed; where the paper's value comes
    from (`source`), and our value with the reason when it differs (`ours`, `why`). `nargs` and
    `metavar` go to argparse (with nargs the parsed value is a list: the protocol's own parser
    turns it into the field's value)."""
    ours = default if ours is _SAME else ours
    if ours != default and not why:
        raise ValueError("a setting whose value differs between the presets needs the reason (why=...)")
    return dataclasses.field(default=default, metadata={
        "help": help, "flags": tuple(flags or ()), "choices": choices, "source": source, "ours": ours, "why": why,
        "nargs": nargs, "metavar": metavar})


def preset_field() -> Any:
    """The `preset` field of a protocol: which preset its values started from (--protocol)."""
    return dataclasses.field(default="paper", metadata={"preset": True})


def _settings(protocol_class: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(protocol_class) if not f.metadata.get("preset")]


def _flags(field: dataclasses.Field) -> tuple[str, ...]:
    return field.metadata.get("flags") or ("--" + field.name.replace("_", "-"),)


def preset_values(protocol_class: type, preset: str) -> dict:
    """{field: value} of `preset` ('paper' or 'ours')."""
    if preset not in PRESETS:
        raise ValueError(f"unknown protocol preset '{preset}'; choose {' or '.join(PRESETS)}")
    return {f.name: f.default if preset == "paper" else f.metadata.get("ours", f.default)
            for f in _settings(protocol_class)}


def protocol_preset(protocol_class: type[P], preset: str, **changes: Any) -> P:
    """The protocol of `preset` with `changes`."""
    values = {**preset_values(protocol_class, preset), **changes}
    if any(f.metadata.get("preset") for f in dataclasses.fields(protocol_class)):
        values["preset"] = preset
    return protocol_class(**values)


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_protocol_arguments(parser: argparse.ArgumentParser, protocol_class: type,
                           title: str = "protocol") -> None:
    """--protocol paper|ours, and one option per setting of `protocol_class` (bool settings
    become --x / --no-x switches). An option left out takes the preset's value."""
    group = parser.add_argument_group(title, "defaults: the paper's values (--protocol paper), or ours "
                                             "(--protocol ours); an option given here wins over either")
    if any(f.metadata.get("preset") for f in dataclasses.fields(protocol_class)):
        group.add_argument("--protocol", choices=PRESETS, default="paper",
                           help="start every setting from the paper's value (default) or from ours")
    hints = typing.get_type_hints(protocol_class)
    for field in _settings(protocol_class):
        ours = field.metadata.get("ours", field.default)
        defaults = (f"paper and ours: {_shown(field.default)}" if ours == field.default else
                    f"paper: {_shown(field.default)}; ours: {_shown(ours)}")
        help_text = f"{field.metadata.get('help', '')} ({defaults})"
        if hints[field.name] is bool:
            group.add_argument(*_flags(field), dest=field.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
            continue
        parse = _PARSERS[getattr(hints[field.name], "__name__", str(hints[field.name]))]
        shape = {key: field.metadata[key] for key in ("nargs", "metavar") if field.metadata.get(key)}
        group.add_argument(*_flags(field), dest=field.name, type=parse, default=None,
                           choices=field.metadata.get("choices"), help=help_text, **shape)


def protocol_from_arguments(protocol_class: type[P], arguments: argparse.Namespace) -> P:
    """The protocol of the --protocol preset, with the values given on the command line."""
    preset = getattr(arguments, "protocol", None) or "paper"
    given = {f.name: getattr(arguments, f.name) for f in _settings(protocol_class)
             if getattr(arguments, f.name, None) is not None}
    return protocol_preset(protocol_class, preset, **given)


def origin(protocol: Any, name: str) -> str:
    """Whose value setting `name` of `protocol` has: 'paper (<source>)', 'ours (<why>)',
    'paper and ours (<source>)', or 'command line' (neither preset's value)."""
    field = next(f for f in _settings(type(protocol)) if f.name == name)
    value, paper, ours = getattr(protocol, name), field.default, field.metadata.get("ours", field.default)
    source = field.metadata.get("source", NOT_IN_THE_PAPER)
    if value == paper and value == ours:
        return f"paper and ours ({source})" if source != NOT_IN_THE_PAPER else f"ours ({NOT_IN_THE_PAPER})"
    if value == paper:
        return f"paper ({source})"
    if value == ours:
        return f"ours ({field.metadata.get('why')})"
    return "command line"


def protocol_record(protocol: Any) -> dict:
    """The protocol for the model card: the class's fixed choices (a `FIXED` dict of things
    that are not options, e.g. the optimiser's name), every setting, the preset, and whose
    value each setting has (`origins`)."""
    values = dataclasses.asdict(protocol)
    record = {**getattr(protocol, "FIXED", {}), **values}
    if "preset" in values:
        record["origins"] = {f.name: origin(protocol, f.name) for f in _settings(type(protocol))}
    return record


def protocol_table(protocol_class: type) -> list[dict]:
    """One row per setting: option, paper's value, its source, our value, why (PROTOCOLS.md)."""
    return [{"setting": f.name, "option": _flags(f)[0], "paper": f.default,
             "source": f.metadata.get("source", NOT_IN_THE_PAPER), "ours": f.metadata.get("ours", f.default),
             "why": f.metadata.get("why", "")} for f in _settings(protocol_class)]


def changed_fields(recorded: dict, current: dict, ignore: Sequence[str] = ()) -> list[str]:
    """'name: recorded -> current' for each field that differs (fields in `ignore` skipped)."""
    names = sorted(set(recorded) | set(current))
    return [f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}" for name in names
            if name not in ignore and recorded.get(name) != current.get(name)]


def protocol_markdown_rows(protocol_class: type) -> list[str]:
    """The rows of PROTOCOLS.md's settings table: | setting | option | paper | source | ours | why |
    ('same' where ours is the paper's value)."""
    rows = []
    for row in protocol_table(protocol_class):
        ours = "same" if row["ours"] == row["paper"] else _shown(row["ours"])
        rows.append(f"| {row['setting'].replace('_', ' ')} | `{row['option']}` | {_shown(row['paper'])} | "
                    f"{row['source']} | {ours} | {row['why']} |")
    return rows
