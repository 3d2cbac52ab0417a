"""The package-dir mapping: builders/, baselines/, methods/, catalogs/ become cloudbench.*."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import cloudbench
import cloudbench.builders
import cloudbench.catalogs
from cloudbench.config import class_scheme, load_yaml

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "cloudbench", "builders", "baselines", "methods",
           "catalogs")

CHECK = """
import json, sys
import cloudbench, cloudbench.builders, cloudbench.baselines, cloudbench.methods
import cloudbench.catalogs
from cloudbench.config import class_scheme, load_yaml, load_recipe
from cloudbench.builders import builder_module
scheme = class_scheme("simplified_igbp")
recipe = load_yaml("recipes", "demo.yaml")
demo = builder_module("demo")
config = load_recipe(demo.Config, "demo", ["purity=0.7"])
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (cloudbench, cloudbench.builders,
              cloudbench.baselines, cloudbench.methods, cloudbench.catalogs, demo)},
    "classes": list(scheme.classes),
    "task": scheme.task,
    "recipe": {k: recipe[k] for k in ("world_size", "tile_size", "patch_size", "classes")},
    "clouds": recipe["clouds"],
    "purity": config.purity,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A normal (non-editable) install into a fresh venv, imported from outside the repo."""
    root = tmp_path_factory.mktemp("packaging")
    # Build from a clean copy, so the build leaves nothing (build/, egg-info) in the repo.
    source = root / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    env_dir = root / "venv"
    try:
        # Dependencies come from this interpreter's site-packages, pip included.
        venv.create(env_dir, system_site_packages=True, with_pip=False)
    except Exception as err:  # pragma: no cover - only where venvs cannot be made at all
        pytest.skip(f"cannot create a virtual environment: {err}")
    if sys.prefix != sys.base_prefix:
        # Run from a virtual environment: system_site_packages gives the new one the base
        # Python's packages, not this environment's, so point it at ours as well.
        site_dir = next((env_dir / "lib").glob("python3.*/site-packages"))
        lines = [f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()]
        (site_dir / "_outer_environment.pth").write_text("".join(lines))
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=300, cwd=root,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    outside = root / "elsewhere"
    outside.mkdir()
    run = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True,
                         timeout=300, cwd=outside)
    assert run.returncode == 0, run.stderr
    return {"env": env_dir.resolve(), "source": source.resolve(),
            **json.loads(run.stdout.splitlines()[-1])}


def test_subpackages_are_imported_from_the_install(installed: dict) -> None:
    site = next((installed["env"] / "lib").glob("python3.*/site-packages"))
    expected = {
        "cloudbench": "cloudbench/__init__.py",
        "cloudbench.builders": "cloudbench/builders/__init__.py",
        "cloudbench.baselines": "cloudbench/baselines/__init__.py",
        "cloudbench.methods": "cloudbench/methods/__init__.py",
        "cloudbench.catalogs": "cloudbench/catalogs/__init__.py",
        "cloudbench.builders.demo": "cloudbench/builders/demo.py",
    }
    for module, relative in expected.items():
        path = Path(installed["files"][module]).resolve()
        assert path == site / relative, module
        assert not path.is_relative_to(REPO) and not path.is_relative_to(installed["source"])


def test_catalogs_ship_as_package_data(installed: dict) -> None:
    assert installed["task"] == "multiclass"
    assert installed["classes"] == [
        "Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands",
        "Urban/Built-up", "Snow/Ice", "Barren", "Water",
    ]
    assert installed["recipe"] == {"world_size": 1280, "tile_size": 640, "patch_size": 64,
                                   "classes": "simplified_igbp"}
    assert installed["clouds"]["resolution"] == 40
    assert installed["purity"] == 0.7
    site = next((installed["env"] / "lib").glob("python3.*/site-packages"))
    shipped = sorted(p.relative_to(site / "cloudbench" / "catalogs").as_posix()
                     for p in (site / "cloudbench" / "catalogs").rglob("*.yaml"))
    in_repo = sorted(p.relative_to(REPO / "catalogs").as_posix()
                     for p in (REPO / "catalogs").rglob("*.yaml"))
    assert shipped == in_repo and "recipes/demo.yaml" in shipped


def test_console_script_is_installed(installed: dict) -> None:
    script = installed["env"] / "bin" / "cloudbench"
    assert script.exists()
    assert str(installed["env"] / "bin" / "python") in script.read_text().splitlines()[0]


def test_editable_install_maps_to_the_repo() -> None:
    """Where this interpreter imports cloudbench from this repo (the README's ``pip install -e``),
    the mapped subpackages and catalogs are this repo's folders. With a normal install (a wheel,
    a prebuilt image) it skips: the ``installed`` fixture above checks normal installs."""
    if Path(cloudbench.__file__).resolve().parent != REPO / "cloudbench":
        pytest.skip(f"cloudbench is installed elsewhere ({cloudbench.__file__}), not from this "
                    "repo in editable mode")
    assert Path(cloudbench.builders.__file__).resolve() == REPO / "builders" / "__init__.py"
    assert Path(cloudbench.catalogs.__file__).resolve() == REPO / "catalogs" / "__init__.py"
    assert len(class_scheme("simplified_igbp").classes) == 10
    assert load_yaml("recipes", "demo.yaml")["patch_size"] == 64
    assert sys.modules["cloudbench"].__file__ == str(REPO / "cloudbench" / "__init__.py")
