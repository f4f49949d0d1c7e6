"""The sweep YAML: reading and checking it, ``--set`` overrides, and the plan's :class:`Run`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
    """A sweep YAML that cannot run; the message names the file and the key."""


@dataclass
class Run:
    """One run of the plan: its position, folder name and full parameter set."""

    index: int
    key: str
    params: dict[str, Any]


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Read and check a sweep YAML; ``overrides`` become constant parameters (``--set``)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SweepError(f"{path}: cannot read the sweep YAML: {error}") from error
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep YAML is a mapping (method, metric, parameters, command)")
    config.setdefault("name", path.stem)
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: 'parameters' must be a non-empty mapping of dotted CLI keys")
    for key, value in (overrides or {}).items():
        parameters[key] = {"value": value}
    for name, spec in parameters.items():
        check_parameter(path, name, spec)
    command = config.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(item, str | int | float) for item in command):
        raise SweepError(f"{path}: 'command' must be a list of strings (W&B macros like ${{args}} included)")
    return config


def check_parameter(path: Path, name: str, spec: Any) -> None:
    """The pitfalls that W&B would pass through silently, caught before any run starts."""
    where = f"{path}: parameters.{name}"
    if not PARAMETER_NAME.match(str(name)):
        raise SweepError(f"{where}: not a valid parameter name (letters, digits, '_', '.', '-')")
    if any(part.isdigit() for part in str(name).split(".")) or "[" in str(name):
        raise SweepError(f"{where}: a sweep cannot override one list element by index; use named dicts")
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: expected a mapping such as {{value: x}} or {{values: [x, y]}}")
    if "parameters" in spec:
        raise SweepError(f"{where}: nested parameters are not supported; use dotted keys")
    values = [spec["value"]] if "value" in spec else spec.get("values")
    if values is not None:
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: 'values' must be a non-empty list")
        if any(value is None for value in values):
            raise SweepError(f'{where}: write "null" (a string), not a bare null: W&B would pass None')
    elif "min" not in spec and "distribution" not in spec:
        raise SweepError(f"{where}: needs 'value', 'values' or a distribution with min/max")


def is_swept(spec: dict) -> bool:
    """Whether a parameter takes more than one value."""
    if "value" in spec:
        return False
    return "values" not in spec or len(spec["values"]) > 1


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["trainer.max_steps=2"]`` -> ``{"trainer.max_steps": 2}`` (values read as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value) if value else ""
    return overrides
