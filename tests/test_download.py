"""``cloudbench download`` against a loopback HTTP server (127.0.0.1, never the real servers)
that behaves as the publishers' servers do (Range answered with 206 and Content-Range, HEAD with
the size, 416 past the end) and fails as they fail: a connection cut mid-file, a server that
ignores Range, corrupt bytes, 404, 503, a ``.tar.gz`` labelled ``Content-Encoding: gzip``.
Also: unpacking as the archive arrives, a killed run resumed, dry runs, skipped parts, the
free-space checks, ``cloudbench info`` on raw folders, and the CLI's user errors."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cloudbench import download as dl
from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.sources.sen12ms import SEN12MSCR
from tests.conftest import REALDATA


def _targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


S1 = _targz({f"ROIs1868_summer_s1/s1_1/ROIs1868_summer_s1_1_p{i}.tif": bytes([i]) * 5000
             for i in (30, 31)})
S2 = _targz({"ROIs1868_summer_s2/s2_1/ROIs1868_summer_s2_1_p30.tif": b"s2" * 4000})
CLOUDY = _targz({"ROIs1868_summer_s2_cloudy/s2_cloudy_1/ROIs1868_summer_s2_cloudy_1_p30.tif":
                 b"cl" * 4000})
# SEN12MS: the s1 and lc archives unpack into the same ROIs1868_summer folder
MS_S1 = _targz({"ROIs1868_summer/s1_1/ROIs1868_summer_s1_1_p30.tif": b"a" * 3000})
MS_LC = _targz({"ROIs1868_summer/lc_1/ROIs1868_summer_lc_1_p30.tif": b"b" * 3000})
BIG = bytes(range(256)) * 1200  # 300 KiB: more than one transfer chunk
SD = b"II*\x00" + b"sd" * 20000


class Server:
    """Serves ``files`` (path -> bytes) with Range support; ``faults`` (path -> list of one-shot
    behaviours, used in order): ``cut:N`` (send N bytes of a full-length answer, then close),
    ``ignore_range`` (answer 200 with the whole file), ``503``, ``corrupt`` (every byte
    flipped), ``gzip_encoding`` (the bytes as they are, labelled ``Content-Encoding: gzip``)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.log: list[tuple[str, str | None]] = []
        self.heads: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                server.heads.append(path)
                if path not in server.files:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.files[path])))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                fault = server.faults[path].pop(0) if server.faults.get(path) else ""
                if fault == "503":
                    self.send_error(503)
                    return
                if fault == "corrupt":
                    data = bytes(b ^ 0xFF for b in data)
                start = 0
                if rng and fault != "ignore_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if fault == "gzip_encoding":  # a misconfigured server labelling a .tar.gz
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if fault.startswith("cut:"):
                    self.wfile.write(body[:int(fault[4:])])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _part(**kw: Any) -> dict[str, Any]:
    return {"size": None, "md5": None, **kw}


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# reBEN: a tar.zst, as Zenodo serves BigEarthNet v2.0
BEN2_S1 = zstandard.ZstdCompressor().compress(_tar({
    "BigEarthNet-S1/S1A_IW_GRDH_1SDV_20170613T165043/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48/"
    "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48_VV.tif": b"vv" * 3000}))
# an archive whose first member is large and second small: a cut after the first shows that
# unpacking keeps pace with the transfer
FIRST = bytes(range(256)) * 2048  # 512 KiB
STREAMED = _tar({"ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p1.tif": FIRST,
                 "ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p2.tif": b"last" * 100})

