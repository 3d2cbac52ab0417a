"""``cloudbench download``: fetch the raw data the builders read (docs/download.md).

The sources are ``catalogs/downloads.yaml``: per dataset its parts (an archive or a plain file),
each a URL relative to a base URL (``--mirror`` replaces the base), with its size and checksum
where the publisher gives them, and the path it ``provides`` once unpacked (what ``cloudbench
info`` looks for in a raw folder). The SSL4EO-S12 weights are not in it: ``ssl4eo-weights``
selects them through :mod:`cloudbench.models.weights`, which fetches through :class:`Fetcher`
into the torch hub cache.

**Transfer** (:class:`Fetcher`). Every byte of a part goes through one file,
``<out>/.cloudbench-download/<file>.part``: :meth:`Fetcher.stream` yields the bytes already
there, then asks the server for the rest (``Range: bytes=N-``) and appends what arrives. A cut
connection, a timeout or a 5xx answer is retried from the byte reached, after 2, 4, 8, … s;
a server that answers a ranged request with the whole file (200) is read from byte 0 again,
the bytes already here skipped; a 404 or 410 stops at once with one message naming the URL and
``--mirror``. Bytes are taken as sent (``Accept-Encoding: identity``, no content decoding), so
a server that labels a ``.tar.gz`` ``Content-Encoding: gzip`` cannot change them. Size and
checksums (MD5, SHA-256 or, for weights, torch.hub's SHA-256 file-name prefix) are computed as
the bytes pass and checked at the end; a mismatch deletes the file and fetches it once more,
then stops with a :class:`CloudbenchError`.

**Unpacking as it arrives.** An archive (``tar``, ``tar.gz``, ``tar.zst``) is unpacked while it
downloads, from the same byte stream, into a hidden folder ``<part>.extracting`` next to the
partial file (tarfile's ``data`` filter: no member outside the folder, no device files). Only
when the whole archive has arrived and its size and checksum are right are the folder's
entries renamed into ``<out>`` (a folder absent there is moved whole, one present merged: the
SEN12MS ``_s1``, ``_s2`` and ``_lc`` archives of a season share one folder), the partial file
deleted and ``<part>.complete`` written. A part without its marker is not complete: a re-run
unpacks the bytes already downloaded again (from disk) and resumes the transfer where it
stopped. So ``<out>`` never shows a half-unpacked archive; the space needed is the archive plus
its contents.

**Before any transfer** the parts of unknown size are asked for theirs (HEAD), and the free
space at ``<out>`` is compared with what the parts still need (a disk that would fill is
refused before a byte is written); ``--dry-run`` prints each part, URL and size and stops.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

import requests
import urllib3
import zstandard
from tqdm import tqdm

from cloudbench.config import load_yaml
from cloudbench.errors import CloudbenchError

STATE_DIR = ".cloudbench-download"
"""The hidden folder under ``--out`` with partial files, markers and unpacking folders."""
ARCHIVE_KINDS = ("tar", "tar.gz", "tar.zst")
KINDS = (*ARCHIVE_KINDS, "file")
CHUNK = 1 << 16
"""Bytes per read from the network (a cut loses nothing that was received)."""


@dataclass(frozen=True)
class Part:
    """One file of a dataset as ``catalogs/downloads.yaml`` lists it."""

    name: str
    url: str
    """Relative to ``base``."""
    base: str
    kind: str
    provides: str
    """The path (relative to ``--out``, glob patterns allowed) that exists once the part is
    unpacked: the archive's top folder, or the file itself."""
    size: int | None = None
    """Exact bytes: checked after the transfer."""
    approx_size: int | None = None
    """An estimate, for the free-space check and ``--dry-run`` only."""
    md5: str | None = None
    sha256: str | None = None
    note: str = ""
    """What the part is, for ``cloudbench info`` (e.g. the official split lists)."""

    def full_url(self) -> str:
        return self.base + self.url

    @property
    def filename(self) -> str:
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def archive(self) -> bool:
        return self.kind in ARCHIVE_KINDS

    @property
    def expected_size(self) -> int | None:
        return self.size if self.size is not None else self.approx_size


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    parts: tuple[Part, ...]
    build: tuple[str, ...]
    weights: bool = False


