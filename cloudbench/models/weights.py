"""The SSL backbones' weight files (``cloudbench weights``): which exist, where cloudbench looks
for them, fetching them where a network exists, and fake files for offline tests.

Nothing else in cloudbench downloads weights: :mod:`cloudbench.models.backbones` only reads the
torch hub cache (``torch.hub.get_dir()/checkpoints/<file name of the URL>``, where TorchGeo
caches them too) or a given path. ``fetch`` fills that cache: it downloads the URL of the
installed TorchGeo's enum through :class:`cloudbench.download.Fetcher` (``<file>.part``
renamed into place, so a cut download leaves nothing under the final name and resumes where
it stopped), checking the SHA-256 prefix that the file name carries (``…-df8b932e.pth``).
``fake`` writes state dicts with the real key names and shapes and random values, under
stable names in a folder of their own, never into the hub cache, so that a fake file cannot
be mistaken for a released one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cloudbench.download import Fetcher
from cloudbench.errors import CloudbenchError
from cloudbench.models.backbones import BACKBONES, backbone_spec, weights_info
from cloudbench.store import atomic_torch_save

MODALITIES = ("s2", "s1")
_HASH = re.compile(r"-([a-f0-9]{8,})\.")
"""torch.hub's convention: a file name's SHA-256 prefix after the last dash."""


@dataclass(frozen=True)
class WeightEntry:
    """One backbone's weights of one modality."""

    backbone: str
    modality: str
    name: str
    """``Enum.MEMBER`` as TorchGeo names it."""
    url: str | None
    """None where the installed TorchGeo lacks the enum (``missing`` says why)."""
    path: Path | None
    """Where cloudbench reads it: the torch hub cache's copy."""
    missing: str = ""

    @property
    def present(self) -> bool:
        return self.path is not None and self.path.is_file()

    @property
    def label(self) -> str:
        return f"{self.backbone}:{self.modality}"


def entries() -> list[WeightEntry]:
    """Every backbone's S2 and S1 weights, as the installed TorchGeo has them."""
    out = []
    for backbone in BACKBONES:
        for modality in MODALITIES:
            released = backbone_spec(backbone).weights(modality)
            try:
                info = weights_info(backbone, modality)
            except CloudbenchError as err:
                out.append(WeightEntry(backbone, modality, released.name, None, None, str(err)))
                continue
            out.append(WeightEntry(backbone, modality, info.name, info.url, info.cache_path))
    return out


def select(names: Sequence[str]) -> list[WeightEntry]:
    """The entries named: ``all``, a backbone (both modalities), ``backbone:s2`` /
    ``backbone:s1``, or TorchGeo's ``Enum.MEMBER``."""
    known = entries()
    chosen: list[WeightEntry] = []
    for name in names:
        found = [e for e in known if name == "all" or name in (e.backbone, e.label, e.name)]
        if not found:
            choices = ", ".join(["all", *BACKBONES, *(e.label for e in known)])
            raise CloudbenchError(f"no weights named {name!r}; choose from {choices}, "
                                  "or a TorchGeo name such as ResNet50_Weights.SENTINEL2_ALL_MOCO")
        chosen += [e for e in found if e not in chosen]
    return chosen


def fetch(entry: WeightEntry, progress: bool = True, fetcher: Fetcher | None = None) -> Path:
    """Download ``entry``'s file into the torch hub cache (nothing when it is there already):
    resumed after a cut, its SHA-256 checked against the prefix in its name
    (:class:`cloudbench.download.Fetcher`)."""
    if entry.url is None or entry.path is None:
        raise CloudbenchError(f"{entry.label}: {entry.missing}")
    if entry.present:
        return entry.path
    match = _HASH.search(entry.path.name)
    fetcher = fetcher or Fetcher(progress=progress)
    try:
        return fetcher.fetch(entry.url, entry.path, sha256_prefix=match.group(1) if match
                             else None, label=entry.label)
    except CloudbenchError as err:
        raise CloudbenchError(f"{entry.name}: {err}; on a machine without a network, copy "
                              f"the file to {entry.path}") from err


def fake_name(backbone: str, modality: str) -> str:
    """The file name of a fake weights file: ``<backbone>-<modality>.fake.pth``."""
    return f"{backbone}-{modality}.fake.pth"


def write_fake(folder: str | Path, backbones: Sequence[str] = tuple(BACKBONES),
               seed: int = 0) -> list[Path]:
    """Fake weight files for ``backbones``, S2 and S1, in ``folder``: state dicts with the key
    names and shapes of the released SSL4EO-S12 files (timm's network for the weights' bands,
    with the classifier the loader skips), random values from timm's initialisation.

    They load through the same code as the real files (``s2_weights=`` / ``s1_weights=``) and
    say nothing about any method: for tests and smoke runs only. Refuses the torch hub cache.
    """
    import timm  # imported here: timm takes a while to import

    folder = Path(folder)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if folder.resolve() == hub.resolve():
        raise CloudbenchError(f"fake weights are never written into the torch hub cache ({hub})")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        for i, backbone in enumerate(backbones):
            spec = backbone_spec(backbone)
            for j, modality in enumerate(MODALITIES):
                torch.manual_seed(seed * 1000 + 10 * i + j)
                bands = spec.weights(modality).bands
                state = timm.create_model(spec.model, pretrained=False,
                                          in_chans=len(bands)).state_dict()
                path = folder / fake_name(backbone, modality)
                atomic_torch_save(state, path)
                written.append(path)
    return written
