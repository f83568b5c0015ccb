"""From YAML (a file or a built-in preset) and ``key=value`` overrides to a typed :class:`Config`:
every key checked against the dataclass fields, unknown keys and wrong types refused."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from marft.config.sections import Config, ConfigError, _check

# --------------------------------------------------------------------------------------- conversion


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        _check(value in typing.get_args(tp), path, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            _check(type(None) in args, path, f"must be {_type_name(tp)}, got null")
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        _check(isinstance(value, list), path, f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        _check(isinstance(value, dict), path, f"must be a mapping, got {value!r}")
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: _convert(item, v, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        _check(isinstance(value, bool), path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool), path, f"must be an integer, got {value!r}"
        )
        return value
    if tp is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e-3" as a string
                value = float(value)
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            path,
            f"must be a number, got {value!r}",
        )
        return float(value)
    if tp is str:
        _check(isinstance(value, str), path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types.

    Raises:
        ConfigError: naming the dotted key and what is allowed.
    """
    _check(isinstance(data, dict), path, f"must be a mapping with keys of {cls.__name__}, got {data!r}")
    fields = {config_key(f): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(_join(path, key), f"unknown key{hint}; allowed keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {fields[k].name: _convert(hints[fields[k].name], v, _join(path, k)) for k, v in data.items()}
    for name, f in fields.items():
        if (
            f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(_join(path, name), "is required")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(_join(path, e.key), e.message) from None


def config_key(f: dataclasses.Field) -> str:
    """The key a config field has in YAML: its name, or ``metadata["key"]`` where the name could
    not be a Python identifier (``run.ray.async``, field ``async_``)."""
    return f.metadata.get("key", f.name)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config (what is written to ``config.yaml``), keyed as in YAML."""
    out = dataclasses.asdict(cfg)
    _rename_keys(cfg, out)
    return out


def _rename_keys(cfg: Any, data: dict[str, Any]) -> None:
    """Rename, in place, the fields of ``data`` (``asdict(cfg)``) whose YAML key differs."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _rename_keys(value, data[f.name])
        elif isinstance(value, (list, dict)):
            items = value.values() if isinstance(value, dict) else value
            plains = data[f.name].values() if isinstance(value, dict) else data[f.name]
            for item, plain in zip(items, plains, strict=True):
                if dataclasses.is_dataclass(item) and not isinstance(item, type):
                    _rename_keys(item, plain)
        key = config_key(f)
        if key != f.name:
            data[key] = data.pop(f.name)


# ----------------------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """Names of the YAML presets shipped inside the package."""
    return sorted(p.name[:-5] for p in resources.files("marft.presets").iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError("", f"config file {str(path)!r} does not exist")
        text = path.read_text()
    elif str(source) in preset_names():
        text = resources.files("marft.presets").joinpath(f"{source}.yaml").read_text()
    else:
        raise ConfigError(
            "", f"{str(source)!r} is neither a YAML file nor a preset; presets: {', '.join(preset_names())}"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source} is not valid YAML: {e}") from None
    if data is None:
        return {}
    _check(isinstance(data, dict), "", f"{source} must hold a mapping at the top level")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML.

    List items are addressed by index: ``team.agents.1.trainable=false``.
    """
    if "=" not in override:
        raise ConfigError(override, "an override must look like dotted.key=value")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            _check(part.isdigit() and int(part) < len(node), where, f"no list item {part}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        _check(isinstance(node, (dict, list)), where, "is not a section, so it has no sub-keys")
    last = parts[-1]
    if isinstance(node, list):
        _check(last.isdigit() and int(last) < len(node), key, f"no list item {last}")
        node[int(last)] = value
    else:
        node[last] = value


def parse_config(source: str | Path | None = "demo", overrides: list[str] | None = None) -> Config:
    """Read a YAML file or preset, apply ``key=value`` overrides and check every section's types
    and ranges.

    Checks that need the registries (the algorithm and env names, the env's own arguments, the
    team graph) are :func:`marft.compose.validate`; :func:`marft.compose.load_config` does both.

    Raises:
        ConfigError: on the first problem, naming the key.
    """
    data = _read_source(source if source is not None else "demo")
    for ov in overrides or []:
        apply_override(data, ov)
    return from_dict(Config, data)