def datasets() -> dict[str, Dataset]:
    """Every dataset of ``catalogs/downloads.yaml``."""
    raw = load_yaml("downloads.yaml")["datasets"]
    out = {}
    for name, spec in raw.items():
        bases: dict[str, str] = spec.get("bases") or {}
        parts = []
        for p in spec.get("parts") or []:
            where = f"downloads.yaml: {name}/{p.get('name')}"
            base_name = p.get("base", "default")
            if base_name not in bases:
                raise CloudbenchError(f"{where} names an unknown base {base_name!r}")
            if p.get("kind") not in KINDS:
                raise CloudbenchError(f"{where}: kind {p.get('kind')!r} is not one of "
                                      f"{', '.join(KINDS)}")
            kind = p["kind"]
            if kind != "file" and not p.get("provides"):
                raise CloudbenchError(f"{where}: an archive names the folder it `provides`")
            filename = p["url"].split("?", 1)[0].rsplit("/", 1)[-1]
            parts.append(Part(name=p["name"], url=p["url"], base=bases[base_name], kind=kind,
                              provides=p.get("provides") or filename, size=p.get("size"),
                              approx_size=p.get("approx_size"), md5=p.get("md5"),
                              sha256=p.get("sha256"), note=p.get("note", "")))
        out[name] = Dataset(name, spec.get("title", name), tuple(parts),
                            tuple(spec.get("build") or ()), bool(spec.get("weights", False)))
    return out


def dataset(name: str) -> Dataset:
    known = datasets()
    if name not in known:
        raise CloudbenchError(f"no downloadable dataset {name!r}; choose from "
                              f"{', '.join(known)}")
    return known[name]


def selected(ds: Dataset, token: str) -> list[Part]:
    """The parts ``token`` names: the part of that name, else the group of parts whose names
    start with it and an underscore (``ROIs1868_summer``: ``ROIs1868_summer_s1``, ``_s2``,
    ``_s2_cloudy``; ``ROIs1868_summer_s2``: that part alone)."""
    exact = [p for p in ds.parts if p.name == token]
    return exact or [p for p in ds.parts if p.name.startswith(token + "_")]


def select(ds: Dataset, only: Sequence[str] = ()) -> list[Part]:
    """The parts named in ``only`` (all when empty), each token as :func:`selected` reads it."""
    if not only:
        return list(ds.parts)
    chosen: list[Part] = []
    for token in only:
        found = selected(ds, token)
        if not found:
            raise CloudbenchError(f"{ds.name} has no part {token!r}; choose from "
                                  f"{', '.join(p.name for p in ds.parts)}")
        chosen += [p for p in found if p not in chosen]
    return chosen


def only_tokens(ds: Dataset, names: Sequence[str]) -> list[str]:
    """A short ``--only`` that selects exactly the parts ``names``: each name stands as the
    prefix (up to an underscore) that selects the most parts, all of them in ``names``, the
    longer prefix when two select the same (``ROIs1158_spring``, not ``ROIs1158``)."""
    def names_of(token: str) -> set[str]:
        return {p.name for p in selected(ds, token)}

    tokens: list[str] = []
    for name in names:
        if any(name in names_of(t) for t in tokens):
            continue
        pieces = name.split("_")
        prefixes = ["_".join(pieces[:i]) for i in range(len(pieces), 0, -1)]
        valid = [t for t in prefixes if name in names_of(t) and names_of(t) <= set(names)]
        tokens.append(max(valid, key=lambda t: (len(names_of(t)), len(t))))
    return tokens


def with_mirror(parts: Sequence[Part], mirror: str | None) -> list[Part]:
    """``parts`` with every base replaced by ``mirror`` (a trailing ``/`` added)."""
    if not mirror:
        return list(parts)
    return [replace(p, base=mirror_base(mirror)) for p in parts]


def mirror_base(mirror: str) -> str:
    return mirror if mirror.endswith(("/", "=")) else mirror + "/"


