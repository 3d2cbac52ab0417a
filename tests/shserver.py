"""A loopback fake of the Sentinel Hub API parts cloudbench uses, serving SyntheticWorlds.

Endpoints (any path prefix before ``/api/v1/`` or ``/oauth/token`` is accepted and logged, so a
test can prove which base URL a client used):

* ``POST .../oauth/token``: OAuth client credentials -> a JWT-shaped bearer token.
* ``POST .../api/v1/catalog/1.0.0/search``: STAC search with ``collections``, ``datetime``,
  ``bbox`` / ``intersects``, a ``cql2-text`` ``filter`` of ``field='value'`` / ``field <= n`` /
  ``field >= n`` terms joined by ``AND``, ``limit`` and ``next`` paging (pages of at most
  ``page_size``). The results are the union over the worlds, sorted by time. S2 features carry
  ``eo:cloud_cover``, ``s2:mgrs_tile``, ``s2:processing_baseline`` and, where the world has
  them, ``s2:cloud_shadow_percentage`` and ``s2:thin_cirrus_percentage``.
* ``POST .../api/v1/process``: bbox + CRS, width/height, one input of type ``sentinel-2-l1c``,
  ``sentinel-2-l2a`` or ``sentinel-1-grd`` with ``dataFilter.timeRange`` (and
  ``orbitDirection``) and ``processing.harmonizeValues``; the evalscript is checked as the
  service runs it (``parse_evalscript``: version 3, input bands of the collection with their
  units, a known sample type, ``evaluatePixel`` returning the declared number of values; a
  400 ``EXECUTION_ERROR`` otherwise) and its returned bands are served, in that order. Of the
  worlds whose footprint meets the bbox, the one with the newest acquisition in the time range
  renders that acquisition (``mostRecent``; the first world listed on a tie) with
  ``world.read`` on the grid, and the server returns a float32 GeoTIFF, NaN where the world has
  no data. Values per unit:
  ``REFLECTANCE`` the world's (harmonised), ``DN`` ``round(reflectance * 10000)`` plus 1000 for
  products of processing baseline >= 04.00 when ``harmonizeValues`` is false (true or absent:
  no offset, the service's default), ``LINEAR_POWER`` S1 ``10^(dB / 10)``. L2A's ``SCL`` band
  (``DN``) serves ``world.scene_classes``: class codes, never offset.

**MGRS tiling** (``mgrs=True``; off by default, so the server then serves one item per world
acquisition as above). The catalog then behaves like the real Sentinel Hub / CDSE Catalog API for
Sentinel-2, as its published example item shows (``S2B_MSIL2A_20201229T101329_N0214_R022_T33TUK_
20201229T115442``: ``datetime`` 10:18:19, five minutes after the name's 10:13:29; properties
``datetime``, ``platform``, ``constellation``, ``instruments``, ``gsd``, ``eo:cloud_cover``,
``proj:epsg``, ``proj:bbox`` = the tile's 109.8 km square, ``proj:geometry``; no ``s2:*`` and
no ``sat:*`` property):

* each world S2 acquisition (a *datatake*: one pass) becomes one item per Sentinel-2 tile
  meeting the world: tiles are 109.8 km squares in the world's UTM zone whose upper-left
  corners sit at (100 km x i, 100 km x j + 40 m), as real tiles do (``T33TUK``: ``proj:bbox``
  300000, 4890240, 409800, 5000040), so neighbours overlap by 9.8 km; an item's geometry is the
  part of its tile the world covers (the data footprint);
* the id is the product name, ``S2A_MSIL2A_<datatake start>_N<baseline>_R<relative orbit>_
  T<tile>_<discriminator>``: the datatake start is the world acquisition's time; ``datetime``
  is the tile's sensing time, ``sensing_delay`` later (4 min 50 s by default, as in the example
  above; ESA's granule sensing time "usually differs a few minutes" from the datatake's) plus 15
  s per tile row south of the world's northernmost tile (descending pass: about 100 km of
  ground track per 15 s), the same for tiles of one row: seconds apart, as real tiles are;
* the relative orbit is ``relative_orbit`` (an int, or a function of the world acquisition),
  the platform the world's; ``reprocessings`` (world S2 time -> baseline) adds a second product
  of every tile of that pass with that baseline and a later discriminator (a reprocessing), of
  the same ``datetime``; ``tile_cloud_cover`` (a function of the world acquisition and the tile
  name) gives each tile its own ``eo:cloud_cover`` (default: the world's cover);
* ``tile_baselines`` (a function of the world acquisition and the tile name) gives each tile its
  own processing baseline (default: the world's): one pass whose tiles are of two baselines, as
  when a reprocessing campaign has reached some tiles and not others;
* the Process API filters tile items on their ``datetime`` (the tile sensing time) and mosaics
  the items meeting the bbox per pixel (``mostRecent``): a pixel comes from the newest item
  whose footprint covers it, then the newest baseline. Every tile of a pass shows the same
  world acquisition, so the reflectance is the same whichever tile wins; with
  ``harmonizeValues`` false each pixel carries the offset of *its* tile's baseline, so a mosaic
  across tiles of two baselines is on two scales, as the service warns ("careful with
  mosaicking").

Fault knobs (per instance, for ``/api/v1/process`` unless ``fault_paths`` says otherwise):
``fail_429`` (+ ``retry_after_ms``), ``fail_500``, ``truncate`` and ``slow`` (+ ``slow_seconds``)
are counts of responses still to spoil. ``log`` lists every request (method, path, JSON body or
the token form without its secret, response status).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from cloudbench.sources.base import Acquisition, Collection, Grid
from cloudbench.sources.synthetic import SyntheticWorld, _mgrs_tile

SCL = "SCL"
"""Sen2Cor's scene classification band (L2A), served from ``SyntheticWorld.scene_classes``."""
CLIENT_ID = "cloudbench-test-client"
CLIENT_SECRET = "s3cr3t-DO-NOT-LEAK-7f3a"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _has_offset(acq: Acquisition) -> bool:
    """Whether the product's DNs carry the -1000 offset (processing baseline >= 04.00)."""
    return float(acq.properties["processing_baseline"]) >= 4.0


