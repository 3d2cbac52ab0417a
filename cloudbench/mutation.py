"""Mutation testing of the modules results depend on: a benchmark of the test suite, not of the
package, and not part of CI (too slow for it). ``cloudbench perf mutation`` (docs/testing.md).

A mutant is the code with one small change (``<`` for ``<=``, ``+`` for ``-``, a constant or a
string changed, an argument dropped); a mutant is *killed* when some test fails on it. Mutants
that survive are bugs the tests would not notice, or changes that make no difference
(equivalent mutants). The tool is mutmut 3 (in the ``dev`` extra).

mutmut derives a mutant's module from its file's path and runs the tests from a copy of the
sources. In this repository ``methods/esccs.py`` is imported as ``cloudbench.methods.esccs``
(the package-dir mapping of pyproject.toml), so each module is run from a *stage*: a copy of the
repository in the installed package's layout (``cloudbench/methods/esccs.py``) with its tests,
one stage per module under the work folder. mutmut keeps its results in the stage, so a re-run
tests only the mutants of functions that changed; ``--fresh`` starts over.

Which modules and tests: ``catalogs/mutation.yaml`` (a module, the test files that should catch
its bugs, optionally the functions to mutate, the target share killed). A module outside it can
be given with its tests (``--tests``): a method author checks their own file that way.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cloudbench.config import load_yaml, validate
from cloudbench.errors import CloudbenchError

MAPPED = {"builders": "builders", "baselines": "baselines", "methods": "methods",
          "catalogs": "catalogs"}
"""Repository folders installed inside the cloudbench package (pyproject's package-dir)."""

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          37: "caught by type check", -9: "crashed", -11: "crashed", None: "not checked"}
"""mutmut's exit codes of a mutant's test run (mutmut/stats.py), as words; others: suspicious."""

CAUGHT = {"killed", "timeout", "crashed", "caught by type check"}
"""What counts as killed: a test failed, hung or crashed (mutmut counts timeouts as kills)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModuleScope(_Strict):
    tests: list[str] = Field(min_length=1)
    functions: list[str] | None = Field(None, min_length=1)
    target: float = Field(0.9, ge=0, le=1)


class Scope(_Strict):
    modules: dict[str, ModuleScope] = Field(min_length=1)


def load_scope() -> Scope:
    """The shipped scope, ``catalogs/mutation.yaml``."""
    return validate(Scope, load_yaml("mutation.yaml"), "catalogs/mutation.yaml")


@dataclass
class Mutant:
    key: str
    """mutmut's name of the mutant, e.g. ``cloudbench.metrics.x_kappa__mutmut_3``."""
    function: str
    """The mutated function, ``name`` or ``Class.method``."""
    status: str
    diff: str = ""


@dataclass
class ModuleResult:
    module: str
    target: float
    mutants: list[Mutant]
    seconds: float
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {}
        for m in self.mutants:
            self.counts[m.status] = self.counts.get(m.status, 0) + 1

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.counts.items() if status in CAUGHT)

    @property
    def score(self) -> float:
        """Killed over all mutants: a mutant no test runs counts as not killed."""
        return self.killed / len(self.mutants) if self.mutants else float("nan")

    @property
    def survivors(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status not in CAUGHT]


def module_name(path: str) -> str:
    """The import name of a repository file: ``methods/esccs.py`` -> cloudbench.methods.esccs."""
    return ".".join(staged_path(path).with_suffix("").parts)


def staged_path(path: str) -> Path:
    """Where a repository file sits in the installed layout (and in a stage)."""
    parts = Path(path).parts
    if Path(path).suffix != ".py" or not parts or Path(path).is_absolute():
        raise CloudbenchError(f"mutation: {path} is not a Python file of the repository "
                              "(give it as in the repository, e.g. methods/esccs.py)")
    if parts[0] == "cloudbench":
        return Path(path)
    if parts[0] in MAPPED:
        return Path("cloudbench", MAPPED[parts[0]], *parts[1:])
    raise CloudbenchError(f"mutation: {path} is outside the package (cloudbench/, "
                          f"{'/, '.join(MAPPED)}/)")


def _mangled(function: str) -> str:
    """mutmut's name of a function in its mutant keys: ``x_name``, ``xǁClassǁmethod``."""
    if "." in function:
        cls, method = function.split(".", 1)
        return f"xǁ{cls}ǁ{method}"
    return f"x_{function}"