def human(n: float | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------- transfer


class _Retry(Exception):
    """A failure worth another try (a cut connection, a 5xx answer)."""


@dataclass
class Digest:
    """Size and checksums of the bytes that pass through :meth:`watch`."""

    size: int = 0
    md5: Any = field(default_factory=hashlib.md5)
    sha256: Any = field(default_factory=hashlib.sha256)

    def watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            self.md5.update(chunk)
            self.sha256.update(chunk)
            yield chunk

    def problem(self, size: int | None, md5: str | None, sha256: str | None,
                sha256_prefix: str | None = None) -> str | None:
        """What is wrong with the bytes (None: nothing)."""
        if size is not None and self.size != size:
            return f"{self.size} bytes arrived, {size} expected"
        for algorithm, want in (("md5", md5), ("sha256", sha256)):
            if want and getattr(self, algorithm).hexdigest() != want.lower():
                return f"wrong {algorithm} checksum (expected {want})"
        if sha256_prefix and not self.sha256.hexdigest().startswith(sha256_prefix.lower()):
            return f"wrong sha256 checksum (the file name says {sha256_prefix}…)"
        return None


def _not_found(url: str, code: int) -> CloudbenchError:
    return CloudbenchError(f"{url} answered HTTP {code} (not found): the file has moved or the "
                           "server is down; give another server holding the same files with "
                           "--mirror URL")


def free_space(path: Path) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass
class Fetcher:
    """Resumable, verified HTTP downloads (``requests``)."""

    retries: int = 4
    """Further tries after a connection error, timeout or 5xx answer."""
    backoff: float = 2.0
    """Seconds before the first retry, doubled for each next one."""
    sleep: Callable[[float], None] | None = None
    """How to wait between tries (None: ``time.sleep``)."""
    timeout: float = 60.0
    progress: bool = True
    session: requests.Session | None = None

    def _session(self) -> requests.Session:
        if self.session is None:
            self.session = requests.Session()
        return self.session

    def head_size(self, url: str) -> int | None:
        """The size the server gives for ``url`` (None when it gives none); raises
        ``requests.RequestException`` when the server cannot be reached."""
        answer = self._session().head(url, allow_redirects=True,
                                      timeout=min(self.timeout, 10.0),
                                      headers={"Accept-Encoding": "identity"})
        length = answer.headers.get("Content-Length")
        return int(length) if answer.ok and length and length.isdigit() else None

    def sizes(self, parts: Sequence[Part]) -> dict[str, int | None]:
        """Each part's size: the catalog's, else the server's (HEAD), else the catalog's
        estimate. The servers are asked until one cannot be reached (offline: no waiting per
        part)."""
        out: dict[str, int | None] = {}
        reachable = True
        for part in parts:
            size = part.size
            if size is None and reachable:
                try:
                    size = self.head_size(part.full_url())
                except requests.RequestException:
                    reachable = False
            out[part.name] = size if size is not None else part.approx_size
        return out

    def fetch(self, url: str, dest: Path, size: int | None = None, md5: str | None = None,
              sha256: str | None = None, sha256_prefix: str | None = None,
              label: str = "") -> Path:
        """Download ``url`` to ``dest`` (through ``dest.part``, resumed where a cut run left
        it), checking size and checksums; a bad copy is fetched once more, then refused."""
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        bad = 0
        while True:
            digest = Digest()
            try:
                for _ in digest.watch(self.stream(url, part, size, label or dest.name)):
                    pass
            except Changed:
                continue  # the partial file is gone: from byte 0
            problem = digest.problem(size, md5, sha256, sha256_prefix)
            if problem is None:
                os.replace(part, dest)
                return dest
            part.unlink(missing_ok=True)
            bad += 1
            if bad == 2:
                raise bad_twice(url, problem)

    def stream(self, url: str, part: Path, size: int | None = None,
               label: str = "") -> Iterator[bytes]:
        """Every byte of ``url`` in order: those already in ``part``, then the rest from the
        server, appended to ``part`` as they arrive (retried and resumed, module docstring).
        Raises :class:`Changed` (``part`` deleted) when a server that ignored the range sent
        other bytes than those already here: the file changed, and the caller starts over."""
        part.parent.mkdir(parents=True, exist_ok=True)
        if size is not None and part.is_file() and part.stat().st_size > size:
            part.unlink()  # longer than the file: not a prefix of it
        have = 0
        if part.is_file():
            with part.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    have += len(block)
                    yield block
        if size is not None and have == size:
            return
        failures = 0
        with part.open("r+b" if have else "wb") as out, \
                tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=label or part.name, disable=not self.progress, leave=False) as bar:
            out.seek(have)
            while True:
                try:
                    for offset, block in self._request(url, have, bar, part):
                        if offset < have:  # a server that ignored the range: compare
                            known = min(have - offset, len(block))
                            out.seek(offset)
                            if out.read(known) != block[:known]:
                                out.close()
                                part.unlink()
                                raise Changed(f"{url} changed since the first bytes were "
                                              "fetched")
                            out.seek(have)
                            block = block[known:]
                            if not block:
                                continue
                        self._write(out, block, part)
                        have += len(block)
                        bar.update(len(block))
                        yield block
                    return
                except RETRIED as err:
                    failures += 1
                    if failures > self.retries:
                        raise CloudbenchError(
                            f"cannot download {url} after {failures} tries: {_reason(err)}; "
                            f"run the same command again later ({human(have)} are kept and "
                            "the download resumes) or give another server with --mirror URL"
                        ) from err
                    (self.sleep or time.sleep)(self.backoff * 2 ** (failures - 1))

    @staticmethod
    def _write(out: BinaryIO, block: bytes, part: Path) -> None:
        try:
            out.write(block)
            out.flush()
        except OSError as err:
            raise CloudbenchError(f"cannot write {part}: {_reason(err)} (a full disk? "
                                  f"{human(free_space(part.parent))} free)") from err

    def _request(self, url: str, have: int, bar: tqdm, part: Path
                 ) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of ``url`` from byte ``have`` on, or from 0 where the server
        ignores the range."""
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            answer = self._session().get(url, headers=headers, stream=True,
                                         timeout=self.timeout)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as err:
            raise CloudbenchError(f"{url} is not a URL cloudbench can fetch: "
                                  f"{_reason(err)}") from err
        with answer:
            code = answer.status_code
            if code in (404, 410):
                raise _not_found(url, code)
            if code == 416 and have:  # nothing after the bytes we have: the file is whole
                return
            if code >= 500 or code == 429:
                raise _Retry(f"HTTP {code}")
            if code >= 400:
                raise CloudbenchError(f"{url} answered HTTP {code} {answer.reason}; give "
                                      "another server with --mirror URL")
            offset = 0
            if code == 206:
                offset = _range_start(answer.headers.get("Content-Range", ""))
                if offset != have:
                    raise _Retry(f"the server resumed at byte {offset}, not {have}")
            length = answer.headers.get("Content-Length")
            end = offset + int(length) if length and length.isdigit() else None
            if end is not None:
                bar.total = end
                bar.refresh()
                free = free_space(part.parent)
                if end - have > free:
                    raise CloudbenchError(
                        f"not enough free disk space for {url}: {human(end - have)} still to "
                        f"come, {human(free)} free at {part.parent}")
            raw = answer.raw
            while True:
                block = raw.read1(CHUNK)
                if not block:
                    break
                yield offset, block
                offset += len(block)
            if end is not None and offset < end:
                raise _Retry(f"the connection ended {human(end - offset)} before the end")


class Changed(Exception):
    """The bytes a server sent differ from those already downloaded: start over."""


RETRIED = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
           _Retry)
"""Failures worth another try from the byte reached (cuts, timeouts, 5xx)."""


def bad_twice(url: str, problem: str) -> CloudbenchError:
    return CloudbenchError(f"{url}: {problem}, twice (fetched twice, both copies deleted); the "
                           "file on the server differs from the catalog's or is corrupt: try "
                           "--mirror URL or later")


def _range_start(content_range: str) -> int:
    # "bytes 100-999/1000"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------- unpacking


class _Reader:
    """A file-like ``read(n)`` over an iterator of byte blocks (what tarfile streams from)."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._blocks = iter(blocks)
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all for −1): what one block gives, short reads being allowed, so
        that bytes already here are passed on before a failure of the next block is raised."""
        if not self._buffer or n < 0:
            for block in self._blocks:
                self._buffer += block
                if n >= 0:
                    break
        if n < 0:
            n = len(self._buffer)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def drain(self) -> None:
        """Read to the end (the zero blocks after a tar's last member, a checksum's bytes)."""
        self._buffer = b""
        for _ in self._blocks:
            pass


@contextmanager
def _tar_stream(reader: _Reader, kind: str) -> Iterator[tarfile.TarFile]:
    source = cast(BinaryIO, reader)
    if kind == "tar.zst":
        with zstandard.ZstdDecompressor().stream_reader(source) as plain, \
                tarfile.open(fileobj=plain, mode="r|") as tar:
            yield tar
        return
    with tarfile.open(fileobj=source, mode="r|gz" if kind == "tar.gz" else "r|") as tar:
        yield tar


def _merge(src: Path, dst: Path) -> None:
    """Move ``src``'s entries into ``dst``: a folder absent there is renamed whole, one present
    is merged, a file replaces its namesake (all renames within one file system)."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge(entry, target)
            entry.rmdir()
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def fetch_archive(fetcher: Fetcher, part: Part, out: Path) -> None:
    """Download ``part`` (an archive) and unpack it as it arrives into a hidden folder; once
    its size and checksum are right, move the contents into ``out`` (module docstring)."""
    state = out / STATE_DIR
    partial = state / (part.filename + ".part")
    work = state / f"{part.name}.extracting"
    bad = 0
    while True:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        digest = Digest()
        reader = _Reader(digest.watch(fetcher.stream(part.full_url(), partial, part.size,
                                                     part.name)))
        problem = None
        try:
            with _tar_stream(reader, part.kind) as tar:
                tar.extractall(work, filter="data")
            reader.drain()
        except Changed:
            continue  # the partial file is gone: from byte 0
        except (tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError) as err:
            problem = f"not a valid {part.kind} archive ({_reason(err)})"
            reader.drain()
        except OSError as err:
            raise CloudbenchError(f"cannot unpack {part.filename} into {work}: {_reason(err)} "
                                  f"({human(free_space(work))} free)") from err
        problem = digest.problem(part.size, part.md5, part.sha256) or problem
        if problem is None:
            _merge(work, out)
            shutil.rmtree(work, ignore_errors=True)
            partial.unlink()
            return
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)
        bad += 1
        if bad == 2:
            raise bad_twice(part.full_url(), problem)


