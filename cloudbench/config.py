"""The one way to configure things: YAML files in ``catalogs/`` plus ``--set key=value``.

Recipes and class schemes ship as package data (``cloudbench.catalogs``). A recipe is loaded,
overridden with dotted ``key=value`` pairs (values parsed as YAML), and validated by the pydantic
model of whoever consumes it; every validation problem becomes one ``CloudbenchError`` that names
the field and what is allowed.

Where a recipe or a class scheme is asked for, a user's own YAML file does as well as a shipped
name (``is_file_ref``): an argument that ends in ``.yaml``/``.yml`` or names an existing file is
read from that path (relative to the working directory); anything else is a shipped name. A
recipe file names the shipped recipe whose builder it runs with ``builder: <name>``
(``recipe_builder``). See docs/classes.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


YAML_SUFFIXES = (".yaml", ".yml")


def is_file_ref(ref: str | Path) -> bool:
    """Whether a recipe or class-scheme argument is a file (read from that path, relative to the
    working directory) rather than a shipped name: it ends in .yaml/.yml or names an existing
    file."""
    path = Path(ref)
    return path.suffix.lower() in YAML_SUFFIXES or path.is_file()


def read_yaml_file(path: str | Path, what: str) -> tuple[Any, bytes]:
    """(parsed YAML, the file's bytes) of a user's ``what`` file; one CloudbenchError naming the
    path when it is missing, unreadable or not YAML."""
    given, path = str(path), Path(path)
    shown = given if path.is_absolute() else f"{given} (from {Path.cwd()})"
    if not path.is_file():
        raise CloudbenchError(f"no {what} file at {shown}")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CloudbenchError(f"cannot read {what} file {shown}: {err}") from err
    try:
        return yaml.safe_load(text), raw
    except yaml.YAMLError as err:
        raise CloudbenchError(f"{what} file {shown} is not valid YAML: {err}") from err


@dataclass(frozen=True)
class ClassScheme:
    """Scene classes and, where the scheme defines them, the land-cover codes mapping into each."""

    name: str
    task: str
    classes: tuple[str, ...]
    codes: Mapping[int, int]
    """land-cover code -> class index (empty where the label source supplies the mapping)."""
    nodata: frozenset[int] = frozenset()
    """raw codes that are never a class: no data in the label product (e.g. CORINE's 48, 128)."""
    source: str | None = None
    """the absolute path of a scheme read from a user's file; None for a shipped scheme."""
    sha256: str | None = None
    """the SHA-256 of that file's bytes (None for a shipped scheme)."""

    @property
    def identity(self) -> str:
        """What a store's metadata records as ``class_scheme``: a shipped scheme's name, or for a
        user's file ``<name> (<absolute path>, sha256 <first 16 hex digits>)``."""
        if self.source is None:
            return self.name
        return f"{self.name} ({self.source}, sha256 {(self.sha256 or '')[:16]})"

    def with_codes(self, codes: Mapping[int, int]) -> ClassScheme:
        """The same scheme with its code mapping replaced (a recipe's ``label_codes``)."""
        return replace(self, codes=dict(codes))

    def lookup_table(self, size: int = 256) -> Any:
        """A numpy array mapping each code < size to its class index, -1 for unmapped codes
        (and for ``nodata`` codes, which no class has); codes >= size are left out."""
        import numpy as np

        table = np.full(size, -1, dtype=np.int64)
        for code, index in self.codes.items():
            if code < size:
                table[code] = index
        return table

    def nodata_mask(self, codes: Any) -> Any:
        """A boolean array: True where ``codes`` holds one of the scheme's ``nodata`` codes."""
        import numpy as np

        return np.isin(codes, np.fromiter(self.nodata, dtype=np.int64, count=len(self.nodata)))


class _SchemeClass(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    codes: list[int] = Field(default_factory=list, description="raw codes mapping to this class")
    clc: list[str] = Field(default_factory=list,
                           description="CORINE level-3 labels in this class (BigEarthNet)")


class _SchemeFile(BaseModel):
    """A class-scheme file (catalogs/classes/*.yaml, or a user's own)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    task: Literal["multiclass", "multilabel"]
    classes: list[_SchemeClass] = Field(min_length=1)
    nodata: list[int] = Field(default_factory=list,
                              description="raw codes that are never a class (no data)")


def _shipped(folder: str, name: str) -> Any:
    """A shipped catalog file by name; the error for an unknown name also says how to give a
    file of one's own."""
    try:
        return load_yaml(folder, f"{name}.yaml")
    except CloudbenchError as err:
        raise CloudbenchError(f"{err} (or give the path of your own .yaml file)") from err


def class_scheme(ref: str | Path) -> ClassScheme:
    """A class scheme: a shipped name (``catalogs/classes/<name>.yaml``) or the path of a YAML
    file in the same format (``is_file_ref``)."""
    source = digest = None
    where = f"class scheme {ref}"
    if is_file_ref(ref):
        data, raw = read_yaml_file(ref, "class scheme")
        source = str(Path(ref).resolve())
        digest = hashlib.sha256(raw).hexdigest()
    else:
        data = _shipped("classes", str(ref))
    if not isinstance(data, Mapping):
        raise CloudbenchError(f"{where}: a class scheme is a YAML mapping (name, task, classes)")
    scheme = validate(_SchemeFile, data, where)
    names = [entry.name for entry in scheme.classes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CloudbenchError(f"{where}: class names given more than once: {', '.join(twice)}")
    codes: dict[int, int] = {}
    for index, entry in enumerate(scheme.classes):
        for code in entry.codes:
            if code < 0:
                raise CloudbenchError(f"{where}: class {entry.name!r} has a negative code {code}")
            if code in codes and codes[code] != index:
                raise CloudbenchError(f"{where}: code {code} is given to both "
                                      f"{names[codes[code]]!r} and {entry.name!r}")
            codes[code] = index
    both = sorted(set(scheme.nodata) & set(codes))
    if both:
        raise CloudbenchError(f"{where}: codes {both} are both a class's and no data (nodata)")
    return ClassScheme(scheme.name, scheme.task, tuple(names), codes,
                       frozenset(scheme.nodata), source, digest)


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


def _recipe_data(ref: str | Path) -> tuple[dict[str, Any], str]:
    """(settings, description) of a shipped recipe name or a recipe file, ``builder`` left out."""
    if is_file_ref(ref):
        data, _ = read_yaml_file(ref, "recipe")
        where = f"recipe {ref}"
    else:
        data = _shipped("recipes", str(ref))
        where = f"{ref} recipe"
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise CloudbenchError(f"{where}: a recipe is a YAML mapping of settings")
    return {k: v for k, v in data.items() if k != "builder"}, where


def recipe_builder(ref: str | Path) -> str:
    """The builder (a name in ``cloudbench.builders.BUILDERS``, which is also the shipped recipe
    and ``cloudbench build`` command it goes with) that runs recipe ``ref``: a shipped recipe's
    own name, or a recipe file's ``builder:`` key."""
    from cloudbench.builders import BUILDERS

    if not is_file_ref(ref):
        return str(ref)
    data, _ = read_yaml_file(ref, "recipe")
    builder = data.get("builder") if isinstance(data, Mapping) else None
    if builder is None:
        raise CloudbenchError(f"recipe {ref} does not say which builder runs it: add "
                              f"'builder: <name>' (one of {', '.join(BUILDERS)})")
    if builder not in BUILDERS:
        raise CloudbenchError(f"recipe {ref}: unknown builder {builder!r}; available: "
                              f"{', '.join(BUILDERS)}")
    return str(builder)


def load_recipe(
    model: type[M], name: str | Path, overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> M:
    """The recipe ``catalogs/recipes/<name>.yaml`` (or the recipe file at path ``name``) with
    ``--set`` overrides, validated. A file's ``builder`` key is not a setting (``recipe_builder``).

    ``values`` (from command-line options such as paths) are applied last, as they are.
    """
    base, where = _recipe_data(name)
    data = merge(base, parse_overrides(overrides))
    return validate(model, merge(data, values or {}), where)