def _function(key: str, module: str) -> str:
    mangled = key.removeprefix(module + ".").rsplit("__mutmut_", 1)[0]
    if mangled.startswith("xǁ"):
        return ".".join(mangled[2:].split("ǁ"))
    return mangled.removeprefix("x_")


def patterns(path: str, functions: Sequence[str] | None) -> list[str]:
    """The mutant-name patterns ``mutmut run`` takes for the chosen functions (none: all)."""
    if not functions:
        return []
    module = module_name(path)
    return [f"{module}.{_mangled(f)}__mutmut_*" for f in functions]


def _copy(source: Path, target: Path) -> None:
    """Mirror ``source`` into ``target``; copy2 keeps the times, by which mutmut tells an
    unchanged file from a changed one."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache"))


def stage(repo: Path, root: Path, module: str, scope: ModuleScope) -> Path:
    """A copy of ``repo`` in the installed layout under ``root`` with mutmut's configuration for
    ``module``: the sources (the mapped folders inside cloudbench/), the tests, the repository's
    pyproject.toml with a ``[tool.mutmut]`` table appended, ../shared linked when present."""
    root.mkdir(parents=True, exist_ok=True)
    _copy(repo / "cloudbench", root / "cloudbench.new")
    for folder, inside in MAPPED.items():
        if (repo / folder).is_dir():
            _copy(repo / folder, root / "cloudbench.new" / inside)
    if (root / "cloudbench").exists():
        shutil.rmtree(root / "cloudbench")
    (root / "cloudbench.new").rename(root / "cloudbench")
    _copy(repo / "tests", root / "tests")
    shared = repo.resolve().parent / "shared"
    # mutmut runs the tests from <stage>/mutants, and they look for ../shared beside it
    link = root / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    text = (repo / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise CloudbenchError("mutation: pyproject.toml has its own [tool.mutmut]; the scope "
                              "comes from catalogs/mutation.yaml")
    # mutmut copies the package into mutants/ once and keeps the copy: remove all but the
    # mutated file and mutmut's records of it, so the rest is copied afresh, as it is now
    target = staged_path(module).as_posix()
    copied = root / "mutants" / "cloudbench"
    if copied.is_dir():
        for path in [p for p in copied.rglob("*") if p.is_file()]:
            if not path.relative_to(root / "mutants").as_posix().startswith(target):
                path.unlink()
    settings = {
        # the whole package is copied (it is what the tests import), one file mutated
        "source_paths": ["cloudbench"],
        "only_mutate": [target],
        "pytest_add_cli_args_test_selection": scope.tests,
        "pytest_add_cli_args": ["-q", "-p", "no:cacheprovider"],
        # torch is not fork-safe once it has run: fork each mutant from a clean server
        "process_isolation": "forkserver",
        # a changed test invalidates the results it could have changed
        "on_dependency_change": "rerun",
    }
    lines = ["", "[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    (root / "pyproject.toml").write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return root


def _stage_dir(workdir: Path, module: str) -> Path:
    return workdir / re.sub(r"[^A-Za-z0-9]+", "-", module.removesuffix(".py"))


def _mutmut(stage_dir: Path, args: list[str], log: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        return subprocess.run(command, cwd=stage_dir, capture_output=True, text=True, env=env)
    with log.open("w") as out:
        return subprocess.run(command, cwd=stage_dir, stdout=out, stderr=subprocess.STDOUT,
                              text=True, env=env)


def read_results(stage_dir: Path, module: str, functions: Sequence[str] | None) -> list[Mutant]:
    """The mutants of ``module`` in a stage and their status (from mutmut's .meta file)."""
    meta = stage_dir / "mutants" / (staged_path(module).as_posix() + ".meta")
    if not meta.is_file():
        raise CloudbenchError(f"mutation: mutmut wrote no results for {module} "
                              f"(see {stage_dir / 'mutmut.log'})")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    name = module_name(module)
    chosen = patterns(module, functions)
    return [Mutant(key, _function(key, name), STATUS.get(code, "suspicious"))
            for key, code in sorted(codes.items(), key=lambda kv: _order(kv[0]))
            if not chosen or any(fnmatch.fnmatchcase(key, p) for p in chosen)]


def _order(key: str) -> tuple[str, int]:
    stem, _, number = key.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def run_module(repo: Path, workdir: Path, module: str, scope: ModuleScope, *,
               max_children: int, fresh: bool = False, survivors_only: bool = False,
               echo: Callable[[str], None] = print) -> ModuleResult:
    """Stage ``module``, run mutmut on it (the chosen functions only) and read the results, each
    survivor with its diff. ``survivors_only``: test again only the mutants that survived the
    last run (after adding tests: new tests cannot revive a killed mutant, and mutmut keeps a
    verdict unless its function changed)."""
    if importlib.util.find_spec("mutmut") is None:
        raise CloudbenchError('mutation testing needs mutmut: pip install -e ".[dev]"')
    if not (repo / module).is_file():
        raise CloudbenchError(f"mutation: no file {module} in {repo}")
    missing = [t for t in scope.tests if not (repo / t.split("::")[0]).exists()]
    if missing:
        raise CloudbenchError(f"mutation: {module}: no test {', '.join(missing)} in {repo}")
    where = _stage_dir(workdir, module)
    if fresh and where.exists():
        shutil.rmtree(where)
    chosen = patterns(module, scope.functions)
    if survivors_only:
        if not (where / "mutants").is_dir():
            raise CloudbenchError(f"mutation: {module} has no earlier run in {where} to take "
                                  "the survivors from")
        chosen = [m.key for m in read_results(where, module, scope.functions)
                  if m.status not in CAUGHT]
    stage(repo, where, module, scope)
    echo(f"{module}: mutmut in {where} (log: mutmut.log) ...")
    start = time.monotonic()
    run = _mutmut(where, ["run", *chosen, "--max-children", str(max_children)],
                  log=where / "mutmut.log") if chosen or not survivors_only else None
    seconds = time.monotonic() - start
    if run is not None and run.returncode != 0:
        tail = (where / "mutmut.log").read_text(errors="replace")[-1500:]
        raise CloudbenchError(f"mutation: mutmut failed on {module} (status {run.returncode}):\n"
                              f"{tail}")
    mutants = read_results(where, module, scope.functions)
    unchecked = [m.key for m in mutants if m.status == "not checked"]
    if survivors_only and unchecked:
        # mutmut forgets the verdicts a changed configuration (the module's tests) could
        # change: test those mutants again too
        run = _mutmut(where, ["run", *unchecked, "--max-children", str(max_children)],
                      log=where / "mutmut.log")
        if run.returncode != 0:
            raise CloudbenchError(f"mutation: mutmut failed on {module} (status "
                                  f"{run.returncode}); see {where / 'mutmut.log'}")
        seconds = time.monotonic() - start
        mutants = read_results(where, module, scope.functions)
    if not mutants:
        raise CloudbenchError(f"mutation: {module} has no mutants in the functions "
                              f"{scope.functions}: check the names")
    for m in mutants:
        if m.status not in CAUGHT:
            shown = _mutmut(where, ["show", m.key])
            m.diff = _diff_body(shown.stdout)
    return ModuleResult(module, scope.target, mutants, seconds)


def _diff_body(text: str) -> str:
    """The changed lines of ``mutmut show``'s unified diff, without its headers."""
    keep = [line for line in text.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return "\n".join(keep)


def format_result(result: ModuleResult) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    verdict = "meets" if result.score >= result.target else "BELOW"
    lines = [f"{result.module}: {result.killed}/{len(result.mutants)} killed = "
             f"{100 * result.score:.1f}% ({verdict} the {100 * result.target:.0f}% target; "
             f"{counts}; {result.seconds:.0f} s)"]
    for m in result.survivors:
        lines.append(f"  {m.status}: {m.key} ({m.function})")
        lines.extend(f"      {line}" for line in m.diff.splitlines())
    return "\n".join(lines)


def write_summary(results: Sequence[ModuleResult], path: Path) -> None:
    """Every module's counts and survivors as JSON (atomic write)."""
    data = [{"module": r.module, "mutants": len(r.mutants), "killed": r.killed,
             "score": r.score, "target": r.target, "counts": r.counts, "seconds": r.seconds,
             "survivors": [{"key": m.key, "function": m.function, "status": m.status,
                            "diff": m.diff} for m in r.survivors]} for r in results]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
