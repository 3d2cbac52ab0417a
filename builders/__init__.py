"""Dataset recipes, one module each; ``cloudbench.build`` runs them.

A builder module defines ``Config`` (pydantic), ``plan``, ``build_shard``, ``metadata``,
``provenance`` and ``assign_split`` (see ``cloudbench/build.py``). Register it in ``BUILDERS``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cloudbench.errors import CloudbenchError

BUILDERS = {
    "demo": "cloudbench.builders.demo",
    "sen12ms-cloud": "cloudbench.builders.sen12ms_cloud",
    "sen12ms-cr": "cloudbench.builders.sen12ms_cr",
    "aoi": "cloudbench.builders.aoi",
    "hunan-cloud": "cloudbench.builders.aoi",
    "bigearthnet": "cloudbench.builders.bigearthnet",
    "cben": "cloudbench.builders.cben",
    "ben-demo": "cloudbench.builders.ben_demo",  # the recipe's sky: clear
    "cben-demo": "cloudbench.builders.ben_demo",  # sky: cloudy
}


def builder_module(name: str) -> ModuleType:
    if name not in BUILDERS:
        raise CloudbenchError(f"unknown builder {name!r}; available: {', '.join(BUILDERS)}")
    return importlib.import_module(BUILDERS[name])
