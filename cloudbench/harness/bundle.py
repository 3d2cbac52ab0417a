"""Results bundles: a leaderboard's output folder in a form others can compare to.

When ``cloudbench leaderboard run`` finishes (and when ``cloudbench leaderboard show --spec``
re-renders), :func:`write_bundle` adds to the output folder ``OUT/``, beside ``results/``,
``runs/`` and the rendered leaderboard:

* ``results.parquet`` and ``results.csv``: the whole results table
  (:func:`cloudbench.harness.results.read_table`), the same rows in both;
* ``spec.yaml``: the spec as run (after ``--set``, ``--datasets`` …), every field resolved; it
  loads with :func:`cloudbench.harness.spec.load_spec`;
* ``bundle.json``: what made them: the cloudbench version, the git revision, the creation time,
  the Python and torch versions (torch's with its build, e.g. ``2.4.1+cu124``), the spec's
  hash (:func:`spec_hash`) and a fingerprint of every dataset and source: the sha256 of its
  store's ``dataset.json`` and the store's path (of the checkpoint file for a source given as
  ``model``; a source no run needed is not built and not listed).

Every file is written under a temporary name and renamed into place, ``bundle.json`` last: a
folder with it is a whole bundle. ``cloudbench leaderboard compare A B`` reads two
(:func:`read_bundle`) and sets them side by side (:func:`compare`, :func:`comparison_markdown`).

A ``dataset.json`` records its build's provenance (creation time included), so equal
fingerprints mean the very same build of a store; a store rebuilt from the same recipe has
another fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from cloudbench.build import git_revision
from cloudbench.errors import CloudbenchError
from cloudbench.harness.results import COLUMNS, read_table
from cloudbench.store import atomic_write_text, config_hash

if TYPE_CHECKING:
    from cloudbench.harness.spec import LeaderboardSpec

FORMAT, VERSION = "cloudbench-results-bundle", 1
BUNDLE_FILE, SPEC_FILE = "bundle.json", "spec.yaml"
RESULTS_PARQUET, RESULTS_CSV = "results.parquet", "results.csv"
FIELDS = ("format", "version", "created", "leaderboard", "spec_hash", "cloudbench",
          "git_revision", "python", "torch", "runs", "rows", "datasets")
"""The fields of ``bundle.json``."""
KEY = ("dataset", "test", "source", "sweep", "method", "kind", "metric", "stratum")
"""What one row of a comparison is about (its statistics are over the seeds)."""
ONLY_A, ONLY_B, BOTH = "only in A", "only in B", "both"


@dataclass(frozen=True)
class Bundle:
    """A results bundle as :func:`read_bundle` reads it."""

    path: Path
    meta: dict[str, Any]
    """``bundle.json``."""
    spec: dict[str, Any]
    """``spec.yaml``, as YAML (not validated: its methods and devices need not exist here)."""
    results: pd.DataFrame
    """``results.parquet``."""


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    write(tmp)
    os.replace(tmp, path)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprints(spec: LeaderboardSpec,
                 stores: Mapping[tuple[str, str, str], Path]) -> list[dict[str, str]]:
    """Per dataset (and sweep value) and source of ``spec``: ``role`` (``dataset`` or
    ``source``), ``name``, ``sweep``, ``path`` and ``sha256`` of its ``file`` (the store's
    ``dataset.json``, or a source's checkpoint ``model``). ``stores`` is
    :func:`~cloudbench.harness.runner.store_roots`'s map; stores not built are left out."""
    roles = {"datasets": "dataset", "sources": "source"}
    found: list[tuple[str, str, str, Path, Path]] = [
        (roles[folder], name, sweep, root, root / "dataset.json")
        for (folder, name, sweep), root in stores.items()]
    found += [("source", name, "", source.model, source.model)
              for name, source in spec.sources.items() if source.model is not None]
    return [{"role": role, "name": name, "sweep": sweep, "path": str(root), "file": file.name,
             "sha256": _sha256(file)}
            for role, name, sweep, root, file in found if file.is_file()]


def _without_paths(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's fields without its datasets' and sources' ``path`` and ``model``."""
    stripped = dict(spec)
    for part in ("datasets", "sources"):
        stripped[part] = {name: {k: v for k, v in entry.items() if k not in ("path", "model")}
                          for name, entry in (spec.get(part) or {}).items()}
    return stripped


def spec_hash(spec: Mapping[str, Any]) -> str:
    """The hash (:func:`cloudbench.store.config_hash`) of a resolved spec (``spec.yaml``'s
    fields) without its stores' and checkpoints' paths: where the data is differs from machine
    to machine; what it is, the fingerprints say."""
    return config_hash(_without_paths(spec))


def write_bundle(out: str | os.PathLike[str], spec: LeaderboardSpec,
                 stores: Mapping[tuple[str, str, str], Path]) -> Path:
    """Write ``OUT``'s bundle (see the module docstring) for the results in it of ``spec``
    (the spec as run), whose stores are ``stores``
    (:func:`~cloudbench.harness.runner.store_roots`); returns ``bundle.json``'s path."""
    import torch  # the writer runs beside training; compare needs no torch

    out = Path(out)
    table = read_table(out)
    resolved = spec.model_dump(mode="json")
    _atomic(out / RESULTS_PARQUET, lambda tmp: table.to_parquet(tmp, index=False))
    _atomic(out / RESULTS_CSV, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(out / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))
    meta = {
        "format": FORMAT, "version": VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "leaderboard": spec.name, "spec_hash": spec_hash(resolved),
        "cloudbench": _version("cloudbench"), "git_revision": git_revision(),
        "python": platform.python_version(), "torch": torch.__version__,
        "runs": int(table["run"].nunique()), "rows": len(table),
        "datasets": fingerprints(spec, stores),
    }
    path = out / BUNDLE_FILE
    atomic_write_text(path, json.dumps(meta, indent=2))
    return path


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """The bundle in folder ``path``.

    Raises:
        CloudbenchError: ``path`` is not a whole bundle (no folder, no or another
            ``bundle.json``, a missing or unreadable results table or spec), one message.
    """
    path = Path(path)
    if not path.is_dir():
        raise CloudbenchError(f"{path}: no such folder (a results bundle is the output folder "
                              "of `cloudbench leaderboard run`)")
    where = path / BUNDLE_FILE
    if not where.is_file():
        raise CloudbenchError(f"{path} is not a results bundle: it has no {BUNDLE_FILE} "
                              "(`cloudbench leaderboard run` writes one into its output folder)")
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise CloudbenchError(f"{where} is not readable JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CloudbenchError(f"{where} is not a cloudbench results bundle (format {FORMAT!r})")
    missing = [f for f in FIELDS if f not in meta]
    if missing:
        raise CloudbenchError(f"{where} lacks the fields {', '.join(missing)}")
    if not isinstance(meta["version"], int) or meta["version"] > VERSION:
        raise CloudbenchError(f"{where} is a bundle of version {meta['version']}; this "
                              f"cloudbench reads version {VERSION}: update it")
    try:
        results = pd.read_parquet(path / RESULTS_PARQUET)
        spec = yaml.safe_load((path / SPEC_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise CloudbenchError(f"{path}: the bundle's {RESULTS_PARQUET} or {SPEC_FILE} is "
                              f"missing or unreadable ({err})") from err
    lacking = [c for c in COLUMNS if c not in results.columns]
    if lacking:
        raise CloudbenchError(f"{path / RESULTS_PARQUET} lacks the columns {', '.join(lacking)}")
    if not isinstance(spec, dict):
        raise CloudbenchError(f"{path / SPEC_FILE} is not a leaderboard spec (a YAML mapping)")
    return Bundle(path, meta, spec, results)


def summary(results: pd.DataFrame, strata: bool = False) -> pd.DataFrame:
    """Per :data:`KEY` (stratum ``all`` only unless ``strata``): ``mean`` and ``std``
    (``ddof=1``, NaN for one seed) over seeds of the per-seed values, and ``seeds``; duplicate
    rows of a seed (a re-run) are averaged first, as the leaderboard does."""
    rows = results if strata else results[results["stratum"] == "all"]
    rows = rows.assign(sweep=rows["sweep"].fillna(""), source=rows["source"].fillna(""))
    per_seed = rows.groupby([*KEY, "seed"], sort=False, dropna=False)["value"].mean()
    grouped = per_seed.groupby(level=list(KEY), sort=False, dropna=False)
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1),
                         "seeds": grouped.size()})


def compare(a: Bundle, b: Bundle, strata: bool = False) -> pd.DataFrame:
    """The rows of :data:`KEY` in either bundle (A's order, then those only in B), with
    ``a_mean, a_std, a_seeds``, the same for B, ``difference`` (B − A of the means; NaN for a row
    in one bundle only) and ``present`` (``both``, ``only in A``, ``only in B``)."""
    mine, theirs = summary(a.results, strata), summary(b.results, strata)
    index = mine.index.append(theirs.index.difference(mine.index, sort=False))
    table = pd.concat([mine.reindex(index).add_prefix("a_"),
                       theirs.reindex(index).add_prefix("b_")], axis=1)
    in_a, in_b = index.isin(mine.index), index.isin(theirs.index)
    table["difference"] = table["b_mean"] - table["a_mean"]
    table["present"] = [BOTH if x and y else ONLY_A if x else ONLY_B
                        for x, y in zip(in_a, in_b, strict=True)]
    for side in ("a", "b"):
        table[f"{side}_seeds"] = table[f"{side}_seeds"].astype("Int64")
    return table.reset_index()


def _differences(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    """The dotted names of the fields where two YAML values differ (lists compared whole)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def dataset_differences(a: Bundle, b: Bundle) -> list[str]:
    """How the datasets of two bundles differ, one phrase each (none: the same datasets)."""
    def by_name(bundle: Bundle) -> dict[str, str]:
        return {f"{d['role']} {d['name']}" + (f" ({d['sweep']})" if d["sweep"] else ""):
                d["sha256"] for d in bundle.meta["datasets"]}

    mine, theirs = by_name(a), by_name(b)
    found = [f"{name} (A {mine[name][:12]}, B {theirs[name][:12]})"
             for name in mine if name in theirs and mine[name] != theirs[name]]
    found += [f"{name} only in A" for name in mine if name not in theirs]
    found += [f"{name} only in B" for name in theirs if name not in mine]
    return found


def _number(value: float, sign: bool = False) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:+.4g}" if sign else f"{value:.4g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _side(mean: float, std: float, seeds: Any) -> str:
    if pd.isna(seeds):
        return "–"
    spread = f" ± {_number(std)}" if not pd.isna(std) else ""
    return f"{_number(mean)}{spread} ({seeds})"


def _devices(bundle: Bundle) -> str:
    return ", ".join(sorted({str(d) for d in bundle.results["device"].dropna()})) or "–"


def comparison_markdown(a: Bundle, b: Bundle, table: pd.DataFrame) -> str:
    """The comparison as Markdown: what made each bundle (the same or not), whether they used
    the same datasets and spec, then ``table`` (:func:`compare`): a row per key, cells
    ``mean ± std (seeds)`` and B − A."""
    same = {True: "same", False: "differs"}
    facts = [("leaderboard", "leaderboard"), ("spec hash", "spec_hash"),
             ("cloudbench", "cloudbench"), ("git revision", "git_revision"),
             ("Python", "python"), ("torch", "torch")]
    lines = ["# Results compared", "", f"A: `{a.path}`; B: `{b.path}`.", "",
             "| | A | B | |", "|---|---|---|---|"]
    for label, field in facts:
        lines.append(f"| {label} | {_cell(a.meta[field])} | {_cell(b.meta[field])} | "
                     f"{same[a.meta[field] == b.meta[field]]} |")
    for label, first, second in (("created", a.meta["created"], b.meta["created"]),
                                 ("runs", a.meta["runs"], b.meta["runs"]),
                                 ("devices", _devices(a), _devices(b))):
        lines.append(f"| {label} | {_cell(first)} | {_cell(second)} | |")
    differ = dataset_differences(a, b)
    lines += ["", (f"Datasets differ: {'; '.join(differ)}." if differ else
                   "Datasets: the same (every dataset.json fingerprint equal).")]
    fields = list(_differences(_without_paths(a.spec), _without_paths(b.spec)))
    lines.append("Spec: " + (f"differs in {', '.join(fields)}." if fields else
                             "the same (paths aside)."))
    shown = [k for k in KEY if k != "kind" and (k != "sweep" or table["sweep"].astype(bool).any())]
    lines += ["", "Cells: mean ± std over seeds (the number of seeds).", "",
              "| " + " | ".join([*shown, "A", "B", "B − A"]) + " |",
              "|" + "---|" * (len(shown) + 3)]
    for row in table.itertuples(index=False):
        diff = row.present if row.present != BOTH else _number(row.difference, sign=True)
        cells = [*(getattr(row, k) for k in shown),
                 _side(row.a_mean, row.a_std, row.a_seeds),
                 _side(row.b_mean, row.b_std, row.b_seeds), diff]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