TILE_SIDE = 109_800.0
"""Side of a Sentinel-2 tile (metres): 100 km MGRS squares plus 9.8 km of overlap."""
TILE_STEP = 100_000.0
TILE_TOP_OFFSET = 40.0
"""Real tiles' upper edges sit 40 m north of the 100 km lines (T33TUK: 5000040)."""
ROW_SECONDS = 15.0
"""Tile sensing time added per tile row south (about 100 km of ground track)."""


@dataclass(frozen=True)
class Item:
    """One catalog item of the MGRS-tiled catalog: a tile of a world acquisition's pass."""

    id: str
    world: SyntheticWorld
    acquisition: Acquisition
    """The world acquisition (the pass) whose pixels the tile shows."""
    datetime: dt.datetime
    """The tile's sensing time (the item's ``datetime``)."""
    footprint: BaseGeometry
    """EPSG:4326: the part of the tile the world covers."""
    tile: str
    baseline: str
    relative_orbit: int
    cloud_cover: float | None
    epsg: int
    tile_bbox: tuple[float, float, float, float]
    """The tile's 109.8 km square in its UTM CRS (``proj:bbox``)."""
    utm_geometry: BaseGeometry


def mgrs_tile_squares(grid: Grid) -> list[tuple[str, tuple[float, float, float, float], int]]:
    """(tile name, (left, bottom, right, top) in the grid's UTM CRS, row index) of every
    Sentinel-2 tile whose 109.8 km square meets ``grid`` with a positive area; the row index
    counts tile rows south of the northernmost one."""
    left, bottom, right, top = grid.bounds
    tiles = []
    rows = range(int((bottom - TILE_TOP_OFFSET) // TILE_STEP),
                 int((top - TILE_TOP_OFFSET + TILE_SIDE) // TILE_STEP) + 1)
    columns = range(int((left - TILE_SIDE) // TILE_STEP), int(right // TILE_STEP) + 1)
    for j in sorted(rows, reverse=True):
        t = j * TILE_STEP + TILE_TOP_OFFSET
        b = t - TILE_SIDE
        if not (b < top and t > bottom):
            continue
        for i in columns:
            lft = i * TILE_STEP
            rgt = lft + TILE_SIDE
            if not (lft < right and rgt > left):
                continue
            name = _mgrs_tile(grid.crs, lft + TILE_STEP / 2, t - TILE_TOP_OFFSET - TILE_STEP / 2)
            tiles.append((name, (lft, b, rgt, t), j))
    northernmost = max((j for *_, j in tiles), default=0)
    return [(name, bounds, northernmost - j) for name, bounds, j in tiles]


def product_name(acq: Acquisition, tile: str, baseline: str, orbit: int,
                 discriminator: dt.datetime) -> str:
    """The Sentinel-2 product name (without ``.SAFE``) of a tile of ``acq``'s datatake."""
    unit = "B" if str(acq.properties.get("platform", "")).lower().endswith("b") else "A"
    level = "L1C" if acq.collection is Collection.S2_L1C else "L2A"
    major, minor = baseline.split(".")
    return (f"S2{unit}_MSI{level}_{acq.datetime:%Y%m%dT%H%M%S}_N{int(major):02d}{int(minor):02d}"
            f"_R{orbit:03d}_T{tile}_{discriminator:%Y%m%dT%H%M%S}")


class SHServer:
    """The fake service over one world or several; use as a context manager or call
    ``start()`` / ``stop()``."""

    def __init__(
        self,
        world_or_worlds: SyntheticWorld | Sequence[SyntheticWorld],
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        page_size: int = 2,
        token_lifetime: int = 3600,
        mgrs: bool = False,
        sensing_delay: dt.timedelta = dt.timedelta(minutes=4, seconds=50),
        relative_orbit: int | Callable[[Acquisition], int] = 22,
        reprocessings: Mapping[dt.datetime, str] | None = None,
        tile_cloud_cover: Callable[[Acquisition, str], float] | None = None,
        tile_baselines: Callable[[Acquisition, str], str] | None = None,
    ) -> None:
        self.worlds = (
            [world_or_worlds]
            if isinstance(world_or_worlds, SyntheticWorld)
            else list(world_or_worlds)
        )
        self.client_id = client_id
        self.client_secret = client_secret
        self.page_size = page_size
        self.token_lifetime = token_lifetime
        self.mgrs = mgrs
        self.sensing_delay = sensing_delay
        self.relative_orbit = relative_orbit
        self.reprocessings = dict(reprocessings or {})
        self.tile_cloud_cover = tile_cloud_cover
        self.tile_baselines = tile_baselines
        self._items: dict[Collection, list[Item]] = {}
        self.fail_429 = 0
        self.retry_after_ms = 50
        self.fail_500 = 0
        self.truncate = 0
        self.slow = 0
        self.slow_seconds = 2.0
        self.fault_paths: tuple[str, ...] = ("/api/v1/process",)
        self.log: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> SHServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> SHServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers

    def paths(self, endpoint: str = "") -> list[str]:
        return [e["path"] for e in self.log if endpoint in e["path"]]

    def take_fault(self, path: str) -> str | None:
        """The fault to apply to this request, if any (decrementing its counter)."""
        if not any(path.endswith(p) for p in self.fault_paths):
            return None
        with self._lock:
            for name in ("fail_429", "fail_500", "slow", "truncate"):
                if getattr(self, name) > 0:
                    setattr(self, name, getattr(self, name) - 1)
                    return name
        return None

    def new_token(self) -> str:
        now = int(time.time())
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        claims = {
            "sub": self.client_id,
            "azp": self.client_id,
            "iat": now,
            "exp": now + self.token_lifetime,
            "jti": f"{len(self.tokens)}-{now}",
        }
        token = f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'fake-signature')}"
        with self._lock:
            self.tokens.add(token)
        return token

    def process_requests(self) -> int:
        """How many Process API requests the server has received."""
        return len(self.paths("/api/v1/process"))

    # ------------------------------------------------------------------ MGRS items

    def items(self, collection: Collection) -> list[Item]:
        """The MGRS-tiled catalog's items of an S2 collection (``mgrs=True``), sorted by
        (datetime, id)."""
        collection = Collection(collection)
        with self._lock:
            if collection not in self._items:
                self._items[collection] = sorted(self._make_items(collection),
                                                 key=lambda i: (i.datetime, i.id))
            return self._items[collection]

    def _make_items(self, collection: Collection) -> Iterator[Item]:
        everything = (dt.datetime(1900, 1, 1, tzinfo=dt.UTC),
                      dt.datetime(2200, 1, 1, tzinfo=dt.UTC))
        for world in self.worlds:
            grid = world.grid
            epsg = grid.crs.to_epsg()
            squares = mgrs_tile_squares(grid)
            wl, wb, wr, wt = grid.bounds
            for acq in world.search(collection, None, *everything):
                orbit = (self.relative_orbit(acq) if callable(self.relative_orbit)
                         else int(self.relative_orbit))
                for tile, (lft, b, rgt, t), row in squares:
                    baseline = (self.tile_baselines(acq, tile) if self.tile_baselines
                                else str(acq.properties["processing_baseline"]))
                    products = [(baseline,
                                 acq.datetime + dt.timedelta(hours=2, minutes=3, seconds=11))]
                    if acq.datetime in self.reprocessings:
                        products.append((self.reprocessings[acq.datetime],
                                         acq.datetime + dt.timedelta(days=400, minutes=17)))
                    part = box(max(lft, wl), max(b, wb), min(rgt, wr), min(t, wt))
                    footprint = shape(transform_geom(grid.crs, "EPSG:4326", mapping(part)))
                    when = acq.datetime + self.sensing_delay + dt.timedelta(
                        seconds=ROW_SECONDS * row)
                    cover = (self.tile_cloud_cover(acq, tile) if self.tile_cloud_cover
                             else acq.cloud_cover)
                    for baseline, discriminator in products:
                        yield Item(
                            id=product_name(acq, tile, baseline, orbit, discriminator),
                            world=world, acquisition=acq, datetime=when, footprint=footprint,
                            tile=tile, baseline=baseline, relative_orbit=orbit,
                            cloud_cover=cover, epsg=int(epsg or 0),
                            tile_bbox=(lft, b, rgt, t), utm_geometry=part)

    def world_acquisition(self, item_id: str) -> Acquisition:
        """The world acquisition whose pixels the item ``item_id`` shows (any mode)."""
        if self.mgrs:
            for collection in (Collection.S2_L1C, Collection.S2_L2A):
                for item in self.items(collection):
                    if item.id == item_id:
                        return item.acquisition
        everything = (dt.datetime(1900, 1, 1, tzinfo=dt.UTC),
                      dt.datetime(2200, 1, 1, tzinfo=dt.UTC))
        for world in self.worlds:
            for collection in Collection:
                for acq in world.search(collection, None, *everything):
                    if acq.id == item_id:
                        return acq
        raise KeyError(item_id)

    @staticmethod
    def _item_feature(item: Item) -> dict[str, Any]:
        """A feature as the real Sentinel Hub catalog gives Sentinel-2 items: no ``s2:*`` and
        no ``sat:*`` properties (relative orbit, tile and baseline are in the id only)."""
        crs = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{item.epsg}"}}
        props: dict[str, Any] = {
            "datetime": item.datetime.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": item.acquisition.properties.get("platform"),
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "gsd": 10,
            "eo:cloud_cover": item.cloud_cover,
            "proj:epsg": item.epsg,
            "proj:bbox": list(item.tile_bbox),
            "proj:geometry": {**mapping(item.utm_geometry), "crs": crs},
        }
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": item.id,
            "geometry": mapping(item.footprint),
            "bbox": list(item.footprint.bounds),
            "properties": props,
        }

    # ------------------------------------------------------------------ catalog

    def catalog(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        collections = body.get("collections") or []
        if len(collections) != 1:
            return 400, {"error": {"message": "exactly one collection expected"}}
        try:
            collection = Collection(collections[0])
        except ValueError:
            return 400, {"error": {"message": f"unknown collection {collections[0]!r}"}}
        t0, t1 = (_parse_time(t) for t in body["datetime"].split("/"))
        area = None
        if "intersects" in body:
            area = shape(body["intersects"])
        elif "bbox" in body:
            area = box(*body["bbox"])
        terms = _parse_filter(body.get("filter"))
        if self.mgrs and collection is not Collection.S1_GRD:
            found = [i for i in self.items(collection) if t0 <= i.datetime <= t1
                     and (area is None or area.intersects(i.footprint))]
            features = [f for f in map(self._item_feature, found) if _matches(f, terms)]
        else:
            acqs = sorted(
                (a for world in self.worlds for a in world.search(collection, area, t0, t1)),
                key=lambda a: (a.datetime, a.id),
            )
            features = [f for f in (self._feature(a) for a in acqs) if _matches(f, terms)]
        start = int(body.get("next") or 0)
        limit = min(int(body.get("limit", 100)), self.page_size)
        page = features[start : start + limit]
        context: dict[str, Any] = {"limit": limit, "returned": len(page)}
        if start + limit < len(features):
            context["next"] = start + limit
        return 200, {"type": "FeatureCollection", "features": page, "context": context}

    @staticmethod
    def _feature(acq: Acquisition) -> dict[str, Any]:
        p = acq.properties
        props: dict[str, Any] = {
            "datetime": acq.datetime.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": p.get("platform"),
        }
        if acq.collection is Collection.S1_GRD:
            props.update(
                {
                    "sat:orbit_state": str(p["orbit_direction"]).lower(),
                    "sat:relative_orbit": p.get("relative_orbit"),
                    "sar:instrument_mode": "IW",
                    "s1:polarization": "DV",
                    "s1:resolution": "HIGH",
                    "s1:timeliness": "NRT3h",
                }
            )
        else:
            props.update(
                {
                    "eo:cloud_cover": acq.cloud_cover,
                    "s2:mgrs_tile": p.get("mgrs_tile"),
                    "s2:processing_baseline": p.get("processing_baseline"),
                }
            )
            for key in ("cloud_shadow_percentage", "thin_cirrus_percentage"):
                if p.get(key) is not None:
                    props[f"s2:{key}"] = p[key]
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": acq.id,
            "geometry": mapping(acq.footprint),
            "bbox": list(acq.footprint.bounds),
            "properties": props,
        }

    # ------------------------------------------------------------------ process

    def process(self, body: dict[str, Any]) -> tuple[int, bytes | dict[str, Any]]:
        bounds = body["input"]["bounds"]
        crs_url = bounds["properties"]["crs"]
        match = re.search(r"EPSG/0/(\d+)$", crs_url)
        if not match:
            return 400, {"error": {"message": f"unsupported CRS {crs_url}"}}
        crs = CRS.from_epsg(int(match.group(1)))
        left, bottom, right, top = bounds["bbox"]
        out = body["output"]
        width, height = int(out["width"]), int(out["height"])
        grid = Grid(
            crs,
            Affine((right - left) / width, 0.0, left, 0.0, -(top - bottom) / height, top),
            width,
            height,
        )
        (data,) = body["input"]["data"]
        collection = Collection(data["type"])
        dfilter = data.get("dataFilter", {})
        time_range = dfilter["timeRange"]
        t0, t1 = _parse_time(time_range["from"]), _parse_time(time_range["to"])
        try:
            bands, unit, sample_type = parse_evalscript(body["evalscript"], collection)
            for response in out.get("responses", []):
                if response.get("identifier") != "default":  # the script's only output
                    raise ValueError(f"Output {response.get('identifier')} requested but "
                                     "missing from function setup()")
        except ValueError as err:
            return 400, {"error": {"status": 400, "reason": "Bad Request",
                                   "message": f"Failed to evaluate script! {err}",
                                   "code": "EXECUTION_ERROR"}}
        orbit = dfilter.get("orbitDirection")
        newest: tuple[SyntheticWorld, Acquisition] | None = None
        mosaic: list[Item] = []  # the tile items mosaicked (MGRS mode), in painting order
        if self.mgrs and collection is not Collection.S1_GRD:
            # tile items filtered on their own datetime (the tile sensing time); mostRecent,
            # per pixel: the newest item covering it, then the newest baseline
            area = grid.footprint()
            mosaic = sorted((i for i in self.items(collection)
                             if t0 <= i.datetime <= t1 and area.intersects(i.footprint)),
                            key=lambda i: (i.datetime, i.baseline))
            if mosaic:
                newest = (mosaic[-1].world, mosaic[-1].acquisition)
        else:
            for world in self.worlds:
                acqs = world.search(collection, grid.footprint(), t0, t1)
                if orbit:
                    acqs = [a for a in acqs if a.properties.get("orbit_direction") == orbit]
                # mostRecent mosaicking: the newest acquisition wins.
                if acqs and (newest is None or acqs[-1].datetime > newest[1].datetime):
                    newest = (world, acqs[-1])
        dtype = "uint16" if sample_type == "UINT16" else "float32"
        if newest is None:
            empty = np.full((len(bands), height, width), np.nan, np.float32)
            return 200, _geotiff(empty, grid, dtype)
        world, acq = newest
        if SCL in bands and collection is not Collection.S2_L2A:
            return 400, {"error": {"message": f"band SCL does not exist in {collection.value}"}}
        values = [b for b in bands if b != SCL]
        pixels = np.zeros((len(bands), height, width), np.float32)
        optical = [k for k, b in enumerate(bands) if b != SCL]
        if values:
            pixels[optical] = world.read(acq, grid, values)
        if unit == "LINEAR_POWER":
            pixels = (10.0 ** (pixels / 10.0)).astype(np.float32)
        elif unit == "DN":
            dn = np.round(pixels[optical].astype(np.float64) * 10000)
            harmonize = data.get("processing", {}).get("harmonizeValues", True)
            if not harmonize:  # the products' own DNs: each tile's offset where it mosaics
                dn += (self._offsets(mosaic, grid) if mosaic
                       else np.float64(1000 * _has_offset(acq)))
            pixels[optical] = dn.astype(np.float32)
            if SCL in bands:  # class codes: never offset; 0 (no data) outside the world
                pixels[bands.index(SCL)] = world.scene_classes(acq, grid)
        return 200, _geotiff(pixels, grid, dtype)

    @staticmethod
    def _offsets(mosaic: Sequence[Item], grid: Grid) -> np.ndarray:
        """The DN offset (1000 from baseline 04.00 on, else 0) of the tile item that mosaics
        each pixel of ``grid``: items painted in order, the last covering a pixel wins."""
        offsets = np.zeros((grid.height, grid.width), np.float64)
        for item in mosaic:
            crs = CRS.from_epsg(item.epsg)
            inside = rasterize([transform_geom(crs, grid.crs, mapping(item.utm_geometry))],
                               out_shape=(grid.height, grid.width), transform=grid.transform,
                               fill=0, default_value=1, dtype="uint8").astype(bool)
            offsets[inside] = 1000.0 if float(item.baseline) >= 4.0 else 0.0
        return offsets


SAMPLE_TYPES = ("INT8", "UINT8", "INT16", "UINT16", "FLOAT32", "AUTO")
UNITS = {Collection.S1_GRD: ("LINEAR_POWER",), Collection.S2_L1C: ("REFLECTANCE", "DN"),
         Collection.S2_L2A: ("REFLECTANCE", "DN")}
"""The units the server serves per collection (``dataMask`` and ``SCL``: ``DN`` only)."""

_NAME = re.compile(r'"(\w+)"')
_LITERAL = re.compile(r"NaN|-?\d+(\.\d+)?")


def _names(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")] if text.strip() else []
    if not items or not all(_NAME.fullmatch(t) for t in items):
        raise ValueError(f"{what} must be a list of quoted names, got [{text}]")
    return [t.strip('"') for t in items]


def parse_evalscript(script: str, collection: Collection) -> tuple[list[str], str, str]:
    """What the service needs of the evalscript cloudbench writes, checked as strictly as the
    service runs it: (the output bands, in ``evaluatePixel``'s order; their unit; the sample
    type). A version other than 3, an input band the collection lacks, units that are not
    one per input band (or one for all) or not the band's, an unknown sample type, and an
    ``evaluatePixel`` whose returns do not hold the declared number of values (input
    bands, or number literals where ``dataMask`` is 0) are errors, as the service's are."""
    if not script.startswith("//VERSION=3\n"):
        raise ValueError("this server runs evalscripts of //VERSION=3 only")
    if not re.match(r"//VERSION=3\n\s*function\s+setup\s*\(\s*\)\s*\{\s*return\s*\{[^{}]*(\{[^{}]*"
                    r"\}[^{}]*)*\}\s*;\s*\}\s*function\s+evaluatePixel\b", script):
        raise ValueError("SyntaxError: setup() must be `function setup() { return {...}; }`, "
                         "then evaluatePixel")
    setup = re.search(r"input:\s*\[\s*\{\s*bands:\s*\[([^\]]*)\],\s*units:\s*"
                      r"(\[[^\]]*\]|\"\w+\")\s*\}\s*\]", script)
    output = re.search(r'output:\s*\{\s*id:\s*"default",\s*bands:\s*(\d+),\s*'
                       r'sampleType:\s*"(\w+)"\s*\}', script)
    pixel = re.search(r"function\s+evaluatePixel\(\s*s\s*\)\s*\{(.*)\}\s*$", script, re.S)
    if not setup or not output or not pixel:
        raise ValueError("setup() must return input: [{bands, units}] and output: {id: "
                         "'default', bands, sampleType}, and evaluatePixel(s) be defined")
    inputs = _names(setup.group(1), "input bands")
    units = _names(setup.group(2).strip("[]"), "units")
    if len(units) == 1:
        units = units * len(inputs)
    if len(units) != len(inputs):
        raise ValueError(f"{len(units)} units for {len(inputs)} input bands")
    allowed = set(collection.bands) | {"dataMask"} | (
        {SCL} if collection is Collection.S2_L2A else set())
    for band, unit in zip(inputs, units, strict=True):
        if band not in allowed:
            raise ValueError(f"band {band} does not exist in {collection.value}")
        served = ("DN",) if band in ("dataMask", SCL) else UNITS[collection]
        if unit not in served:
            raise ValueError(f"unit {unit} of band {band}: one of {', '.join(served)}")
    count, sample_type = int(output.group(1)), output.group(2)
    if sample_type not in SAMPLE_TYPES:
        raise ValueError(f"sampleType {sample_type}: one of {', '.join(SAMPLE_TYPES)}")
    body = pixel.group(1)
    empty = re.fullmatch(r"\s*if\s*\(\s*s\.dataMask\s*==\s*0\s*\)\s*return\s*\[([^\]]*)\];"
                         r"\s*return\s*\[([^\]]*)\];\s*", body)
    if not empty:
        raise ValueError("evaluatePixel(s) must return [...] where s.dataMask == 0, then [...]")
    nodata = [t.strip() for t in empty.group(1).split(",")]
    values = [t.strip() for t in empty.group(2).split(",")]
    for returned in (nodata, values):
        if len(returned) != count:
            raise ValueError(f"evaluatePixel returned {len(returned)} values; output default "
                             f"declares {count} bands")
    if not all(_LITERAL.fullmatch(t) for t in nodata):
        raise ValueError(f"no-data values must be numbers or NaN, got {nodata}")
    bands = [v[2:] for v in values if v.startswith("s.")]
    if len(bands) != count or any(b not in inputs or b == "dataMask" for b in bands):
        raise ValueError(f"evaluatePixel must return input bands as s.<band>, got {values}")
    unit = dict(zip(inputs, units, strict=True))
    if len({unit[b] for b in bands if b != SCL}) > 1:
        raise ValueError("this server serves one unit per request")
    first = next((b for b in bands if b != SCL), bands[0])
    return bands, unit[first], sample_type


def _geotiff(pixels: np.ndarray, grid: Grid, dtype: str = "float32") -> bytes:
    """A GeoTIFF of ``pixels`` on ``grid``; as UINT16 output, no data (NaN) is written as 0,
    the value an evalscript returns where ``dataMask`` is 0."""
    if dtype == "uint16":
        pixels = np.nan_to_num(pixels, nan=0.0).clip(0, 65535)
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=pixels.shape[0],
            dtype=dtype,
            crs=grid.crs,
            transform=grid.transform,
        ) as dst:
            dst.write(pixels.astype(dtype))
        return bytes(memfile.read())


_TERM = re.compile(r"^\s*([\w:]+)\s*(<=|>=|=|<|>)\s*(.+?)\s*$")


def _parse_filter(text: str | None) -> list[tuple[str, str, Any]]:
    if not text:
        return []
    terms = []
    for part in re.split(r"\s+AND\s+", text):
        m = _TERM.match(part)
        if not m:
            raise ValueError(f"unsupported filter term {part!r}")
        field, op, raw = m.groups()
        value: Any = raw[1:-1] if raw[:1] == "'" else float(raw)
        terms.append((field, op, value))
    return terms


def _matches(feature: dict[str, Any], terms: list[tuple[str, str, Any]]) -> bool:
    props = feature["properties"]
    for field, op, value in terms:
        have = props.get(field)
        if have is None:
            return False
        if isinstance(value, str):
            if op != "=" or str(have).lower() != value.lower():
                return False
            continue
        have = float(have)
        ok = {
            "=": have == value,
            "<": have < value,
            "<=": have <= value,
            ">": have > value,
            ">=": have >= value,
        }[op]
        if not ok:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    owner: SHServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def _send(self, status: int, payload: bytes | dict[str, Any], **headers: str) -> None:
        if isinstance(payload, dict):
            data = json.dumps(payload).encode()
            ctype = "application/json"
        else:
            data, ctype = payload, "image/tiff"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._send(404, {"error": {"status": 404, "message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        entry: dict[str, Any] = {"method": "POST", "path": path, "time": time.time()}
        owner.log.append(entry)

        if path.endswith("/oauth/token"):
            form = dict(urllib.parse.parse_qsl(raw.decode()))
            entry["body"] = {k: v for k, v in form.items() if k != "client_secret"}
            ok = (
                form.get("grant_type") == "client_credentials"
                and form.get("client_id") == owner.client_id
                and form.get("client_secret") == owner.client_secret
            )
            if not ok:
                entry["status"] = 401
                self._send(401, {"error": "invalid_client", "error_description": "bad client"})
                return
            entry["status"] = 200
            self._send(
                200,
                {
                    "access_token": owner.new_token(),
                    "token_type": "Bearer",
                    "expires_in": owner.token_lifetime,
                },
            )
            return

        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        entry["body"] = body
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in owner.tokens:
            entry["status"] = 401
            self._send(401, {"error": {"status": 401, "reason": "Unauthorized"}})
            return
        if body is None:
            entry["status"] = 400
            self._send(400, {"error": {"status": 400, "message": "invalid JSON"}})
            return

        fault = owner.take_fault(path)
        entry["fault"] = fault
        if fault == "fail_429":
            entry["status"] = 429
            self._send(
                429,
                {"error": {"status": 429, "reason": "Too Many Requests"}},
                Retry_After=str(owner.retry_after_ms),
            )
            return
        if fault == "fail_500":
            entry["status"] = 500
            self._send(500, {"error": {"status": 500, "reason": "Internal Server Error"}})
            return
        if fault == "slow":
            time.sleep(owner.slow_seconds)

        payload: bytes | dict[str, Any]
        try:
            if path.endswith("/api/v1/catalog/1.0.0/search"):
                status, payload = owner.catalog(body)
            elif path.endswith("/api/v1/process"):
                status, payload = owner.process(body)
            else:
                status, payload = 404, {"error": {"status": 404, "message": "not found"}}
        except Exception as exc:  # noqa: BLE001 - reported to the client like the service does
            status, payload = 400, {"error": {"status": 400, "message": repr(exc)}}
        if fault == "truncate" and isinstance(payload, bytes):
            payload = payload[: max(1, len(payload) // 3)]
        entry["status"] = status
        self._send(status, payload)


def outage_after_first_shard(server: SHServer, root: Any, timeout: float = 120.0) -> Any:
    """A started thread that makes ``server`` fail for good (HTTP 500 on every process request)
    as soon as the build writing to ``root`` has finished its first shard; ``join`` it."""
    from pathlib import Path

    from cloudbench import store

    def watch() -> None:
        shards = Path(root) / "shards"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if shards.is_dir() and any(store.shard_done(Path(root), p.name)
                                       for p in shards.iterdir()):
                server.fail_500 = 10_000
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


@contextmanager
def serving(
    world_or_worlds: SyntheticWorld | Sequence[SyntheticWorld], **kwargs: Any
) -> Iterator[SHServer]:
    """``with serving(world) as server:`` (or ``serving([w1, w2])``) a started fake service."""
    server = SHServer(world_or_worlds, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
