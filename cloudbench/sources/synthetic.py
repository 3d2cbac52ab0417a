"""A synthetic, seeded world of co-registered Sentinel-1 and Sentinel-2 scenes.

**Nothing this module produces is real data.** :class:`SyntheticWorld` fakes an archive of
Sentinel-1 GRD and Sentinel-2 L1C / L2A acquisitions over a square of land on a real UTM grid
(northern Hunan, UTM 49N, by default) so that builders, tests and the demo can run without
network access. It implements :class:`~cloudbench.sources.base.Source` and
:class:`~cloudbench.sources.base.LabelSource` exactly, so builders cannot tell it from a real
source; its ``synthetic = True`` and ``name = "synthetic"`` attributes let outputs say so.

The world model
---------------
* **Land cover.** The world is cut into spatially coherent regions: a jittered lattice of seeds
  (one every ``region_size`` pixels) whose Voronoi cells are computed on coordinates warped by
  smooth noise, so boundaries wiggle like real field and forest edges. Every cell gets one IGBP
  code (1..17) drawn with realistic-ish frequencies for southern China; every code is given to at
  least one large cell, so all 17 appear whenever the world has at least 17 cells.
* **Surface reflectance.** Each class has a bottom-of-atmosphere (BOA) spectrum for the 13
  Sentinel-2 bands (vegetation red edge and NIR plateau, dark water, snow bright in the visible
  and dark in the SWIR, bare soil rising to the SWIR, flat urban spectra, ...). A per-cell gain and
  two smooth texture fields (brightness and "greenness") make pixels of one region differ.
  L2A bands are the BOA values; L1C bands are top-of-atmosphere (TOA) values from a linear
  atmosphere, ``TOA = path * haze + transmittance * BOA``, with a per-date haze factor, a water
  vapour absorption in B09 and an almost opaque B10 (cirrus band) over clear land.
* **Clouds.** Each Sentinel-2 date draws a cloud cover in the ``cloud_cover`` range (stratified
  over the archive so that there are clear and heavily clouded dates) and a multi-scale smooth
  noise field. Thresholding the field at quantiles gives exactly that cover: opaque thick cores
  (alpha = 1) and semi-transparent thin edges (0 < alpha <= 0.7). Pixels are composited as
  ``I = I_surface * (1 - alpha) + alpha * C`` with ``C`` a bright per-band cloud reflectance
  (high B10 cirrus signal, lower SWIR), brighter deeper inside the cores. L1C and L2A of one date
  share their sensing time and cloud field (the composite is linear, so it is the same cloud seen
  through the same atmosphere model). Optional shadows darken the surface, offset from the
  clouds by a fixed sun geometry, only where the sky is clear. ``read(..., cloud_free=True)``
  renders the same sensing with neither clouds nor shadows (a same-instant clear target that no
  real archive has). An ``s2_schedule`` replaces the
  generated dates and covers with given ones (and gives each its processing baseline and
  catalog shadow / cirrus percentages), for tests that need particular acquisitions.
* **Radar.** Each class has a VV / VH backscatter in dB (water ~ -20/-27, forest ~ -7/-13,
  urban ~ -3/-10, crops ~ -10/-17, ...), plus per-cell offsets, texture shared with the optical
  texture, a small per-acquisition change, and multiplicative speckle drawn from a gamma
  distribution in linear power with 4.4 equivalent looks, different for every acquisition.

Everything is deterministic: generators are derived from ``(seed, stream, index)`` with
:func:`numpy.random.default_rng` (no global RNG state), every field is generated for the whole
world and then sliced, and speckle is drawn in fixed world blocks, so a window reads the same
values as the same window of the whole world. Static fields (land cover, texture) and per-date
cloud fields are cached lazily on the instance; caches are not pickled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform, transform_bounds
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from shapely.geometry.base import BaseGeometry

from cloudbench.sources.base import (
    S1_BANDS,
    S2_L1C_BANDS,
    Acquisition,
    Collection,
    Grid,
)

__all__ = ["IGBP_CLASSES", "SyntheticWorld"]

IGBP_CLASSES: dict[int, str] = {
    1: "Evergreen needleleaf forests",
    2: "Evergreen broadleaf forests",
    3: "Deciduous needleleaf forests",
    4: "Deciduous broadleaf forests",
    5: "Mixed forests",
    6: "Closed shrublands",
    7: "Open shrublands",
    8: "Woody savannas",
    9: "Savannas",
    10: "Grasslands",
    11: "Permanent wetlands",
    12: "Croplands",
    13: "Urban and built-up lands",
    14: "Cropland/natural vegetation mosaics",
    15: "Permanent snow and ice",
    16: "Barren",
    17: "Water bodies",
}
"""IGBP land-cover codes used by the synthetic world (0 is no data)."""

# fmt: off
# Relative frequency of each IGBP class (index = code - 1), loosely southern-China-like.
_CLASS_WEIGHTS = np.array(
    [4, 10, 1, 5, 12, 2, 2, 12, 4, 5, 3, 14, 6, 8, 0.5, 2, 7], dtype=np.float64
)

# Bottom-of-atmosphere reflectance per class (rows, code - 1) and band (columns, S2_L1C_BANDS
# order: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12). B10 here is the surface
# reflectance at 1375 nm, which the atmosphere almost entirely absorbs (see _TRANS).
_S2_BOA = np.array(
    [
        # B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B10   B11   B12
        [.015, .020, .040, .020, .060, .180, .230, .250, .260, .240, .110, .120, .050],  # 1
        [.020, .025, .050, .025, .080, .250, .320, .340, .350, .330, .140, .160, .070],  # 2
        [.018, .022, .045, .022, .070, .210, .270, .290, .300, .280, .120, .130, .055],  # 3
        [.020, .028, .060, .028, .090, .290, .370, .400, .410, .390, .160, .180, .075],  # 4
        [.018, .024, .050, .024, .075, .240, .300, .320, .330, .310, .130, .150, .062],  # 5
        [.030, .040, .070, .050, .100, .220, .270, .290, .300, .280, .180, .200, .100],  # 6
        [.050, .060, .090, .100, .140, .200, .230, .250, .260, .250, .250, .280, .190],  # 7
        [.030, .035, .060, .040, .090, .240, .300, .320, .330, .310, .160, .180, .090],  # 8
        [.040, .050, .080, .070, .110, .220, .270, .290, .300, .290, .210, .230, .140],  # 9
        [.040, .050, .090, .060, .120, .260, .320, .340, .350, .330, .220, .240, .130],  # 10
        [.030, .035, .055, .040, .070, .140, .170, .180, .180, .160, .080, .090, .050],  # 11
        [.030, .040, .080, .050, .110, .300, .380, .420, .430, .400, .200, .220, .110],  # 12
        [.080, .090, .110, .120, .140, .160, .170, .180, .190, .180, .180, .200, .180],  # 13
        [.035, .045, .080, .055, .110, .270, .340, .370, .380, .350, .190, .210, .100],  # 14
        [.850, .880, .880, .860, .850, .840, .830, .800, .780, .600, .070, .050, .040],  # 15
        [.080, .100, .140, .200, .240, .270, .290, .300, .310, .300, .320, .360, .320],  # 16
        [.050, .055, .060, .040, .030, .015, .012, .010, .009, .007, .004, .004, .003],  # 17
    ],
    dtype=np.float32,
)

# Linear atmosphere for L1C: TOA = path * haze + trans * BOA (per band, S2_L1C_BANDS order).
_PATH = np.array(
    [.085, .062, .042, .027, .023, .019, .015, .013, .012, .005, .001, .003, .0015],
    dtype=np.float32,
)
_TRANS = np.array(
    [.80, .84, .88, .90, .91, .92, .93, .93, .93, .38, .02, .94, .92], dtype=np.float32
)
# Thick-cloud TOA reflectance per band: bright and white in the VNIR, lower in the SWIR and in
# the B09 water-vapour band, and a strong B10 cirrus-band signal from the high cloud tops.
_CLOUD_TOA = np.array(
    [.50, .48, .46, .45, .46, .47, .48, .49, .49, .25, .10, .34, .21], dtype=np.float32
)
# How the "greenness" texture field modulates each band (red down, NIR up, SWIR down).
_GREEN_WEIGHT = np.array(
    [0.0, -.3, .2, -1.0, -.3, .6, 1.0, 1.0, 1.0, 1.0, 0.0, -.4, -.6], dtype=np.float32
)

# Sentinel-1 backscatter per class in dB: columns VV, VH.
_S1_DB = np.array(
    [
        [-7.5, -13.5],  # 1 evergreen needleleaf
        [-7.0, -12.5],  # 2 evergreen broadleaf
        [-8.0, -14.0],  # 3 deciduous needleleaf
        [-7.5, -13.0],  # 4 deciduous broadleaf
        [-7.5, -13.0],  # 5 mixed forest
        [-9.0, -15.0],  # 6 closed shrubland
        [-11.0, -18.0],  # 7 open shrubland
        [-8.5, -14.5],  # 8 woody savanna
        [-10.0, -16.5],  # 9 savanna
        [-11.0, -18.0],  # 10 grassland
        [-12.0, -20.0],  # 11 wetland
        [-10.5, -17.0],  # 12 cropland
        [-3.0, -10.0],  # 13 urban
        [-9.5, -16.0],  # 14 crop / natural mosaic
        [-13.0, -22.0],  # 15 snow and ice (wet summer snow)
        [-14.0, -23.0],  # 16 barren
        [-20.0, -27.0],  # 17 water
    ],
    dtype=np.float32,
)
# fmt: on
_S1_LOOKS = 4.4
_S1_NOISE_FLOOR = 10.0 ** (-33.0 / 10.0)  # residual thermal noise, linear power
_SPECKLE_BLOCK = 256

# Sun and cloud geometry for shadows (July, ~10:30 local solar time, ~29 N).
_SUN_AZIMUTH_DEG = 110.0
_SUN_ZENITH_DEG = 20.0
_CLOUD_HEIGHT_M = 2000.0
_SHADOW_DARKENING = 0.7

_S2_TIME = dt.time(3, 5, 31)
_S1_TIME = {"ASCENDING": dt.time(10, 29, 12), "DESCENDING": dt.time(22, 18, 45)}

# Independent random streams, combined with the seed and an index into a SeedSequence.
_STREAM_LANDCOVER = 1
_STREAM_TEXTURE = 2
_STREAM_CATALOG = 3
_STREAM_CLOUD = 4
_STREAM_S1 = 5
_STREAM_SPECKLE = 6

_CLOUD_CACHE_SIZE = 8

_SCHEDULE_KEYS = frozenset(
    {
        "datetime",
        "cloud_cover",
        "processing_baseline",
        "cloud_shadow_percentage",
        "thin_cirrus_percentage",
    }
)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field with zero mean, unit variance and a correlation length ~ ``scale`` px.

    Small scales filter full-resolution white noise; larger ones smooth white noise on a coarse
    lattice and upsample it with separable cubic B-spline weights (cheap and bit-reproducible:
    elementwise numpy only, no BLAS).
    """
    h, w = shape
    if scale <= 8:
        field = gaussian_filter(
            rng.standard_normal((h, w), dtype=np.float32), max(scale / 2, 0.5), mode="wrap"
        )
    else:
        step = max(1, int(round(scale / 2)))
        coarse = gaussian_filter(
            rng.standard_normal((h // step + 4, w // step + 4)), 1.0, mode="wrap"
        ).astype(np.float32)
        rows = sum(wk[:, None] * coarse[ik] for ik, wk in _bspline_taps(h, step))
        field = sum(rows[:, ik] * wk[None, :] for ik, wk in _bspline_taps(w, step))
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


def _bspline_taps(n: int, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lattice index, weight) of the 4 cubic B-spline taps for n pixels, ``step`` px apart."""
    x = np.arange(n, dtype=np.float64) / step + 1.0
    i0 = np.floor(x).astype(np.intp)
    t = x - i0
    weights = (
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    )
    return [(i0 + k - 1, wk.astype(np.float32)) for k, wk in enumerate(weights)]


def _as_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _as_utc(value: str | dt.date | dt.datetime) -> dt.datetime:
    """A tz-aware UTC datetime; naive datetimes are taken as UTC, dates as their midnight."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time(0, 0))
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _schedule_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One ``s2_schedule`` entry, normalised to JSON-able values (UTC ISO time, floats)."""
    unknown = sorted(set(entry) - _SCHEDULE_KEYS)
    if unknown or "datetime" not in entry or "cloud_cover" not in entry:
        raise ValueError(
            f"s2_schedule entry {dict(entry)!r}: needs datetime and cloud_cover, may have "
            f"{', '.join(sorted(_SCHEDULE_KEYS - {'datetime', 'cloud_cover'}))}"
        )
    out = {
        "datetime": _as_utc(entry["datetime"]).isoformat(),
        "cloud_cover": float(entry["cloud_cover"]),
        "processing_baseline": str(entry.get("processing_baseline", "02.06")),
    }
    for key in ("cloud_shadow_percentage", "thin_cirrus_percentage"):
        if entry.get(key) is not None:
            out[key] = float(entry[key])
    return out


def _mgrs_tile(crs: CRS, x: float, y: float) -> str:
    """The MGRS / Sentinel-2 tile name of a point given in UTM coordinates (e.g. '49RFN')."""
    epsg = crs.to_epsg() or 0
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        return "unknown"
    zone = epsg % 100
    if not 1 <= int(x // 100_000) <= 8:
        return "unknown"
    _, lats = transform(crs, "EPSG:4326", [x], [y])
    lat = float(np.clip(lats[0], -80, 83.999))
    band = "CDEFGHJKLMNPQRSTUVWXX"[int((lat + 80) // 8)]
    columns = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")[zone % 3]
    column = columns[int(x // 100_000) - 1]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(y // 100_000) + (0 if zone % 2 else 5)) % 20]
    return f"{zone:02d}{band}{column}{row}"


class SyntheticWorld:
    """A deterministic fake archive of Sentinel-1 and Sentinel-2 scenes with land-cover labels.

    Implements :class:`~cloudbench.sources.base.Source` and
    :class:`~cloudbench.sources.base.LabelSource`. Nothing it produces is real data.

    Args:
        seed: seed of every random field; same arguments give identical arrays.
        crs: CRS of the world grid (a UTM zone for realistic MGRS tile names).
        left, top: upper-left corner of the world in ``crs`` units.
        size: pixels per side of the (square) world.
        resolution: pixel size in ``crs`` units (10 m, like the finest Sentinel-2 bands).
        start, end: first and last day of the archive (inclusive).
        s2_revisit_days: days between Sentinel-2 acquisitions, from ``start``.
        s1_revisit_days: days between Sentinel-1 acquisitions, from ``start`` + 2 days.
        region_size: typical size of a land-cover region in pixels.
        cloud_cover: (min, max) fraction of the world covered by cloud on a Sentinel-2 date.
        shadows: whether clouds cast shadows.
        s2_schedule: the Sentinel-2 dates instead of the revisit-generated ones (L1C and L2A of
            each), one mapping each: ``datetime`` (ISO string or datetime, UTC if naive, within
            [start, end]), ``cloud_cover`` (percent of the world under cloud on that date, and
            the catalog's cover), optional ``processing_baseline`` ("02.06" by default),
            ``cloud_shadow_percentage`` and ``thin_cirrus_percentage`` (catalog properties of
            the L2A product only, as in the real catalog). ``cloud_cover`` is then unused.
        mgrs_tile: the MGRS tile name ("33UUP") in product ids and properties, instead of the
            one at the world's centre.
    """

    name: str = "synthetic"
    synthetic: bool = True

    def __init__(
        self,
        seed: int = 0,
        *,
        crs: str | int | CRS = "EPSG:32649",
        left: float = 645000.0,
        top: float = 3210000.0,
        size: int = 1280,
        resolution: float = 10.0,
        start: str | dt.date = "2018-07-01",
        end: str | dt.date = "2018-07-31",
        s2_revisit_days: int = 5,
        s1_revisit_days: int = 6,
        region_size: int = 160,
        cloud_cover: tuple[float, float] = (0.0, 0.9),
        shadows: bool = True,
        s2_schedule: Sequence[Mapping[str, Any]] | None = None,
        mgrs_tile: str | None = None,
    ) -> None:
        self._params: dict[str, Any] = dict(
            seed=int(seed),
            crs=CRS.from_user_input(crs).to_string(),
            left=float(left),
            top=float(top),
            size=int(size),
            resolution=float(resolution),
            start=_as_date(start).isoformat(),
            end=_as_date(end).isoformat(),
            s2_revisit_days=int(s2_revisit_days),
            s1_revisit_days=int(s1_revisit_days),
            region_size=int(region_size),
            cloud_cover=(float(cloud_cover[0]), float(cloud_cover[1])),
            shadows=bool(shadows),
            s2_schedule=None if s2_schedule is None else [_schedule_entry(e) for e in s2_schedule],
            mgrs_tile=None if mgrs_tile is None else str(mgrs_tile),
        )
        self._setup()

    # ------------------------------------------------------------------ construction, pickling

    def _setup(self) -> None:
        p = self._params
        if p["size"] < 1 or p["resolution"] <= 0 or p["region_size"] < 1:
            raise ValueError("size, resolution and region_size must be positive")
        if p["s2_revisit_days"] < 1 or p["s1_revisit_days"] < 1:
            raise ValueError("revisit intervals must be at least one day")
        lo, hi = p["cloud_cover"]
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"cloud_cover must satisfy 0 <= min <= max <= 1, got {(lo, hi)}")
        if _as_date(p["end"]) < _as_date(p["start"]):
            raise ValueError("end is before start")
        self._check_schedule()
        if p["mgrs_tile"] is not None and not re.fullmatch(r"\d{2}[C-X][A-Z]{2}", p["mgrs_tile"]):
            raise ValueError(f"mgrs_tile must look like '33UUP', got {p['mgrs_tile']!r}")
        self.seed: int = p["seed"]
        self.grid = Grid.from_bounds(
            p["crs"], p["left"], p["top"], p["size"], p["size"], p["resolution"]
        )
        # Unset optional parameters stay out of the fingerprint: product ids are as they were
        # before those parameters existed.
        given = sorted((k, v) for k, v in p.items() if v is not None)
        self._fingerprint = hashlib.sha1(repr(given).encode()).hexdigest()[:8]
        self._footprint = self.grid.footprint()
        self._cache: dict[str, Any] = {}
        self._cloud_cache: OrderedDict[int, tuple[np.ndarray, float, float]] = OrderedDict()
        self._lock = threading.RLock()
        self._build_catalog()

    def _check_schedule(self) -> None:
        schedule = self._params["s2_schedule"]
        if schedule is None:
            return
        first, last = _as_date(self._params["start"]), _as_date(self._params["end"])
        times = [_as_utc(e["datetime"]) for e in schedule]
        if len(set(times)) < len(times):
            raise ValueError("s2_schedule has two entries at the same time")
        for entry, when in zip(schedule, times, strict=True):
            if not first <= when.date() <= last:
                raise ValueError(f"s2_schedule time {entry['datetime']} is not in {first}..{last}")
            if not 0.0 <= entry["cloud_cover"] <= 100.0:
                raise ValueError(f"s2_schedule cloud_cover {entry['cloud_cover']} is not 0..100")
            if not re.fullmatch(r"\d{2}\.\d{2}", entry["processing_baseline"]):
                raise ValueError(
                    f"s2_schedule processing_baseline {entry['processing_baseline']!r} is not "
                    "of the form '04.00'"
                )

    def __getstate__(self) -> dict[str, Any]:
        return {"params": self._params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._params = state["params"]
        self._setup()

    def __repr__(self) -> str:
        p = self._params
        return (
            f"SyntheticWorld(seed={p['seed']}, crs={p['crs']!r}, size={p['size']}, "
            f"resolution={p['resolution']}, {p['start']}..{p['end']})"
        )

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    def _build_catalog(self) -> None:
        p = self._params
        start, end = _as_date(p["start"]), _as_date(p["end"])
        left, bottom, right, top = self.grid.bounds
        tile = p["mgrs_tile"] or _mgrs_tile(self.grid.crs, (left + right) / 2, (bottom + top) / 2)

        rng = self._rng(_STREAM_CATALOG)
        schedule: list[dict[str, Any]] = p["s2_schedule"]
        if schedule is None:
            s2_times = []
            day = start
            while day <= end:
                s2_times.append(dt.datetime.combine(day, _S2_TIME, tzinfo=dt.UTC))
                day += dt.timedelta(days=p["s2_revisit_days"])
            n = len(s2_times)
            # Stratified (Latin hypercube) draws, squared: the archive always spans near-clear
            # to heavily clouded dates, with more clear-ish than overcast ones.
            u = (rng.permutation(n) + rng.random(n)) / max(n, 1)
            lo, hi = p["cloud_cover"]
            cover = lo + (hi - lo) * u**2
            catalog_cover = [round(float(c) * 100, 2) for c in cover]
            schedule = [{"processing_baseline": "02.06"} for _ in s2_times]  # no shadow/cirrus
        else:
            s2_times = [_as_utc(e["datetime"]) for e in schedule]
            n = len(s2_times)
            catalog_cover = [e["cloud_cover"] for e in schedule]
            cover = np.array(catalog_cover) / 100.0
        self._s2_cover = cover
        self._s2_thick_share = rng.uniform(0.55, 0.8, n)
        self._s2_haze = rng.uniform(0.85, 1.1, n).astype(np.float32)

        acqs: list[Acquisition] = []
        self._index: dict[str, tuple[Collection, int]] = {}
        for k, (when, entry) in enumerate(zip(s2_times, schedule, strict=True)):
            for collection, level in ((Collection.S2_L1C, "L1C"), (Collection.S2_L2A, "L2A")):
                acq_id = f"SYNTH{self._fingerprint}_S2_{level}_{when:%Y%m%dT%H%M%S}_T{tile}"
                properties = {
                    "platform": "sentinel-2a" if k % 2 == 0 else "sentinel-2b",
                    "mgrs_tile": tile,
                    "processing_baseline": entry["processing_baseline"],
                    "processing_level": level,
                    "synthetic": True,
                }
                if collection is Collection.S2_L2A:
                    for key in ("cloud_shadow_percentage", "thin_cirrus_percentage"):
                        if key in entry:
                            properties[key] = entry[key]
                acqs.append(
                    Acquisition(
                        id=acq_id,
                        collection=collection,
                        datetime=when,
                        footprint=self._footprint,
                        cloud_cover=catalog_cover[k],
                        properties=properties,
                    )
                )
                self._index[acq_id] = (collection, k)

        day, k = start + dt.timedelta(days=2), 0
        while day <= end:
            orbit = "ASCENDING" if k % 2 == 0 else "DESCENDING"
            when = dt.datetime.combine(day, _S1_TIME[orbit], tzinfo=dt.UTC)
            acq_id = f"SYNTH{self._fingerprint}_S1_IW_GRDH_1SDV_{when:%Y%m%dT%H%M%S}_{k:03d}"
            acqs.append(
                Acquisition(
                    id=acq_id,
                    collection=Collection.S1_GRD,
                    datetime=when,
                    footprint=self._footprint,
                    properties={
                        "platform": "sentinel-1a" if k % 2 == 0 else "sentinel-1b",
                        "orbit_direction": orbit,
                        "relative_orbit": 84 if orbit == "ASCENDING" else 113,
                        "instrument_mode": "IW",
                        "polarization": "DV",
                        "synthetic": True,
                    },
                )
            )
            self._index[acq_id] = (Collection.S1_GRD, k)
            day += dt.timedelta(days=p["s1_revisit_days"])
            k += 1
        self._acquisitions = sorted(acqs, key=lambda a: (a.datetime, a.collection.value))

    # ------------------------------------------------------------------ Source protocol

    def search(
        self,
        collection: Collection | str,
        area: BaseGeometry | None,
        start: dt.datetime | dt.date | str,
        end: dt.datetime | dt.date | str,
        *,
        max_cloud_cover: float | None = None,
        min_cloud_cover: float | None = None,
    ) -> list[Acquisition]:
        """Acquisitions of ``collection`` intersecting ``area`` (EPSG:4326) in [start, end].

        Naive datetimes are taken as UTC. ``min_cloud_cover`` / ``max_cloud_cover`` (percent,
        inclusive) filter Sentinel-2 acquisitions on their whole-world cloud cover; Sentinel-1
        has none and is not filtered. Sorted by time.
        """
        collection = Collection(collection)
        t0, t1 = _as_utc(start), _as_utc(end)
        if area is not None and not area.intersects(self._footprint):
            return []
        out = []
        for acq in self._acquisitions:
            if acq.collection != collection or not t0 <= acq.datetime <= t1:
                continue
            cover = acq.cloud_cover
            if cover is not None and (
                (max_cloud_cover is not None and cover > max_cloud_cover)
                or (min_cloud_cover is not None and cover < min_cloud_cover)
            ):
                continue
            out.append(acq)
        return out

    def read(
        self,
        acquisition: Acquisition,
        grid: Grid,
        bands: Sequence[str],
        *,
        cloud_free: bool = False,
    ) -> np.ndarray:
        """float32 (len(bands), H, W) on any grid; S2 reflectance, S1 dB; NaN outside the world.

        Grids aligned with the world grid at the same resolution are sliced directly; others are
        resampled from the world grid (average when coarser, bilinear otherwise).

        ``cloud_free`` (not in the source protocol; no real archive has it) renders a Sentinel-2
        acquisition without its clouds and cloud shadows: the same sensing (date, haze, bands)
        under a clear sky, i.e. the world's ground truth of what the clouds hide. It equals the
        ordinary read wherever the sky is clear and unshaded. Sentinel-1 is unaffected.
        """
        collection, index = self._lookup(acquisition)
        band_idx = self._band_indices(collection, bands)

        def render(r0: int, c0: int, h: int, w: int) -> np.ndarray:
            if collection is Collection.S1_GRD:
                return self._render_s1(index, band_idx, r0, c0, h, w)
            return self._render_s2(
                collection, index, band_idx, r0, c0, h, w, cloud_free=cloud_free
            )

        return self._on_grid(render, len(band_idx), grid, np.float32, np.nan, resample=True)

    def read_labels(self, grid: Grid) -> np.ndarray:
        """uint8 IGBP codes on ``grid`` (nearest neighbour), 0 outside the world."""

        def render(r0: int, c0: int, h: int, w: int) -> np.ndarray:
            return self._landcover()[None, r0 : r0 + h, c0 : c0 + w]

        return self._on_grid(render, 1, grid, np.uint8, 0, resample=False)[0]

    # ------------------------------------------------------------------ ground truth

    def cloud_truth(self, acquisition: Acquisition, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Cloud opacity and type of an acquisition on ``grid`` (for tests; not in the protocol).

        Returns ``(alpha, cloud_type)``: float32 opacity in [0, 1] (resampled like ``read``, NaN
        outside the world) and uint8 0 clear / 1 thin / 2 thick (nearest, 0 outside). Sentinel-1
        sees through clouds, so its acquisitions are all clear.
        """
        collection, index = self._lookup(acquisition)

        def render_alpha(r0: int, c0: int, h: int, w: int) -> np.ndarray:
            if collection is Collection.S1_GRD:
                return np.zeros((1, h, w), np.float32)
            return self._clouds(index, r0, c0, h, w)[0][None]

        def render_type(r0: int, c0: int, h: int, w: int) -> np.ndarray:
            if collection is Collection.S1_GRD:
                return np.zeros((1, h, w), np.uint8)
            return self._clouds(index, r0, c0, h, w)[1][None]

        alpha = self._on_grid(render_alpha, 1, grid, np.float32, np.nan, resample=True)[0]
        ctype = self._on_grid(render_type, 1, grid, np.uint8, 0, resample=False)[0]
        return alpha, ctype

    def scene_classes(self, acquisition: Acquisition, grid: Grid) -> np.ndarray:
        """A scene classification in the codes of Sen2Cor's L2A ``SCL`` band, from the world's
        truth (for the loopback server; not Sen2Cor): uint8 on ``grid`` (nearest), 9 (cloud,
        high probability) on thick cloud, 8 (medium probability) on thin cloud of opacity
        >= 0.35, 10 (thin cirrus) on thinner cloud, 3 (cloud shadow) where the shadow strength
        is >= 0.2, then 6 (water) on IGBP water bodies, 5 (not vegetated) on urban and barren
        land, 4 (vegetation) elsewhere; 0 (no data) outside the world. Sentinel-2 only."""
        collection, index = self._lookup(acquisition)
        if collection is Collection.S1_GRD:
            raise ValueError(f"{acquisition.id}: Sentinel-1 has no scene classification")

        def render(r0: int, c0: int, h: int, w: int) -> np.ndarray:
            alpha, ctype, _, shadow = self._clouds(index, r0, c0, h, w)
            cover = self._landcover()[r0 : r0 + h, c0 : c0 + w]
            scl = np.where(cover == 17, 6, np.where(np.isin(cover, (13, 16)), 5, 4))
            scl = np.where(shadow >= 0.2, 3, scl)
            scl = np.where(ctype == 1, np.where(alpha >= 0.35, 8, 10), scl)
            scl = np.where(ctype == 2, 9, scl)
            return scl.astype(np.uint8)[None]

        return self._on_grid(render, 1, grid, np.uint8, 0, resample=False)[0]

    # ------------------------------------------------------------------ validation helpers

    def _lookup(self, acquisition: Acquisition) -> tuple[Collection, int]:
        entry = self._index.get(getattr(acquisition, "id", None))  # type: ignore[arg-type]
        if entry is None or entry[0] != acquisition.collection:
            raise ValueError(
                f"acquisition {getattr(acquisition, 'id', acquisition)!r} is not from this "
                f"synthetic world ({self!r})"
            )
        return entry

    @staticmethod
    def _band_indices(collection: Collection, bands: Sequence[str]) -> list[int]:
        if isinstance(bands, str):
            bands = [bands]
        allowed = collection.bands
        table = S1_BANDS if collection is Collection.S1_GRD else S2_L1C_BANDS
        out = []
        for band in bands:
            if band not in allowed:
                raise ValueError(
                    f"unknown band {band!r} for {collection.value}; allowed: {', '.join(allowed)}"
                )
            out.append(table.index(band))
        return out

    # ------------------------------------------------------------------ grids and resampling

    def _on_grid(
        self,
        render: Any,
        count: int,
        grid: Grid,
        dtype: Any,
        fill: float,
        *,
        resample: bool,
    ) -> np.ndarray:
        """Put world pixels produced by ``render(r0, c0, h, w) -> (count, h, w)`` onto ``grid``.

        ``resample`` selects average / bilinear resampling; otherwise nearest neighbour.
        """
        out = np.full((count, grid.height, grid.width), fill, dtype=dtype)
        if count == 0 or grid.width == 0 or grid.height == 0:
            return out
        world = self.grid
        size, res = world.width, world.resolution
        t, wt = grid.transform, world.transform
        col_f = (t.c - wt.c) / res
        row_f = (wt.f - t.f) / res
        aligned = (
            CRS.from_user_input(grid.crs) == world.crs
            and t.b == 0
            and t.d == 0
            and math.isclose(t.a, res, rel_tol=1e-9)
            and math.isclose(t.e, -res, rel_tol=1e-9)
            and abs(col_f - round(col_f)) < 1e-6
            and abs(row_f - round(row_f)) < 1e-6
        )
        if aligned:
            col, row = int(round(col_f)), int(round(row_f))
            r0, r1 = max(row, 0), min(row + grid.height, world.height)
            c0, c1 = max(col, 0), min(col + grid.width, size)
            if r0 < r1 and c0 < c1:
                out[:, r0 - row : r1 - row, c0 - col : c1 - col] = render(r0, c0, r1 - r0, c1 - c0)
            return out

        # General path: render the world window covering the grid, then reproject.
        gl, gb, gr, gt = transform_bounds(grid.crs, world.crs, *grid.bounds, densify_pts=21)
        dst_res = math.sqrt(max((gr - gl) * (gt - gb), 0.0) / (grid.width * grid.height))
        margin = 3 + int(math.ceil(dst_res / res))
        c0 = max(int(math.floor((gl - wt.c) / res)) - margin, 0)
        c1 = min(int(math.ceil((gr - wt.c) / res)) + margin, size)
        r0 = max(int(math.floor((wt.f - gt) / res)) - margin, 0)
        r1 = min(int(math.ceil((wt.f - gb) / res)) + margin, world.height)
        if r0 >= r1 or c0 >= c1:
            return out
        src = np.ascontiguousarray(render(r0, c0, r1 - r0, c1 - c0))
        src_transform = wt @ Affine.translation(c0, r0)
        if resample:
            method = Resampling.average if dst_res > res * (1 + 1e-6) else Resampling.bilinear
        else:
            method = Resampling.nearest
        common = dict(
            src_transform=src_transform,
            src_crs=world.crs,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
        )
        for i in range(count):
            reproject(src[i], out[i], resampling=method, src_nodata=fill, dst_nodata=fill, **common)
        if resample:
            # Pixels whose centre falls outside the world are no data (average resampling
            # would otherwise keep partially covered edge pixels).
            inside = np.zeros((grid.height, grid.width), np.uint8)
            reproject(
                np.ones(src.shape[1:], np.uint8),
                inside,
                resampling=Resampling.nearest,
                src_nodata=0,
                dst_nodata=0,
                **common,
            )
            out[:, inside == 0] = fill
        return out

    # ------------------------------------------------------------------ static fields

    def _cached(self, key: str, make: Any) -> Any:
        value = self._cache.get(key)
        if value is None:
            with self._lock:
                value = self._cache.get(key)
                if value is None:
                    value = make()
                    self._cache[key] = value
        return value

    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(cell index per pixel, IGBP code per cell) of the warped Voronoi land-cover model."""
        return self._cached("cells", self._make_cells)

    def _make_cells(self) -> tuple[np.ndarray, np.ndarray]:
        size, rs = self.grid.width, float(self._params["region_size"])
        rng = self._rng(_STREAM_LANDCOVER)
        n_side = max(1, int(round(size / rs)))
        spacing = size / n_side
        ii, jj = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
        seeds = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64)
        seeds = (seeds + 0.5 + rng.uniform(-0.42, 0.42, seeds.shape)) * spacing
        rows, cols = np.meshgrid(
            np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij"
        )
        shape = (size, size)
        rows += 0.3 * rs * _smooth_noise(rng, shape, 0.8 * rs)
        rows += 0.06 * rs * _smooth_noise(rng, shape, 0.15 * rs)
        cols += 0.3 * rs * _smooth_noise(rng, shape, 0.8 * rs)
        cols += 0.06 * rs * _smooth_noise(rng, shape, 0.15 * rs)
        _, nearest = cKDTree(seeds).query(
            np.stack([rows.ravel(), cols.ravel()], axis=1), workers=-1
        )
        cell = nearest.reshape(shape).astype(np.int32)
        del rows, cols

        n_cells = len(seeds)
        weights = _CLASS_WEIGHTS / _CLASS_WEIGHTS.sum()
        codes = rng.choice(np.arange(1, 18), size=n_cells, p=weights).astype(np.uint8)
        # Every IGBP code gets at least one of the larger cells (when there are enough cells).
        area = np.bincount(cell.ravel(), minlength=n_cells)
        big = np.flatnonzero(area >= np.median(area))
        if len(big) < 17:
            big = np.argsort(-area, kind="stable")[:17]
        chosen = rng.permutation(big)[: min(17, len(big))]
        codes[chosen] = rng.permutation(np.arange(1, 18))[: len(chosen)].astype(np.uint8)
        return cell, codes

    def _landcover(self) -> np.ndarray:
        def make() -> np.ndarray:
            cell, codes = self._cells()
            return codes[cell]

        return self._cached("landcover", make)

    def _texture(self) -> dict[str, np.ndarray]:
        """Per-pixel optical gain, greenness texture and radar dB offsets (whole world)."""

        def make() -> dict[str, np.ndarray]:
            cell, _ = self._cells()
            n_cells = int(cell.max()) + 1
            size = self.grid.width
            rng = self._rng(_STREAM_TEXTURE)
            cell_gain = np.clip(rng.normal(1.0, 0.06, n_cells), 0.8, 1.2).astype(np.float32)
            cell_db = np.clip(rng.normal(0.0, 0.8, n_cells), -2.0, 2.0).astype(np.float32)
            fine = _smooth_noise(rng, (size, size), 3.0)
            coarse = _smooth_noise(rng, (size, size), 25.0)
            brightness = 0.6 * coarse + 0.4 * fine
            green = _smooth_noise(rng, (size, size), 12.0)
            gain = cell_gain[cell] * np.clip(1.0 + 0.08 * brightness, 0.7, 1.3)
            return {
                "gain": gain.astype(np.float32),
                "green": np.clip(0.06 * green, -0.2, 0.2).astype(np.float32),
                "db": (cell_db[cell] + 0.8 * brightness).astype(np.float32),
            }

        return self._cached("texture", make)

    # ------------------------------------------------------------------ clouds

    def _cloud_field(self, k: int) -> tuple[np.ndarray, float, float]:
        """(noise field, thin threshold, thick threshold) of Sentinel-2 date ``k``."""
        with self._lock:
            hit = self._cloud_cache.get(k)
            if hit is not None:
                self._cloud_cache.move_to_end(k)
                return hit
        size, res = self.grid.width, self.grid.resolution
        rng = self._rng(_STREAM_CLOUD, k)
        shape = (size, size)
        field = (
            0.62 * _smooth_noise(rng, shape, 1500.0 / res)
            + 0.28 * _smooth_noise(rng, shape, 400.0 / res)
            + 0.10 * _smooth_noise(rng, shape, 100.0 / res)
        )
        cover = float(self._s2_cover[k])
        if cover <= 0:
            t_thin = t_thick = math.inf
        else:
            t_thin = float(np.quantile(field, 1.0 - cover))
            t_thick = float(np.quantile(field, 1.0 - cover * float(self._s2_thick_share[k])))
        entry = (field, t_thin, t_thick)
        with self._lock:
            self._cloud_cache[k] = entry
            while len(self._cloud_cache) > _CLOUD_CACHE_SIZE:
                self._cloud_cache.popitem(last=False)
        return entry

    def _clouds(
        self, k: int, r0: int, c0: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(alpha, cloud type, cloud brightness, shadow strength) on a world window."""
        field, t_thin, t_thick = self._cloud_field(k)
        alpha, ctype, depth = self._alpha(field[r0 : r0 + h, c0 : c0 + w], t_thin, t_thick)
        brightness = 0.85 + 0.35 * depth
        shadow = np.zeros((h, w), np.float32)
        if self._params["shadows"] and math.isfinite(t_thin):
            # A cloud at (r, c) shades (r - dr, c - dc): shadow(r, c) = alpha(r + dr, c + dc).
            dr, dc = self._shadow_offset()
            size = self.grid.width
            rr0, rr1 = max(r0 + dr, 0), min(r0 + dr + h, size)
            cc0, cc1 = max(c0 + dc, 0), min(c0 + dc + w, size)
            if rr0 < rr1 and cc0 < cc1:
                caster = self._alpha(field[rr0:rr1, cc0:cc1], t_thin, t_thick)[0]
                shadow[rr0 - r0 - dr : rr1 - r0 - dr, cc0 - c0 - dc : cc1 - c0 - dc] = caster
            shadow[alpha > 0] = 0.0
        return alpha, ctype, brightness, shadow

    @staticmethod
    def _alpha(
        field: np.ndarray, t_thin: float, t_thick: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        thick = field >= t_thick
        thin = (field > t_thin) & ~thick
        frac = np.clip((field - t_thin) / max(t_thick - t_thin, 1e-6), 0.0, 1.0)
        alpha = np.where(thick, 1.0, np.where(thin, 0.02 + 0.68 * frac, 0.0)).astype(np.float32)
        ctype = thin.astype(np.uint8) + 2 * thick.astype(np.uint8)
        depth = np.clip((field - t_thick) / 0.6, 0.0, 1.0).astype(np.float32)
        return alpha, ctype, depth

    def _shadow_offset(self) -> tuple[int, int]:
        """(rows, cols) from a shadow to the cloud casting it, for the fixed sun geometry."""
        reach = _CLOUD_HEIGHT_M * math.tan(math.radians(_SUN_ZENITH_DEG)) / self.grid.resolution
        az = math.radians(_SUN_AZIMUTH_DEG)
        # The cloud lies towards the sun from its shadow: east = +col, north = -row.
        return int(round(-reach * math.cos(az))), int(round(reach * math.sin(az)))

    # ------------------------------------------------------------------ rendering

    def _render_s2(
        self,
        collection: Collection,
        k: int,
        band_idx: list[int],
        r0: int,
        c0: int,
        h: int,
        w: int,
        *,
        cloud_free: bool = False,
    ) -> np.ndarray:
        classes = self._landcover()[r0 : r0 + h, c0 : c0 + w].astype(np.intp) - 1
        tex = self._texture()
        green = tex["green"][r0 : r0 + h, c0 : c0 + w]
        if cloud_free:  # the same sensing under a clear sky: opacity 0 and no shadow
            alpha = np.zeros((h, w), np.float32)
            brightness = shadow = alpha
        else:
            alpha, _, brightness, shadow = self._clouds(k, r0, c0, h, w)
        clear = 1.0 - alpha
        # Surface reflectance is lut[class] * gain * (1 + g_b * green); fold the shadow and
        # the clear-sky share of the composite into the gain once for all bands.
        gain = tex["gain"][r0 : r0 + h, c0 : c0 + w] * (1.0 - _SHADOW_DARKENING * shadow)
        gain *= clear
        cloud = alpha * brightness  # times the per-band cloud reflectance
        haze = float(self._s2_haze[k])
        toa = collection is Collection.S2_L1C
        out = np.empty((len(band_idx), h, w), np.float32)
        tmp = np.empty((h, w), np.float32)
        for i, b in enumerate(band_idx):
            band = out[i]
            np.take(_S2_BOA[:, b], classes, out=band, mode="clip")
            band *= gain
            if _GREEN_WEIGHT[b]:
                np.multiply(green, _GREEN_WEIGHT[b], out=tmp)
                tmp += 1.0
                band *= tmp
            path = _PATH[b] * haze
            if toa:  # (1 - a) * (path + T * S) + a * C
                band *= _TRANS[b]
                band += np.multiply(clear, path, out=tmp)
                band += np.multiply(cloud, _CLOUD_TOA[b], out=tmp)
            else:  # (1 - a) * S + a * (C - path) / T
                band += np.multiply(cloud, _CLOUD_TOA[b] / _TRANS[b], out=tmp)
                band -= np.multiply(alpha, path / _TRANS[b], out=tmp)
        return out

    def _render_s1(
        self, k: int, band_idx: list[int], r0: int, c0: int, h: int, w: int
    ) -> np.ndarray:
        classes = self._landcover()[r0 : r0 + h, c0 : c0 + w].astype(np.intp) - 1
        offset_db = self._texture()["db"][r0 : r0 + h, c0 : c0 + w]
        rng = self._rng(_STREAM_S1, k)
        change = rng.normal(0.0, 0.3, (17, 2)).astype(np.float32)
        change[16] += rng.normal(0.0, 1.0, 2).astype(np.float32)  # wind on water
        speckle = self._speckle(k, r0, c0, h, w)
        out = np.empty((len(band_idx), h, w), np.float32)
        for i, b in enumerate(band_idx):
            db = (_S1_DB[:, b] + change[:, b])[classes] + offset_db
            power = 10.0 ** (db / 10.0) * speckle[b] + _S1_NOISE_FLOOR
            out[i] = 10.0 * np.log10(power)
        return out

    def _speckle(self, k: int, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """Gamma speckle (mean 1, 4.4 looks) for VV and VH, drawn in fixed world blocks."""
        out = np.empty((2, h, w), np.float32)
        bs = _SPECKLE_BLOCK
        for br in range(r0 // bs, (r0 + h - 1) // bs + 1):
            for bc in range(c0 // bs, (c0 + w - 1) // bs + 1):
                rng = self._rng(_STREAM_SPECKLE, k, br, bc)
                block = rng.standard_gamma(_S1_LOOKS, (2, bs, bs), dtype=np.float32)
                block /= _S1_LOOKS
                y0, y1 = max(r0, br * bs), min(r0 + h, (br + 1) * bs)
                x0, x1 = max(c0, bc * bs), min(c0 + w, (bc + 1) * bs)
                out[:, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = block[
                    :, y0 - br * bs : y1 - br * bs, x0 - bc * bs : x1 - bc * bs
                ]
        return np.maximum(out, 1e-6)
