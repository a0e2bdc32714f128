"""The original absl-style command line, mapped onto :class:`~hypertransformer.config.Config`.

Every ``Config`` field is a flag of the same name (the original flag names of
``hypertransformer/tf/common_flags.py`` and ``eval_model_flags.py``, including the run flags
``--train_log_dir``, ``--data_dir`` and ``--data_numpy_dir``, plus our additions such as
``--optimizer`` and ``--episodes_per_step``).  Accepted forms, as absl accepts them::

    --flag=value   --flag value   -flag=value          # any flag
    --flag  --noflag  --flag=true  --flag=false        # booleans (also 1/0, yes/no)
    --num_layerwise_features=  --data_dir=None         # None for the optional fields

Values are typed from the dataclass field (``int``, ``float``, ``str``, ``bool``, optional).
A later flag overrides an earlier one (so a script's ``"$@"`` can override its own defaults);
``--`` ends the flags.  An unknown flag or a positional argument is an error that names it
and suggests close flag names.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from hypertransformer.config import Config, field_names

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def _field_types() -> dict[str, tuple[type, bool]]:
    """``name -> (base type, optional)`` for every Config field."""
    hints = typing.get_type_hints(Config)
    out: dict[str, tuple[type, bool]] = {}
    for f in dataclasses.fields(Config):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
            (base,) = [a for a in args if a is not type(None)]
            out[f.name] = (base, True)
        else:
            out[f.name] = (hint, False)
    return out


_TYPES = _field_types()


def _unknown(name: str, shown: str) -> ValueError:
    close = difflib.get_close_matches(name, field_names(), n=3, cutoff=0.6)
    prefix = "--" if shown.startswith("-") else ""
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return ValueError(f"unknown {'flag' if prefix else 'config field'} {shown!r}{hint}")


def parse_value(name: str, text: str) -> Any:
    """``text`` converted to the type of the Config field ``name``."""
    if name not in _TYPES:
        raise _unknown(name, name)
    base, optional = _TYPES[name]
    if optional and text in ("", "None", "none"):
        return None
    try:
        if base is bool:
            low = text.lower()
            if low not in _TRUE | _FALSE:
                raise ValueError
            return low in _TRUE
        return base(text)
    except ValueError:
        raise ValueError(f"{name} expects {'a ' if optional else ''}{base.__name__}"
                         f"{' or None' if optional else ''}; got {text!r}") from None


def apply_overrides(config: Config, assignments: list[str]) -> Config:
    """``config`` with ``["field=value", ...]`` applied (``--set`` of the CLI)."""
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"expected field=value; got {item!r}")
        values[name.strip()] = parse_value(name.strip(), text)
    return config.replace(**values)


def parse_flags(argv: list[str], base: Config | None = None) -> Config:
    """The Config of the absl-style ``argv`` (module docstring) over ``base`` (default:
    ``Config()``, the original flag defaults)."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise ValueError(f"unexpected positional argument(s): {argv[i:]}")
            break
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ValueError(f"unexpected positional argument {arg!r}; flags are --name=value")
        name, sep, text = arg.lstrip("-").partition("=")
        if name not in _TYPES:
            if not sep and name.startswith("no") and name[2:] in _TYPES:
                if _TYPES[name[2:]][0] is not bool:
                    raise ValueError(f"{arg}: --{name[2:]} is not a boolean flag")
                values[name[2:]] = False
                continue
            raise _unknown(name, arg.split("=")[0])
        if not sep:
            if _TYPES[name][0] is bool:
                values[name] = True
                continue
            if i >= len(argv):
                raise ValueError(f"flag --{name} needs a value")
            text = argv[i]
            i += 1
        values[name] = parse_value(name, text)
    return (base or Config()).replace(**values)