# --------------------------------------------------------------------------- a whole download


def marker(out: Path, part: Part) -> Path:
    return out / STATE_DIR / f"{part.name}.complete"


def is_complete(out: Path, part: Part) -> bool:
    return marker(out, part).is_file()


def partial_bytes(out: Path, part: Part) -> int:
    path = out / STATE_DIR / (part.filename + ".part")
    return path.stat().st_size if path.is_file() else 0


def check_space(out: Path, parts: Sequence[Part], sizes: dict[str, int | None]) -> None:
    """Refuse when the free space at ``out`` is below what ``parts`` still need (``sizes``:
    each part's known or estimated size): the rest of each file, and for an archive its
    contents too (counted as large as the archive; a tar.gz of imagery barely shrinks)."""
    need = 0
    for part in parts:
        size = sizes.get(part.name)
        if size is not None:
            need += max(size - partial_bytes(out, part), 0) + (size if part.archive else 0)
    free = free_space(out)
    if need > free:
        unknown = sum(sizes.get(p.name) is None for p in parts)
        extra = f", not counting {unknown} part(s) of unknown size" if unknown else ""
        raise CloudbenchError(f"not enough free disk space at {out}: the download needs about "
                              f"{human(need)} (an archive counts twice: the archive and its "
                              f"contents{extra}) but {human(free)} is free; free some space, "
                              "choose another --out or fewer parts with --only")


