"""The one way to configure things: YAML files in ``catalogs/`` plus ``--set key=value``.

Recipes and class schemes ship as package data (``cloudbench.catalogs``). A recipe is loaded,
overridden with dotted ``key=value`` pairs (values parsed as YAML), and validated by the pydantic
model of whoever consumes it; every validation problem becomes one ``CloudbenchError`` that names
the field and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cloudbench.errors import CloudbenchError

M = TypeVar("M", bound=BaseModel)


def catalog(*parts: str) -> Traversable:
    """A file or folder of the shipped catalogs, e.g. ``catalog("classes", "hunan_cloud.yaml")``."""
    return resources.files("cloudbench.catalogs").joinpath(*parts)


def load_yaml(*parts: str) -> Any:
    path = catalog(*parts)
    if not path.is_file():
        folder = catalog(*parts[:-1])
        names = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                       if p.name.endswith(".yaml")) if folder.is_dir() else []
        raise CloudbenchError(
            f"no catalog file {'/'.join(parts)}; available: {', '.join(names) or 'none'}"
        )
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class ClassScheme:
    """Scene classes and, where the scheme defines them, the land-cover codes mapping into each."""

    name: str
    task: str
    classes: tuple[str, ...]
    codes: Mapping[int, int]
    """land-cover code -> class index (empty where the label source supplies the mapping)."""

    def lookup_table(self, size: int = 256) -> Any:
        """A numpy array mapping each code < size to its class index, -1 for unmapped codes."""
        import numpy as np

        table = np.full(size, -1, dtype=np.int64)
        for code, index in self.codes.items():
            table[code] = index
        return table


def class_scheme(name: str) -> ClassScheme:
    data = load_yaml("classes", f"{name}.yaml")
    classes = tuple(entry["name"] for entry in data["classes"])
    codes = {
        int(code): index
        for index, entry in enumerate(data["classes"])
        for code in entry.get("codes", ())
    }
    return ClassScheme(data["name"], data["task"], classes, codes)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` -> ``{"a": {"b": 3}, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise CloudbenchError(f"--set expects key=value, got {pair!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CloudbenchError(f"--set {pair!r}: the value is not valid YAML ({err})") from err
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CloudbenchError(
                    f"--set {pair!r}: {part!r} was already set to a value, not a group of settings"
                )
        node[leaf] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` merged into ``base``, recursively; a list in ``base`` takes overrides by
    position (``{"methods": {"1": {"params": …}}}``, from ``--set methods.1.params.x=…``)."""
    out = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge(current, value)
        elif isinstance(value, Mapping) and isinstance(current, list) and value \
                and all(str(k).isdigit() for k in value):
            items = list(current)
            for index, item in value.items():
                i = int(index)
                if i >= len(items):
                    raise CloudbenchError(f"--set {key}.{index}: {key} has {len(items)} "
                                          f"entries, numbered 0 to {len(items) - 1}")
                both = isinstance(item, Mapping) and isinstance(items[i], Mapping)
                items[i] = merge(items[i], item) if both else item
            out[key] = items
        else:
            out[key] = value
    return out


def validate(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """Validate ``data`` with a pydantic model; problems become one readable CloudbenchError."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            field = ".".join(str(p) for p in problem["loc"]) or "(top level)"
            message = problem["msg"]
            if problem["type"] == "extra_forbidden":
                allowed = ", ".join(_fields_at(model, problem["loc"][:-1]))
                message = f"unknown setting; allowed: {allowed}"
            lines.append(f"  {field}: {message}")
        raise CloudbenchError(f"invalid {what}:\n" + "\n".join(lines)) from err


def _fields_at(model: type[BaseModel], path: Sequence[Any]) -> list[str]:
    """The field names of the (nested) model at ``path``."""
    for part in path:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def load_recipe(
    model: type[M], name: str, overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> M:
    """The recipe ``catalogs/recipes/<name>.yaml`` with ``--set`` overrides, validated.

    ``values`` (from command-line options such as paths) are applied last, as they are.
    """
    data = merge(load_yaml("recipes", f"{name}.yaml") or {}, parse_overrides(overrides))
    return validate(model, merge(data, values or {}), f"{name} recipe")
