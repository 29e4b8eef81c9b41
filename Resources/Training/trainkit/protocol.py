"""A training protocol as a frozen dataclass: defaults written once, each one a command-line
option, the whole recorded in the model card.

    @dataclass(frozen=True)
    class Protocol:
        learning_rate: float = option(5e-4, "NAdam learning rate", flags=("--learning-rate", "--lr"))

    add_protocol_arguments(parser, Protocol)
    protocol = protocol_from_arguments(Protocol, parser.parse_args())
    card["training"]["protocol"] = protocol_record(protocol)
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional, Sequence, TypeVar

P = TypeVar("P")

_PARSERS = {"float": float, "int": int, "str": str}


def option(default: Any, help: str, flags: Optional[Sequence[str]] = None,
           choices: Optional[Sequence[Any]] = None) -> Any:
    """A protocol field: its default, the help text of its option, and optionally its flags
    (default: `--field-name`) and the values allowed."""
    return dataclasses.field(default=default, metadata={"help": help, "flags": tuple(flags or ()),
                                                        "choices": choices})


def _flags(field: dataclasses.Field) -> tuple[str, ...]:
    return field.metadata.get("flags") or ("--" + field.name.replace("_", "-"),)


def add_protocol_arguments(parser: argparse.ArgumentParser, protocol_class: type,
                           title: str = "protocol (defaults: the paper's)") -> None:
    """One option per field of `protocol_class`; bool fields become --x / --no-x switches."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(protocol_class)
    for field in dataclasses.fields(protocol_class):
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})"
        if hints[field.name] is bool:
            group.add_argument(*_flags(field), dest=field.name, default=field.default,
                               action=argparse.BooleanOptionalAction, help=help_text)
            continue
        parse = _PARSERS[getattr(hints[field.name], "__name__", str(hints[field.name]))]
        group.add_argument(*_flags(field), dest=field.name, type=parse, default=field.default,
                           choices=field.metadata.get("choices"), help=help_text)


def protocol_from_arguments(protocol_class: type[P], arguments: argparse.Namespace) -> P:
    """The protocol with the values given on the command line (defaults otherwise)."""
    values = {field.name: getattr(arguments, field.name) for field in dataclasses.fields(protocol_class)}
    return protocol_class(**values)


def protocol_record(protocol: Any) -> dict:
    """The protocol for the model card: every field, plus the class's fixed choices
    (a `FIXED` dict of things that are not options, e.g. the optimiser's name)."""
    return {**getattr(protocol, "FIXED", {}), **dataclasses.asdict(protocol)}


def changed_fields(recorded: dict, current: dict, ignore: Sequence[str] = ()) -> list[str]:
    """'name: recorded -> current' for each field that differs (fields in `ignore` skipped)."""
    names = sorted(set(recorded) | set(current))
    return [f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}" for name in names
            if name not in ignore and recorded.get(name) != current.get(name)]
