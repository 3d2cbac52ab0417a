"""The mutation benchmark's plumbing (cloudbench/mutation.py): names, scope, and one real mutmut
run on a tiny repository whose surviving mutants are known by hand."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from cloudbench import mutation
from cloudbench.cli import main
from cloudbench.errors import CloudbenchError

REPO = Path(__file__).resolve().parents[1]


def test_module_names_follow_the_installed_layout() -> None:
    assert mutation.module_name("methods/esccs.py") == "cloudbench.methods.esccs"
    assert mutation.module_name("baselines/kd_s.py") == "cloudbench.baselines.kd_s"
    assert mutation.module_name("cloudbench/sources/sentinelhub.py") == (
        "cloudbench.sources.sentinelhub")
    assert mutation.staged_path("builders/demo.py") == Path("cloudbench/builders/demo.py")
    for bad, message in (("tests/test_metrics.py", "outside the package"),
                         ("cloudbench/README.md", "not a Python file"),
                         ("/abs/cloudbench/metrics.py", "not a Python file")):
        with pytest.raises(CloudbenchError, match=message):
            mutation.staged_path(bad)


def test_function_patterns_match_mutmut_names() -> None:
    names = ["cloudbench.methods.esccs.x_esccs_loss__mutmut_3",
             "cloudbench.methods.esccs.x_esccs_loss_extra__mutmut_1",
             "cloudbench.methods.esccs.xǁESCCSǁfit__mutmut_12",
             "cloudbench.methods.esccs.xǁESCCSǁpredict__mutmut_2"]
    chosen = mutation.patterns("methods/esccs.py", ["esccs_loss", "ESCCS.fit"])
    matched = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in chosen)]
    assert matched == [names[0], names[2]]
    assert mutation.patterns("methods/esccs.py", None) == []
    assert mutation._function(names[2], "cloudbench.methods.esccs") == "ESCCS.fit"
    assert mutation._function(names[1], "cloudbench.methods.esccs") == "esccs_loss_extra"


def test_the_shipped_scope_names_real_files_and_functions() -> None:
    """Every module and test of catalogs/mutation.yaml exists, and every function it names is
    defined in its module, so no scope entry silently mutates nothing."""
    import ast

    scope = mutation.load_scope().modules
    assert {"cloudbench/metrics.py", "methods/esccs.py", "cloudbench/harness/transfer.py"} <= set(
        scope)
    for module, entry in scope.items():
        assert (REPO / module).is_file(), module
        for test in entry.tests:
            assert (REPO / test.split("::")[0]).is_file(), (module, test)
        tree = ast.parse((REPO / module).read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            defined |= {f"{cls.name}.{n.name}" for n in cls.body
                        if isinstance(n, ast.FunctionDef)}
        for pattern in entry.functions or []:
            assert fnmatch.filter(defined, pattern), (module, pattern)


def test_cli_refuses_a_module_outside_the_scope_without_tests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["perf", "mutation", "cloudbench/store.py"]) == 2
    err = capsys.readouterr().err
    assert "cloudbench/store.py: not in catalogs/mutation.yaml; give its tests with --tests" in err
    assert "Traceback" not in err
    assert main(["perf", "mutation", "cloudbench/store.py", "cloudbench/io.py",
                 "--tests", "tests/test_store.py"]) == 2
    assert "--tests goes with exactly one MODULE" in capsys.readouterr().err


TINY = '''
def clip(x, low, high):
    if x < low:
        return low
    if x > high:
        return high
    return x


def scale(x):
    return x * 10
'''

TINY_TESTS = '''
from cloudbench.tiny import clip, scale


def test_clip():
    assert clip(-5, 0, 3) == 0
    assert clip(7, 0, 3) == 3
    assert clip(2, 0, 3) == 2


def test_scale_runs():
    scale(2)  # asserts nothing: every mutant of scale survives
'''


@pytest.mark.skipif(importlib.util.find_spec("mutmut") is None, reason="mutmut not installed")
def test_a_real_mutmut_run_on_a_tiny_repository(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """clip's tests kill every mutant but the two boundary ones (< for <=, > for >=: equal
    values give the same result either way, equivalent mutants); scale's test asserts nothing,
    so its mutants all survive. The CLI reports them, with their diffs; after a test for scale
    is added, testing only the survivors again kills scale's and keeps the other verdicts."""
    repo = tmp_path / "repo"
    (repo / "cloudbench").mkdir(parents=True)
    (repo / "cloudbench" / "__init__.py").write_text("")
    (repo / "cloudbench" / "tiny.py").write_text(textwrap.dedent(TINY))
    (repo / "tests").mkdir()
    (repo / "tests" / "test_tiny.py").write_text(textwrap.dedent(TINY_TESTS))
    (repo / "pyproject.toml").write_text('[project]\nname = "tiny"\nversion = "0"\n')
    work = tmp_path / "work"
    args = ["perf", "mutation", "cloudbench/tiny.py", "--tests", "tests/test_tiny.py",
            "--repo", str(repo), "--workdir", str(work), "--workers", "1"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    summary = json.loads((work / "mutation.json").read_text())
    (module,) = summary
    survivors = {(s["function"], s["status"]) for s in module["survivors"]}
    clip_survivors = [s for s in module["survivors"] if s["function"] == "clip"]
    assert {d["diff"].splitlines()[-1].strip() for d in clip_survivors} == {
        "+    if x <= low:", "+    if x >= high:"}
    assert ("scale", "survived") in survivors
    scale_mutants = [s for s in module["survivors"] if s["function"] == "scale"]
    assert module["mutants"] == module["killed"] + len(module["survivors"])
    assert module["killed"] == module["mutants"] - 2 - len(scale_mutants)
    assert f"cloudbench/tiny.py: {module['killed']}/{module['mutants']} killed" in out
    assert "BELOW the 90% target" in out and "+    if x <= low:" in out
    # a test that checks scale, then only the survivors tested again: scale's are killed now
    with (repo / "tests" / "test_tiny.py").open("a") as tests:
        tests.write("\n\ndef test_scale():\n    assert scale(2) == 20\n")
    capsys.readouterr()
    assert main([*args, "--survivors"]) == 0, capsys.readouterr().err
    (again,) = json.loads((work / "mutation.json").read_text())
    assert {s["function"] for s in again["survivors"]} == {"clip"}
    assert again["killed"] == module["killed"] + len(scale_mutants)
    assert again["mutants"] == module["mutants"]