CATALOG = {"datasets": {
    "sen12ms-cr": {
        "title": "SEN12MS-CR",
        "bases": {"default": "https://publisher.invalid/s/m1554803/download?path=/&files="},
        "build": ["cloudbench build sen12ms-cr --root {out} --out <dataset folder>"],
        "parts": [
            _part(name="ROIs1868_summer_s1", url="ROIs1868_summer_s1.tar.gz", kind="tar.gz",
                  provides="ROIs1868_summer_s1", size=len(S1), md5=_md5(S1)),
            _part(name="ROIs1868_summer_s2", url="ROIs1868_summer_s2.tar.gz", kind="tar.gz",
                  provides="ROIs1868_summer_s2", md5=_md5(S2)),
            _part(name="ROIs1868_summer_s2_cloudy", url="ROIs1868_summer_s2_cloudy.tar.gz",
                  kind="tar.gz", provides="ROIs1868_summer_s2_cloudy"),
            _part(name="ROIs1158_spring_s1", url="ROIs1158_spring_s1.tar", kind="tar",
                  provides="ROIs1158_spring_s1", size=len(STREAMED), md5=_md5(STREAMED)),
        ]},
    "sen12ms": {
        "title": "SEN12MS",
        "bases": {"default": "https://publisher.invalid/s/m1474000/download?path=%2F&files="},
        "build": ["cloudbench build sen12ms-cloud --sen12ms-root {out} --cloud-source <x> "
                  "--out <y>"],
        "parts": [_part(name="ROIs1868_summer_s1", url="ROIs1868_summer_s1.tar.gz",
                        kind="tar.gz", provides="ROIs1868_summer/s1_*"),
                  _part(name="ROIs1868_summer_lc", url="ROIs1868_summer_lc.tar.gz",
                        kind="tar.gz", provides="ROIs1868_summer/lc_*")]},
    "bigearthnet-v2": {
        "title": "BigEarthNet v2.0",
        "bases": {"default": "https://zenodo.invalid/records/10891137/files/"},
        "build": ["cloudbench build bigearthnet --bigearthnet-root {out} --out <y>"],
        "parts": [_part(name="S1", url="BigEarthNet-S1.tar.zst", kind="tar.zst",
                        provides="BigEarthNet-S1", size=len(BEN2_S1), md5=_md5(BEN2_S1))]},
    "earthenv": {
        "title": "EarthEnv",
        "bases": {"default": "https://publisher.invalid/cloud/"},
        "build": ["cloudbench build cben --climatology {out}"],
        "parts": [_part(name="big", url="MODCF_monthlymean_01.tif", kind="file",
                        size=len(BIG), md5=_md5(BIG)),
                  _part(name="interannualSD", url="MODCF_interannualSD.tif", kind="file",
                        sha256=hashlib.sha256(SD).hexdigest())]},
}}


@pytest.fixture()
def catalog(monkeypatch: pytest.MonkeyPatch, server: Server) -> Server:
    monkeypatch.setattr(dl, "load_yaml", lambda *parts: CATALOG)
    server.files.update({
        "/ROIs1868_summer_s1.tar.gz": S1, "/ROIs1868_summer_s2.tar.gz": S2,
        "/ROIs1868_summer_s2_cloudy.tar.gz": CLOUDY, "/MODCF_monthlymean_01.tif": BIG,
        "/MODCF_interannualSD.tif": SD, "/BigEarthNet-S1.tar.zst": BEN2_S1,
        "/ROIs1158_spring_s1.tar": STREAMED,
    })
    return server


def _fetcher(sleeps: list[float] | None = None, retries: int = 4) -> dl.Fetcher:
    return dl.Fetcher(progress=False, backoff=0.5, retries=retries,
                      sleep=sleeps.append if sleeps is not None else lambda s: None)


def _quiet(line: str) -> None:
    pass


# ---------------------------------------------------------------------- layouts