def download(name: str, out: Path | None, only: Sequence[str] = (), dry_run: bool = False,
             mirror: str | None = None, fetcher: Fetcher | None = None,
             echo: Callable[[str], Any] = print) -> list[Path]:
    """Fetch dataset ``name``'s parts (``only`` of them) into ``out``; the paths written
    (nothing for ``dry_run``, which prints each part, URL and size and the total)."""
    ds = dataset(name)
    fetcher = fetcher or Fetcher()
    if ds.weights:
        return _download_weights(only, dry_run, mirror, fetcher, echo)
    if out is None:
        raise CloudbenchError(f"downloading {name} needs --out DIR")
    out = out.expanduser().resolve()
    parts = with_mirror(select(ds, only), mirror)
    todo = [p for p in parts if not is_complete(out, p)]
    sizes = fetcher.sizes(todo)
    if dry_run:
        for part in parts:
            size = sizes.get(part.name)
            shown = "complete" if part not in todo else (
                human(size) if part.size is not None or size is None else f"~{human(size)}")
            echo(f"{part.name:28} {shown:>12}  {part.full_url()}")
        known = [s for s in sizes.values() if s is not None]
        unknown = len(sizes) - len(known)
        note = f" + {unknown} part(s) of unknown size" if unknown else ""
        echo(f"to fetch: {len(todo)} of {len(parts)} part(s), {human(sum(known))}{note}; "
             "nothing fetched (--dry-run)")
        return []
    for part in parts:
        if part not in todo:
            echo(f"{part.name}: already complete, skipped")
    check_space(out, todo, sizes)
    written = []
    for part in todo:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        have = partial_bytes(out, part)
        resumed = f", resuming after {human(have)}" if have else ""
        echo(f"{part.name}: {part.full_url()} ({human(sizes.get(part.name))}{resumed})")
        if part.archive:
            fetch_archive(fetcher, part, out)
            result = out / part.provides
        else:
            fetched = fetcher.fetch(part.full_url(), out / STATE_DIR / part.filename,
                                    part.size, part.md5, part.sha256, label=part.name)
            result = out / part.filename
            os.replace(fetched, result)
        marker(out, part).write_text(json.dumps(
            {"url": part.full_url(), "size": part.size, "md5": part.md5,
             "sha256": part.sha256, "kind": part.kind}) + "\n")
        written.append(result)
    echo(f"{ds.title}: {len(parts)} part(s) complete in {out}")
    for command in ds.build:
        echo(f"next: {command.format(out=out)}")
    return written


def _download_weights(only: Sequence[str], dry_run: bool, mirror: str | None, fetcher: Fetcher,
                      echo: Callable[[str], Any]) -> list[Path]:
    """``ssl4eo-weights``: :mod:`cloudbench.models.weights` selects and fetches."""
    from cloudbench.models import weights

    chosen = weights.select(list(only) or ["all"])
    if mirror:
        chosen = [replace(e, url=mirror_base(mirror) + e.url.rsplit("/", 1)[-1]) if e.url
                  else e for e in chosen]
    written = []
    for entry in chosen:
        if entry.url is None:
            echo(f"{entry.label}: skipped, {entry.missing}")
        elif dry_run:
            echo(f"{entry.label:24} {'present' if entry.present else 'missing':8} {entry.url} "
                 f"-> {entry.path}")
        else:
            written.append(weights.fetch(entry, fetcher=fetcher))
            echo(f"{entry.label}: {written[-1]}")
    echo(f"{len(chosen)} weight file(s); nothing fetched (--dry-run)" if dry_run
         else "next: cloudbench weights list")
    return written


# --------------------------------------------------------------------------- raw folders


@dataclass(frozen=True)
class RawReport:
    """What ``cloudbench info`` says about a raw download folder."""

    dataset: Dataset
    root: Path
    present: tuple[str, ...]
    missing: tuple[str, ...]
    in_progress: dict[str, int]
    """Part -> bytes downloaded so far, for parts neither present nor complete."""

    def summary(self) -> dict[str, Any]:
        return {"root": str(self.root), "raw": self.dataset.name, "title": self.dataset.title,
                "present": list(self.present), "missing": list(self.missing),
                "in_progress": self.in_progress, "command": self.command()}

    def command(self) -> str | None:
        """The ``cloudbench download`` that fetches what is missing."""
        if not self.missing:
            return None
        tokens = ",".join(only_tokens(self.dataset, self.missing))
        return f"cloudbench download {self.dataset.name} --out {self.root} --only {tokens}"

    def lines(self) -> list[str]:
        parts = {p.name: p for p in self.dataset.parts}
        out = [f"{self.root}: raw {self.dataset.title}, {len(self.present)} of "
               f"{len(parts)} part(s) present (not a cloudbench dataset: build one from it)"]
        if self.missing:
            out.append("missing: " + ", ".join(
                name + (f" ({parts[name].note})" if parts[name].note else "")
                + (f", {human(self.in_progress[name])} downloaded" if name in self.in_progress
                   else "") for name in self.missing))
            out.append(f"run `{self.command()}`")
        else:
            out += [f"next: {c.format(out=self.root)}" for c in self.dataset.build]
        return out


def present(root: Path, part: Part) -> bool:
    """Whether ``part`` is in ``root``: its marker, or what it ``provides`` (a folder or file
    unpacked by hand counts)."""
    return is_complete(root, part) or any(root.glob(part.provides))


def raw_report(root: Path) -> RawReport | None:
    """The catalog dataset whose parts ``root`` holds most of (None: no part of any)."""
    best: RawReport | None = None
    for ds in datasets().values():
        if ds.weights:
            continue
        have = [p.name for p in ds.parts if present(root, p)]
        if not have or (best is not None and len(have) <= len(best.present)):
            continue
        missing = tuple(p.name for p in ds.parts if p.name not in have)
        progress = {p.name: partial_bytes(root, p) for p in ds.parts
                    if p.name in missing and partial_bytes(root, p)}
        best = RawReport(ds, root, tuple(have), missing, progress)
    return best