def test_sen12ms_cr_archives_unpack_into_the_official_layout(catalog: Server, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    out = tmp_path / "cr"
    dl.download("sen12ms-cr", out, only=["ROIs1868_summer"], mirror=catalog.url,
                fetcher=_fetcher())
    tif = out / "ROIs1868_summer_s1" / "s1_1" / "ROIs1868_summer_s1_1_p30.tif"
    assert tif.read_bytes() == bytes([30]) * 5000
    assert (out / "ROIs1868_summer_s2_cloudy" / "s2_cloudy_1").is_dir()
    assert SEN12MSCR.looks_like(out)
    # no archive, partial file or unpacking folder is left; each part has its marker
    state = out / dl.STATE_DIR
    assert sorted(p.name for p in state.iterdir()) == sorted(
        f"ROIs1868_summer_{m}.complete" for m in ("s1", "s2", "s2_cloudy"))
    printed = capsys.readouterr().out
    assert f"next: cloudbench build sen12ms-cr --root {out.resolve()} --out" in printed


def test_sen12ms_archives_of_one_roi_merge(catalog: Server, tmp_path: Path) -> None:
    catalog.files.update({"/ROIs1868_summer_s1.tar.gz": MS_S1,
                          "/ROIs1868_summer_lc.tar.gz": MS_LC})
    dl.download("sen12ms", tmp_path, mirror=catalog.url, fetcher=_fetcher(), echo=_quiet)
    roi = tmp_path / "ROIs1868_summer"
    assert sorted(p.name for p in roi.iterdir()) == ["lc_1", "s1_1"]
    assert (roi / "lc_1" / "ROIs1868_summer_lc_1_p30.tif").read_bytes() == b"b" * 3000


def test_a_tar_zst_unpacks(catalog: Server, tmp_path: Path) -> None:
    dl.download("bigearthnet-v2", tmp_path, mirror=catalog.url, fetcher=_fetcher(),
                echo=_quiet)
    name = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
    tif = tmp_path / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043" / name / f"{name}_VV.tif"
    assert tif.read_bytes() == b"vv" * 3000


def test_a_member_outside_the_folder_is_refused(catalog: Server, tmp_path: Path) -> None:
    evil = _targz({"../escaped.tif": b"x"})
    catalog.files["/ROIs1868_summer_s2_cloudy.tar.gz"] = evil
    with pytest.raises(CloudbenchError, match="not a valid tar.gz archive.*twice"):
        dl.download("sen12ms-cr", tmp_path / "out", only=["ROIs1868_summer_s2_cloudy"],
                    mirror=catalog.url, fetcher=_fetcher(), echo=_quiet)
    assert not (tmp_path / "escaped.tif").exists()


# ---------------------------------------------------------------------- faults


def test_a_cut_connection_resumes_where_it_stopped(catalog: Server, tmp_path: Path) -> None:
    cut = 123_457  # not a multiple of any read size
    catalog.faults["/MODCF_monthlymean_01.tif"] = [f"cut:{cut}"]
    sleeps: list[float] = []
    dl.download("earthenv", tmp_path, only=["big"], mirror=catalog.url,
                fetcher=_fetcher(sleeps), echo=_quiet)
    assert catalog.gets("/MODCF_monthlymean_01.tif") == [None, f"bytes={cut}-"]
    assert (tmp_path / "MODCF_monthlymean_01.tif").read_bytes() == BIG  # md5 checked too
    assert sleeps == [0.5]


def test_an_archive_unpacks_as_it_arrives_and_a_failed_run_resumes(catalog: Server,
                                                                    tmp_path: Path) -> None:
    """The first run stops with an error when its connection is cut (no retries; in-process,
    not a killed process), the second resumes from the byte and the member it reached."""
    out = tmp_path / "cr"
    cut = len(FIRST) + 2 * 512 + 100  # past the first member, before the second's end
    catalog.faults["/ROIs1158_spring_s1.tar"] = [f"cut:{cut}"]
    with pytest.raises(CloudbenchError, match="after 1 tries.*resumes"):
        dl.download("sen12ms-cr", out, only=["ROIs1158_spring_s1"], mirror=catalog.url,
                    fetcher=_fetcher(retries=0), echo=_quiet)
    state = out / dl.STATE_DIR
    # nothing visible; the bytes received are kept; the first member was already unpacked
    assert sorted(p.name for p in out.iterdir()) == [dl.STATE_DIR]
    assert (state / "ROIs1158_spring_s1.tar.part").stat().st_size == cut
    first = state / "ROIs1158_spring_s1.extracting" / "ROIs1158_spring_s1" / "s1_1"
    assert (first / "ROIs1158_spring_s1_1_p1.tif").read_bytes() == FIRST
    # a new run (a new process would do the same) asks only for the rest
    dl.download("sen12ms-cr", out, only=["ROIs1158_spring_s1"], mirror=catalog.url,
                fetcher=_fetcher(), echo=_quiet)
    assert catalog.gets("/ROIs1158_spring_s1.tar") == [None, f"bytes={cut}-"]
    tifs = out / "ROIs1158_spring_s1" / "s1_1"
    assert (tifs / "ROIs1158_spring_s1_1_p2.tif").read_bytes() == b"last" * 100
    assert sorted(p.name for p in state.iterdir()) == ["ROIs1158_spring_s1.complete"]


def test_a_server_ignoring_range_is_read_from_zero(catalog: Server, tmp_path: Path) -> None:
    state = tmp_path / dl.STATE_DIR
    state.mkdir()
    (state / "MODCF_interannualSD.tif.part").write_bytes(SD[:400])
    catalog.faults["/MODCF_interannualSD.tif"] = ["ignore_range"]
    dl.download("earthenv", tmp_path, only=["interannualSD"], mirror=catalog.url,
                fetcher=_fetcher(), echo=_quiet)
    assert catalog.gets("/MODCF_interannualSD.tif") == ["bytes=400-"]  # one answer, from 0
    assert (tmp_path / "MODCF_interannualSD.tif").read_bytes() == SD  # sha256 checked


def test_a_partial_file_of_another_version_is_dropped(catalog: Server, tmp_path: Path) -> None:
    """Where a server ignores Range, the bytes it sends first are compared with those kept:
    they differ, so the file changed, and the download starts over."""
    state = tmp_path / dl.STATE_DIR
    state.mkdir()
    (state / "MODCF_interannualSD.tif.part").write_bytes(b"junk" * 100)
    catalog.faults["/MODCF_interannualSD.tif"] = ["ignore_range"]
    dl.download("earthenv", tmp_path, only=["interannualSD"], mirror=catalog.url,
                fetcher=_fetcher(), echo=_quiet)
    assert catalog.gets("/MODCF_interannualSD.tif") == ["bytes=400-", None]
    assert (tmp_path / "MODCF_interannualSD.tif").read_bytes() == SD


def test_content_encoding_does_not_change_the_bytes(catalog: Server, tmp_path: Path) -> None:
    catalog.faults["/ROIs1868_summer_s1.tar.gz"] = ["gzip_encoding"]
    dl.download("sen12ms-cr", tmp_path, only=["ROIs1868_summer_s1"], mirror=catalog.url,
                fetcher=_fetcher(), echo=_quiet)  # md5 of the archive as stored: checked
    assert (tmp_path / "ROIs1868_summer_s1" / "s1_1").is_dir()


def test_a_wrong_checksum_is_fetched_again_then_refused(catalog: Server, tmp_path: Path) -> None:
    catalog.faults["/MODCF_monthlymean_01.tif"] = ["corrupt", "corrupt"]
    with pytest.raises(CloudbenchError, match="wrong md5 checksum.*twice"):
        dl.download("earthenv", tmp_path, only=["big"], mirror=catalog.url, fetcher=_fetcher(),
                    echo=_quiet)
    assert catalog.gets("/MODCF_monthlymean_01.tif") == [None, None]
    assert not (tmp_path / "MODCF_monthlymean_01.tif").exists()
    assert not list((tmp_path / dl.STATE_DIR).iterdir())  # both bad copies deleted


def test_one_bad_copy_is_replaced(catalog: Server, tmp_path: Path) -> None:
    catalog.faults["/MODCF_monthlymean_01.tif"] = ["corrupt"]
    dl.download("earthenv", tmp_path, only=["big"], mirror=catalog.url, fetcher=_fetcher(),
                echo=_quiet)
    assert (tmp_path / "MODCF_monthlymean_01.tif").read_bytes() == BIG


def test_a_corrupt_archive_leaves_nothing_visible(catalog: Server, tmp_path: Path) -> None:
    catalog.faults["/ROIs1868_summer_s1.tar.gz"] = ["corrupt"]
    lines: list[str] = []
    dl.download("sen12ms-cr", tmp_path, only=["ROIs1868_summer_s1"], mirror=catalog.url,
                fetcher=_fetcher(), echo=lines.append)
    assert catalog.gets("/ROIs1868_summer_s1.tar.gz") == [None, None]
    assert sorted(p.name for p in tmp_path.iterdir()) == [dl.STATE_DIR, "ROIs1868_summer_s1"]


def test_a_404_names_the_url_and_mirror(catalog: Server, tmp_path: Path) -> None:
    del catalog.files["/MODCF_interannualSD.tif"]
    with pytest.raises(CloudbenchError) as err:
        dl.download("earthenv", tmp_path, only=["interannualSD"], mirror=catalog.url,
                    fetcher=_fetcher(), echo=_quiet)
    assert f"{catalog.url}MODCF_interannualSD.tif answered HTTP 404" in str(err.value)
    assert "--mirror" in str(err.value)
    assert len(catalog.log) == 1  # not retried


def test_5xx_answers_back_off_exponentially(catalog: Server, tmp_path: Path) -> None:
    catalog.faults["/MODCF_interannualSD.tif"] = ["503", "503", "503"]
    sleeps: list[float] = []
    dl.download("earthenv", tmp_path, only=["interannualSD"], mirror=catalog.url,
                fetcher=_fetcher(sleeps), echo=_quiet)
    assert sleeps == [0.5, 1.0, 2.0]
    catalog.faults["/MODCF_interannualSD.tif"] = ["503"] * 10
    waits: list[float] = []
    with pytest.raises(CloudbenchError, match="after 5 tries: HTTP 503"):
        dl.Fetcher(progress=False, sleep=waits.append).fetch(
            f"{catalog.url}MODCF_interannualSD.tif", tmp_path / "again.tif")
    assert waits == [2.0, 4.0, 8.0, 16.0]  # the defaults


# ---------------------------------------------------------------------- plans


def test_dry_run_fetches_nothing_and_asks_the_sizes(catalog: Server, tmp_path: Path) -> None:
    lines: list[str] = []
    dl.download("sen12ms-cr", tmp_path / "cr", mirror=catalog.url, only=["ROIs1868_summer"],
                dry_run=True, fetcher=_fetcher(), echo=lines.append)
    assert catalog.log == []  # no GET
    assert sorted(catalog.heads) == ["/ROIs1868_summer_s2.tar.gz",
                                     "/ROIs1868_summer_s2_cloudy.tar.gz"]  # the unknown sizes
    assert not (tmp_path / "cr").exists()
    assert f"{catalog.url}ROIs1868_summer_s1.tar.gz" in lines[0]
    total = len(S1) + len(S2) + len(CLOUDY)
    assert lines[-1] == (f"to fetch: 3 of 3 part(s), {dl.human(total)}; nothing fetched "
                         "(--dry-run)")


def test_a_complete_part_is_skipped(catalog: Server, tmp_path: Path) -> None:
    dl.download("earthenv", tmp_path, mirror=catalog.url, fetcher=_fetcher(), echo=_quiet)
    requests_before = len(catalog.log)
    lines: list[str] = []
    dl.download("earthenv", tmp_path, mirror=catalog.url, fetcher=_fetcher(), echo=lines.append)
    assert len(catalog.log) == requests_before
    assert "big: already complete, skipped" in lines


def test_too_little_disk_space_is_refused_before_any_transfer(catalog: Server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr(dl, "free_space", lambda path: 10)
    with pytest.raises(CloudbenchError, match="not enough free disk space") as err:
        dl.download("sen12ms-cr", tmp_path, mirror=catalog.url, only=["ROIs1868_summer"],
                    fetcher=_fetcher(), echo=_quiet)
    # S1's size from the catalog, the others' from HEAD; archives count twice
    assert dl.human(2 * (len(S1) + len(S2) + len(CLOUDY))) in str(err.value)
    assert catalog.log == []


def test_a_size_learnt_from_the_answer_is_checked_against_the_disk(
        catalog: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that does not answer HEAD still gives Content-Length with the file: checked
    before the first byte is written."""
    monkeypatch.setattr(dl.Fetcher, "sizes", lambda self, parts: {p.name: None for p in parts})
    monkeypatch.setattr(dl, "free_space", lambda path: len(SD) - 1)
    with pytest.raises(CloudbenchError, match=f"{dl.human(len(SD))} still to come"):
        dl.download("earthenv", tmp_path, only=["interannualSD"], mirror=catalog.url,
                    fetcher=_fetcher(), echo=_quiet)
    assert (tmp_path / dl.STATE_DIR / "MODCF_interannualSD.tif.part").stat().st_size == 0


def test_weights_go_through_the_fetcher(monkeypatch: pytest.MonkeyPatch, server: Server,
                                        tmp_path: Path) -> None:
    from cloudbench.models import weights

    data = b"state dict" * 1000
    digest = hashlib.sha256(data).hexdigest()
    name = f"resnet50-{digest[:8]}.pth"
    server.files["/w/" + name] = data
    entry = weights.WeightEntry("resnet50", "s2", "ResNet50_Weights.X",
                                f"https://hub.invalid/ssl4eo/{name}", tmp_path / "hub" / name)
    monkeypatch.setattr(weights, "select", lambda names: [entry])
    lines: list[str] = []
    dl.download("ssl4eo-weights", None, mirror=server.url + "w", fetcher=_fetcher(),
                echo=lines.append)
    assert entry.path.read_bytes() == data  # the sha256 prefix of its name checked
    assert lines == [f"resnet50:s2: {entry.path}", "next: cloudbench weights list"]
    bad = f"resnet50-{'0' * 8}.pth"
    server.files["/w/" + bad] = data
    wrong = weights.WeightEntry("resnet50", "s2", "ResNet50_Weights.X", server.url + "w/" + bad,
                                tmp_path / "hub" / bad)
    with pytest.raises(CloudbenchError, match="ResNet50_Weights.X: .*wrong sha256.*00000000"):
        weights.fetch(wrong, fetcher=_fetcher())
    assert not wrong.path.exists()


# ---------------------------------------------------------------------- raw folders


def test_info_on_a_raw_bigearthnet_folder_names_what_is_missing(capsys: pytest.CaptureFixture,
                                                                tmp_path: Path) -> None:
    # the reader finds the S2 and S1 folders by content, whatever their names
    for folder, patch, band in (("BigEarthNet-v1.0", "S2A_MSIL2A_20170613T101031_0_45", "B02"),
                                ("my-s1", "S1A_IW_GRDH_1SDV_20170613T165043_33UPU_0_45", "VV")):
        (tmp_path / folder / patch).mkdir(parents=True)
        (tmp_path / folder / patch / f"{patch}_{band}.tif").write_bytes(b"")
    (tmp_path / "patches_with_cloud_and_shadow.csv.bz2").write_bytes(b"")
    (tmp_path / "patches_with_seasonal_snow.csv").write_bytes(b"")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "raw BigEarthNet v1.0" in out and "4 of 7 part(s) present" in out
    assert "missing: splits_train (the official train split list)" in out
    assert f"`cloudbench download bigearthnet --out {tmp_path} --only splits`" in out
    (tmp_path / "train.csv").write_text("")
    assert main(["info", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["missing"] == ["splits_val", "splits_test"]
    assert summary["command"].endswith("--only splits_val,splits_test")


@pytest.mark.skipif(not (REALDATA / "bigearthnet_v1").is_dir(), reason="needs ../shared")
def test_info_on_the_real_bigearthnet_files(capsys: pytest.CaptureFixture) -> None:
    root = REALDATA / "bigearthnet_v1"  # real S2/S1 patch folders and an exclusion list
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "raw BigEarthNet v1.0" in out
    assert f"run `cloudbench download bigearthnet --out {root} --only splits`" in out


def test_info_on_a_half_downloaded_sen12ms_cr_folder(catalog: Server, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    dl.download("sen12ms-cr", tmp_path, only=["ROIs1868_summer_s1"], mirror=catalog.url,
                fetcher=_fetcher(), echo=_quiet)
    catalog.faults["/ROIs1158_spring_s1.tar"] = ["cut:1000"]
    with pytest.raises(CloudbenchError):
        dl.download("sen12ms-cr", tmp_path, only=["ROIs1158_spring_s1"], mirror=catalog.url,
                    fetcher=_fetcher(retries=0), echo=_quiet)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "raw SEN12MS-CR, 1 of 4 part(s) present" in out
    assert "ROIs1158_spring_s1, 1000 B downloaded" in out
    # a part's own name selects it alone (a group only where it adds parts)
    assert f"`cloudbench download sen12ms-cr --out {tmp_path} --only ROIs1868_summer_s2," \
           "ROIs1868_summer_s2_cloudy,ROIs1158_spring_s1`" in out
    assert [p.name for p in dl.select(dl.dataset("sen12ms-cr"), ["ROIs1868_summer_s2"])] == [
        "ROIs1868_summer_s2"]


def test_info_on_a_folder_of_nothing_known(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("")
    code = main(["info", str(tmp_path)])
    assert "not a cloudbench dataset" in _one_error(code, capsys.readouterr().err)


# ---------------------------------------------------------------------- the shipped catalog


def test_the_shipped_catalog_lists_every_dataset() -> None:
    known = dl.datasets()
    assert {"sen12ms", "sen12ms-cr", "bigearthnet", "bigearthnet-v2", "earthenv",
            "ssl4eo-weights"} <= set(known)
    earthenv = [p.filename for p in known["earthenv"].parts]
    assert earthenv == [f"MODCF_monthlymean_{m:02d}.tif" for m in range(1, 13)] + [
        "MODCF_interannualSD.tif"]
    ben = {p.filename for p in known["bigearthnet"].parts}
    assert {"train.csv", "val.csv", "test.csv", "BigEarthNet-S2-v1.0.tar.gz"} <= ben
    # SEN12MS and SEN12MS-CR: every ROI and season of the publisher, per modality
    seasons = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
    assert [p.name for p in known["sen12ms"].parts] == [
        f"{s}_{m}" for s in seasons for m in ("lc", "s1", "s2")]
    assert [p.name for p in known["sen12ms-cr"].parts] == [
        f"{s}_{m}" for s in seasons for m in ("s1", "s2", "s2_cloudy")]
    for ds in known.values():
        for part in ds.parts:
            assert part.full_url().startswith("https://")
            for value, length in ((part.md5, 32), (part.sha256, 64)):
                assert value is None or len(value) == length


def test_the_shipped_layouts_are_what_the_readers_find(tmp_path: Path) -> None:
    """What each shipped part `provides` is where the builders' readers look."""
    from cloudbench.sources.sen12ms import SEN12MS

    known = dl.datasets()
    for part in known["sen12ms"].parts:
        (tmp_path / "ms" / part.provides.replace("*", "1")).mkdir(parents=True)
    roi, mod = "ROIs1868_summer", "s1"
    (tmp_path / "ms" / roi / f"{mod}_1" / f"{roi}_{mod}_1_p30.tif").write_bytes(b"")
    assert SEN12MS(tmp_path / "ms").patches("s1")  # found in the layout the archives give
    assert dl.raw_report(tmp_path / "ms").missing == ()  # type: ignore[union-attr]
    for part in known["sen12ms-cr"].parts:
        (tmp_path / "cr" / part.provides).mkdir(parents=True)
    assert SEN12MSCR.looks_like(tmp_path / "cr")
    v2 = {p.provides for p in known["bigearthnet-v2"].parts}
    assert v2 == {"BigEarthNet-S1", "BigEarthNet-S2", "metadata.parquet"}


def test_dry_run_of_the_shipped_catalog_with_a_mirror(server: Server, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    server.files["/m/ROIs1868_summer_s1.tar.gz"] = b"x" * 2048
    code = main(["download", "sen12ms", "--out", str(tmp_path / "ms"), "--dry-run",
                 "--only", "ROIs1868_summer", "--mirror", server.url + "m"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{server.url}m/ROIs1868_summer_s1.tar.gz" in out
    assert "ROIs1158" not in out
    assert "to fetch: 3 of 3 part(s), 2.0 KiB + 2 part(s) of unknown size" in out
    assert not (tmp_path / "ms").exists()


def _one_error(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["download", "sen13ms", "--out", "x"], "no downloadable dataset 'sen13ms'"),
    (["download", "sen12ms", "--out", "x", "--only", "ROIs9999_winter"],
     "sen12ms has no part 'ROIs9999_winter'"),
    (["download", "earthenv"], "needs --out"),
])
def test_cli_user_errors(args: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    code = main(args)
    assert needle in _one_error(code, capsys.readouterr().err)


def test_cli_download_through_a_mirror(catalog: Server, tmp_path: Path,
                                       capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "env"
    assert main(["download", "earthenv", "--out", str(out), "--mirror", catalog.url]) == 0
    assert (out / "MODCF_interannualSD.tif").read_bytes() == SD
    assert f"next: cloudbench build cben --climatology {out.resolve()}" in capsys.readouterr().out
    del catalog.files["/MODCF_monthlymean_01.tif"]
    (out / dl.STATE_DIR / "big.complete").unlink()
    monkeypatch.setattr(time, "sleep", lambda s: None)
    code = main(["download", "earthenv", "--out", str(out), "--mirror", catalog.url])
    assert "--mirror" in _one_error(code, capsys.readouterr().err)
