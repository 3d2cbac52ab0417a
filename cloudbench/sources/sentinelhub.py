"""Sentinel Hub (or the Copernicus Data Space Ecosystem) as a :class:`Source`.

``SentinelHubSource.search`` asks the Catalog API (STAC) for acquisitions, paging through every
result; ``SentinelHubSource.read`` asks the Process API for one acquisition on exactly the
requested grid (bbox in the grid's CRS, width x height = the grid's size) and decodes the GeoTIFF.

Choices worth knowing:

* **Service URL.** Data collections are redefined with ``service_url=settings.base_url`` and the
  ``SHConfig`` gets the same ``sh_base_url``, so a custom deployment is never silently replaced by
  the default one (sentinelhub-py picks a collection's ``service_url`` over the config's).
* **Catalog items are tiles.** The Catalog API gives one Sentinel-2 item per MGRS tile and pass
  (109.8 km tiles overlapping by 9.8 km: a place near a tile edge is in two to four items of one
  pass); an item's ``datetime`` is the tile's sensing time, minutes after the datatake start in
  its product name, and Sentinel Hub's S2 items carry no ``s2:*`` / ``sat:*`` properties. So
  ``search`` takes the relative orbit, platform, datatake start, tile and processing baseline
  from the product name (:func:`product_name_fields`) where the catalog lacks them, and returns
  items as they are; ``cloudbench.pairs.sensings`` groups them into one sensing per pass.
* **Which acquisition.** The Process API has no product-id filter for Sentinel-2/1 collections;
  a read asks for the time range ``acquisition.datetime +- 5 minutes`` with ``mostRecent``
  mosaicking. Tiles of one datatake share their sensing time to within seconds, so the grid is
  filled from the same pass even where it straddles MGRS tiles; Sentinel-1 reads also carry the
  acquisition's orbit direction, so a pass of the other direction can never leak in.
* **Sentinel-2 values.** Products of processing baseline 04.00 and later carry an offset of
  -1000 DN (``BOA_ADD_OFFSET`` in L2A, ``RADIO_ADD_OFFSET`` in L1C); earlier ones none. One read
  is a mosaic of every tile item of the pass that meets the grid, and the tiles of one pass can
  be of different baselines (reprocessing reaches tiles one at a time), so the offset is a
  property of each *tile*, not of the read: only the service knows which tile gave which pixel.
  So the request sets ``processing.harmonizeValues = true`` (the service's default, set
  explicitly so a deployment cannot change it): the service removes each tile's own offset
  before mosaicking, DN = 10000 x reflectance on the pre-04.00 scale, negative values clamped to
  0 (the service's documented behaviour for ``DN`` units). The evalscript asks for ``DN`` (every
  band and ``dataMask``), returned as UINT16 (half the processing units of FLOAT32) with 0, the
  products' own no-data value, where ``dataMask`` is 0; ``/ 10000`` gives reflectance, no data
  (0) -> NaN. The baselines are recorded (:func:`processing_baseline`, ``processing_baselines``
  of a sensing), not applied.
* **Scene classification.** :meth:`SentinelHubSource.read_with_scl` adds Sen2Cor's ``SCL`` band
  (L2A only) to the same request: class codes 0-11, not harmonised (a class band has no offset),
  0 where there is no data.
* **Sentinel-1 values.** The evalscript returns linear power (``units: "LINEAR_POWER"``) with the
  configured backscatter coefficient, orthorectified on the Copernicus DEM; we convert to dB
  (``10 log10``), non-positive values and ``dataMask == 0`` -> NaN.
* **Retries.** sentinelhub-py retries connection errors, timeouts and 5xx
  (``max_download_attempts``, ``download_sleep_time`` with x3 back-off) and waits on 429
  (``Retry-After``, in milliseconds as Sentinel Hub sends it; at most ``max_attempts`` times).
  A response that is not a readable GeoTIFF of the expected shape is retried by us, up to
  ``max_attempts`` reads in all. What still fails becomes a :class:`CloudbenchError` naming the
  request and the HTTP status, never the credentials.
* **Credentials** come from ``SH_CLIENT_ID`` / ``SH_CLIENT_SECRET`` or from sentinelhub-py's own
  stored configuration (``sentinelhub.config``); they are never logged: a logging filter redacts
  them (and access tokens) from the DEBUG records of ``requests_oauthlib``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from shapely.geometry.base import BaseGeometry

from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Acquisition, Collection, Grid

__all__ = [
    "PRESETS",
    "SentinelHubSettings",
    "SentinelHubSource",
    "cached_source",
    "PlanCost",
    "Quota",
    "processing_units",
    "quota_warning",
    "request_units",
    "evalscript",
    "processing_baseline",
    "product_name_fields",
    "sh_config",
]

LOGGER = logging.getLogger(__name__)

PRESETS: dict[str, tuple[str, str]] = {
    "sentinel-hub": (
        "https://services.sentinel-hub.com",
        "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token",
    ),
    "cdse": (
        "https://sh.dataspace.copernicus.eu",
        "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token",
    ),
}
"""(base URL, token URL) of the known deployments."""

BACKSCATTER_COEFFICIENTS: dict[str, str] = {
    "beta0": "BETA0",
    "sigma0": "SIGMA0_ELLIPSOID",
    "gamma0": "GAMMA0_ELLIPSOID",
    "gamma0_terrain": "GAMMA0_TERRAIN",
}
"""Our names for the Process API's Sentinel-1 ``backCoeff`` values."""

TIME_WINDOW = dt.timedelta(minutes=5)
"""Half-width of the Process API time range around an acquisition's sensing time."""

SCL_BAND = "SCL"
"""Sen2Cor's scene classification band of L2A products (class codes 0-11, 20 m native)."""

_BASELINE = re.compile(r"(\d{1,2})\.(\d{2})")
_BASELINE_IN_ID = re.compile(r"_N(\d\d)(\d\d)_")
_TILE_IN_ID = re.compile(r"_T(\d{2}[A-Z]{3})(?:_|$)")
_ORBIT_IN_ID = re.compile(r"_R(\d{3})(?:_|$)")
_PLATFORM_IN_ID = re.compile(r"^S2([A-D])_")
_DATATAKE_IN_ID = re.compile(r"^S2[A-D]_MSI\w{3}_(\d{8}T\d{6})(?:_|$)")


class SentinelHubSettings(BaseModel):
    """Where and how to reach Sentinel Hub. Holds no credentials (see :func:`sh_config`)."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["sentinel-hub", "cdse", "custom"] = "sentinel-hub"
    base_url: str = ""
    """Service URL; empty: the preset's (required with ``preset: custom``)."""
    token_url: str = ""
    """OAuth token URL; empty: the preset's (required with ``preset: custom``)."""
    backscatter_coefficient: Literal["beta0", "sigma0", "gamma0", "gamma0_terrain"] = (
        "gamma0_terrain"
    )
    orbit_direction: Literal["ascending", "descending", "both"] = "both"
    cache_folder: Path | None = None
    """sentinelhub-py's request cache (``data_folder``): responses are kept and reused."""
    timeout_seconds: float = Field(120.0, gt=0)
    max_attempts: int = Field(4, ge=1)
    retry_sleep_seconds: float = Field(5.0, ge=0)
    """Wait after the first failed attempt (then x3 per attempt)."""

    @model_validator(mode="after")
    def _resolve_urls(self) -> SentinelHubSettings:
        if self.preset == "custom":
            missing = [n for n in ("base_url", "token_url") if not getattr(self, n)]
            if missing:
                raise ValueError(f"preset 'custom' needs {' and '.join(missing)}")
        else:
            base, token = PRESETS[self.preset]
            self.base_url = self.base_url or base
            self.token_url = self.token_url or token
        for name in ("base_url", "token_url"):
            url = getattr(self, name)
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
        self.base_url = self.base_url.rstrip("/")
        return self


# ---------------------------------------------------------------------- credentials, logging


class _RedactSecrets(logging.Filter):
    """Removes registered secrets and OAuth tokens from log records."""

    _PATTERNS = (
        re.compile(r"(client_secret=)[^&\s'\"]+"),
        re.compile(r"((?:access_token|refresh_token)['\"]?\s*[:=]\s*['\"]?)[^'\"&\s,}]+"),
        re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        for pattern in self._PATTERNS:
            redacted = pattern.sub(r"\1***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACT = _RedactSecrets()
_REDACTED_LOGGERS = (
    "requests_oauthlib.oauth2_session",
    "requests_oauthlib.oauth2_auth",
    "oauthlib.oauth2.rfc6749.clients.base",
    "oauthlib.oauth2.rfc6749.parameters",
    "sentinelhub.download.session",
    "sentinelhub.download.handlers",
    "sentinelhub.download.client",
    "sentinelhub.download.sentinelhub_client",
    "urllib3.connectionpool",
)
for _name in _REDACTED_LOGGERS:
    logging.getLogger(_name).addFilter(_REDACT)


def sh_config(settings: SentinelHubSettings) -> Any:
    """An ``SHConfig`` for ``settings`` with credentials from the environment or sentinelhub-py.

    ``SH_CLIENT_ID`` and ``SH_CLIENT_SECRET`` win; otherwise sentinelhub-py's stored configuration
    (profile ``SH_PROFILE`` or the default one) is used, without creating a file when none exists.
    """
    from sentinelhub import SHConfig

    env_id = os.environ.get("SH_CLIENT_ID", "")
    env_secret = os.environ.get("SH_CLIENT_SECRET", "")
    client_id, client_secret = env_id, env_secret
    if not (client_id and client_secret):
        stored = None
        if os.path.exists(SHConfig.get_config_location()):
            try:
                stored = SHConfig.load()
            except (KeyError, ValueError, OSError):
                stored = None
        if stored is not None and stored.sh_client_id and stored.sh_client_secret:
            client_id, client_secret = stored.sh_client_id, stored.sh_client_secret
    if not (client_id and client_secret):
        raise CloudbenchError(
            "no Sentinel Hub credentials: set the SH_CLIENT_ID and SH_CLIENT_SECRET environment "
            "variables, or store them with sentinelhub-py (`sentinelhub.config --sh_client_id ... "
            "--sh_client_secret ...`)"
        )
    _REDACT.secrets.add(client_secret)
    attempts = settings.max_attempts
    return SHConfig(
        use_defaults=True,
        sh_client_id=client_id,
        sh_client_secret=client_secret,
        sh_base_url=settings.base_url,
        sh_token_url=settings.token_url,
        max_download_attempts=attempts,
        max_retries=attempts,
        download_sleep_time=settings.retry_sleep_seconds,
        download_timeout_seconds=settings.timeout_seconds,
    )


# ---------------------------------------------------------------------- evalscripts


def evalscript(collection: Collection, bands: Sequence[str]) -> str:
    """The evalscript returning ``bands``: S2 digital numbers (``DN``, harmonised per tile by
    the request's ``harmonizeValues``; ``SCL`` its class codes) as UINT16, 0 where ``dataMask``
    is 0 (0 is also the products' own no-data value); S1 linear power as FLOAT32, NaN where
    ``dataMask`` is 0. Units are given per band (``dataMask`` only exists in ``DN``)."""
    radar = collection is Collection.S1_GRD
    unit, sample_type, nodata = ("LINEAR_POWER", "FLOAT32", "NaN") if radar else (
        "DN", "UINT16", "0")
    inputs = ", ".join(f'"{b}"' for b in (*bands, "dataMask"))
    units = ", ".join([*(f'"{unit}"' for _ in bands), '"DN"'])
    empty = ", ".join(nodata for _ in bands)
    values = ", ".join(f"s.{b}" for b in bands)
    return (
        "//VERSION=3\n"
        "function setup() {\n"
        "  return {\n"
        f"    input: [{{bands: [{inputs}], units: [{units}]}}],\n"
        f'    output: {{id: "default", bands: {len(bands)}, sampleType: "{sample_type}"}}\n'
        "  };\n"
        "}\n"
        "function evaluatePixel(s) {\n"
        f"  if (s.dataMask == 0) return [{empty}];\n"
        f"  return [{values}];\n"
        "}\n"
    )


# ---------------------------------------------------------------------- processing units, quotas
#
# The published rules (docs/aoi.md, "Cost", cites them): Sentinel Hub's "Processing Unit
# definition" as both deployments publish it (documentation.dataspace.copernicus.eu
# APIs/SentinelHub/Overview/ProcessingUnit.html; docs.sentinel-hub.com/api/latest/api/overview/
# processing-unit/). One PU is 512 x 512 output px, 3 input bands, one data sample, <= 16-bit
# output, no extra processing; factors multiply; the area factor is at least 0.01; a Process API
# request costs at least 0.005 PU; Sentinel-1 orthorectification x 2, radiometric terrain
# correction x 2.5 instead (orthorectification, its prerequisite, is then not applied again).

PU_PIXELS = 512 * 512
"""Output pixels of one PU."""
PU_BANDS = 3
"""Input bands of one PU (``dataMask`` is not counted)."""
MIN_AREA_FACTOR = 0.01
"""The area (output size) factor's minimum: 0.25 km² of 10 m pixels."""
MIN_REQUEST_PU = 0.005
"""A Process API request's minimal cost."""
FLOAT32_FACTOR = 2.0
"""32-bit float TIFF output."""
ORTHORECTIFY_FACTOR = 2.0
"""Sentinel-1 orthorectification."""
TERRAIN_CORRECTION_FACTOR = 2.5
"""Sentinel-1 radiometric terrain correction (``backCoeff: GAMMA0_TERRAIN``), in place of the
orthorectification factor."""


def request_units(
    pixels: int, bands: int, *, float32: bool = False, samples: int = 1,
    orthorectify: bool = False, terrain_correction: bool = False,
) -> float:
    """Processing units of one Process API request by the published formula: max(0.01, pixels /
    512²) x bands / 3 x (2 for FLOAT32) x samples x (2 orthorectified, or 2.5 with radiometric
    terrain correction), at least 0.005. ``bands``: input bands, ``dataMask`` not counted."""
    factor = max(MIN_AREA_FACTOR, pixels / PU_PIXELS) * bands / PU_BANDS * samples
    if float32:
        factor *= FLOAT32_FACTOR
    if terrain_correction:
        factor *= TERRAIN_CORRECTION_FACTOR
    elif orthorectify:
        factor *= ORTHORECTIFY_FACTOR
    return max(MIN_REQUEST_PU, factor)


def processing_units(
    pixels: int, bands: int, collection: Collection,
    backscatter_coefficient: str = "gamma0_terrain",
) -> float:
    """Processing units of one request of ``SentinelHubSource.read`` as it sets them: S2 as UINT16
    (x 1); S1 as FLOAT32 (x 2), always orthorectified (x 2), or with radiometric terrain
    correction (x 2.5 instead) when ``backscatter_coefficient`` is ``gamma0_terrain``
    (``GAMMA0_TERRAIN``). An estimate for dry runs: the service's own accounting decides."""
    if collection is not Collection.S1_GRD:
        return request_units(pixels, bands)
    return request_units(pixels, bands, float32=True, orthorectify=True,
                         terrain_correction=backscatter_coefficient == "gamma0_terrain")


def s1_kind(backscatter_coefficient: str) -> str:
    """The name of an S1 request kind in a plan's breakdown."""
    rtc = backscatter_coefficient == "gamma0_terrain"
    return (f"S1 GRD {backscatter_coefficient}, FLOAT32, "
            f"{'terrain-corrected x2.5' if rtc else 'orthorectified x2'}")


class PlanCost:
    """Process API requests and processing units of a planned build, per request kind."""

    def __init__(self) -> None:
        self.kinds: dict[str, list[float]] = {}

    def add(self, kind: str, units: float, count: int = 1) -> None:
        """``count`` requests of ``kind`` costing ``units`` PU each."""
        entry = self.kinds.setdefault(kind, [0, 0.0])
        entry[0] += count
        entry[1] += units * count

    @property
    def requests(self) -> int:
        return int(sum(n for n, _ in self.kinds.values()))

    @property
    def units(self) -> float:
        """Total PU, rounded up to 0.01."""
        return _ceil2(sum(u for _, u in self.kinds.values()))

    def by_kind(self) -> dict[str, dict[str, float]]:
        return {k: {"requests": int(n), "processing_units": _ceil2(u)}
                for k, (n, u) in self.kinds.items()}

    def breakdown(self) -> str:
        """One line: requests and PU per kind."""
        return "requests by kind: " + "; ".join(
            f"{k}: {int(n)} requests, {_ceil2(u):g} PU" for k, (n, u) in self.kinds.items())


def _ceil2(value: float) -> float:
    return math.ceil(round(value * 100, 6)) / 100


@dataclass(frozen=True)
class Quota:
    """Monthly (and per-minute) Sentinel Hub API quota of an account type or plan."""

    name: str
    requests_per_month: int
    units_per_month: int
    requests_per_minute: int
    units_per_minute: int

    def covers(self, requests: int, units: float) -> bool:
        return requests <= self.requests_per_month and units <= self.units_per_month

    def describe(self) -> str:
        return (f"{self.name} ({_n(self.requests_per_month)} requests, "
                f"{_n(self.units_per_month)} PU a month)")


CDSE_FREE = Quota("a CDSE free account (Copernicus General User)", 10_000, 10_000, 300, 300)
"""documentation.dataspace.copernicus.eu/Quotas.html, Sentinel Hub APIs column."""
CDSE_USER_TYPES = (
    Quota("the Copernicus Collaborative Ground Segment user type", 1_000_000, 100_000, 600, 600),
    Quota("the Copernicus Services user type", 8_000_000, 400_000, 1_200, 1_200),
)
"""CDSE's larger quotas, given by user type (eligibility, not purchase); same page."""
SENTINEL_HUB_PLANS = (
    Quota("30-day free trial", 30_000, 30_000, 300, 300),
    Quota("Exploratory", 100_000, 30_000, 300, 300),
    Quota("Basic", 700_000, 70_000, 500, 500),
    Quota("Enterprise-S", 8_000_000, 400_000, 600, 1_000),
    Quota("Enterprise-L", 10_000_000, 1_000_000, 1_200, 2_000),
)
"""services.sentinel-hub.com plans, www.sentinel-hub.com/pricing/ ("Processing volume")."""
CDSE_HOSTS = frozenset({"sh.dataspace.copernicus.eu"})
"""Hosts of the CDSE Sentinel Hub deployment: its accounts have CDSE's quotas."""


def _n(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".").replace(",", " ")


def is_cdse(settings: SentinelHubSettings) -> bool:
    """Whether ``settings`` reach CDSE (whose free accounts have :data:`CDSE_FREE`)."""
    return urlparse(settings.base_url).hostname in CDSE_HOSTS


def quota_warning(settings: SentinelHubSettings, requests: int, units: float) -> str | None:
    """For a CDSE deployment, one line when ``requests`` / ``units`` exceed a free account's
    monthly quota: by how much, how many months of it the build needs (quotas reset on the 1st
    and do not accumulate), and what covers it in one month. None otherwise."""
    free = CDSE_FREE
    if not is_cdse(settings) or free.covers(requests, units):
        return None
    over = []
    if requests > free.requests_per_month:
        over.append(f"{_n(requests - free.requests_per_month)} requests")
    if units > free.units_per_month:
        over.append(f"{_n(units - free.units_per_month)} PU")
    months = max(math.ceil(requests / free.requests_per_month),
                 math.ceil(units / free.units_per_month))
    cdse = next((q for q in CDSE_USER_TYPES if q.covers(requests, units)), None)
    plan = next((q for q in SENTINEL_HUB_PLANS if q.covers(requests, units)), None)
    one_month = (f"a Sentinel Hub {plan.describe()} subscription" if plan is not None
                 else "a custom Sentinel Hub subscription")
    if cdse is not None:
        one_month = f"{cdse.describe()} if eligible, or {one_month}"
    return (f"this build needs {_n(requests)} Process API requests and {_n(units)} PU, over "
            f"{free.describe()} by {' and '.join(over)}: {months} months of the free quota "
            f"(it resets on the 1st; a re-run resumes, the request cache keeps what was paid "
            f"for), or in one month {one_month}")


# ---------------------------------------------------------------------- processing baselines


def _baseline(value: Any, product_id: str) -> str | None:
    """``value`` ("4.00", "04.00") or else the id's ``_Nxxyy_`` as "04.00"; None when neither."""
    match = _BASELINE.fullmatch(str(value).strip()) if value is not None else None
    match = match or _BASELINE_IN_ID.search(product_id)
    if match is None:
        return None
    return f"{int(match.group(1)):02d}.{int(match.group(2)):02d}"


def processing_baseline(acquisition: Acquisition) -> str | None:
    """A Sentinel-2 product's processing baseline, "04.00" style: the catalog's
    (``properties["processing_baseline"]``), else the product id's ``_Nxxyy_``; None when
    neither gives one (reads do not need it: the service harmonises per tile)."""
    return _baseline(acquisition.properties.get("processing_baseline"), acquisition.id)


# ---------------------------------------------------------------------- the source


def _status(exc: BaseException) -> str:
    """'HTTP 503' (or the exception type) of a sentinelhub / requests exception."""
    cause: Any = getattr(exc, "request_exception", None) or exc.__cause__ or exc
    response = getattr(cause, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        return f"HTTP {response.status_code}"
    return type(cause).__name__


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _parse_time(text: str) -> dt.datetime:
    return _as_utc(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))


# STAC property -> the property names the synthetic world uses.
_PROPERTY_ALIASES: dict[str, tuple[str, Any]] = {
    "sat:orbit_state": ("orbit_direction", str.upper),
    "sat:relative_orbit": ("relative_orbit", int),
    "s2:cloud_shadow_percentage": ("cloud_shadow_percentage", float),
    "s2:thin_cirrus_percentage": ("thin_cirrus_percentage", float),
    "processing:level": ("processing_level", str),
    "sar:instrument_mode": ("instrument_mode", str),
    "s1:polarization": ("polarization", str),
}


def product_name_fields(name: str) -> dict[str, Any]:
    """What a Sentinel-2 product name (``S2A_MSIL2A_20180705T030541_N0206_R075_T49RFN_
    20180705T070112``, with or without the discriminator and ``.SAFE``) says: ``platform``
    ("sentinel-2a"), ``datatake_start`` (the datatake sensing start, UTC), ``relative_orbit``
    (int), ``mgrs_tile`` ("49RFN") and ``processing_baseline`` ("02.06"); only the fields found.

    The datatake start is *not* the tile's sensing time (the catalog's ``datetime``): a tile is
    sensed seconds to minutes after its datatake starts (ESA: "usually a few minutes, depending
    on the position of the granule in the datatake, but it can be more").
    """
    name = name.removesuffix(".SAFE")
    out: dict[str, Any] = {}
    if (m := _PLATFORM_IN_ID.match(name)) is not None:
        out["platform"] = f"sentinel-2{m.group(1).lower()}"
    if (m := _DATATAKE_IN_ID.match(name)) is not None:
        out["datatake_start"] = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(
            tzinfo=dt.UTC)
    if (m := _ORBIT_IN_ID.search(name)) is not None:
        out["relative_orbit"] = int(m.group(1))
    if (m := _TILE_IN_ID.search(name)) is not None:
        out["mgrs_tile"] = m.group(1)
    if (baseline := _baseline(None, name)) is not None:
        out["processing_baseline"] = baseline
    return out


def _mgrs_tile(props: dict[str, Any], product_id: str) -> str | None:
    """The MGRS tile ("33UUP"): ``s2:mgrs_tile``, else the ``mgrs:*`` fields, else the id's
    ``_Txxxxx_``; None when none gives it."""
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    keys = ("utm_zone", "latitude_band", "grid_square")
    zone, band, square = (props.get(f"mgrs:{k}") for k in keys)
    if zone and band and square and str(zone).isdigit():
        return f"{int(zone):02d}{band}{square}"
    match = _TILE_IN_ID.search(product_id)
    return match.group(1) if match else None


class SentinelHubSource:
    """Sentinel Hub Catalog + Process API as a :class:`~cloudbench.sources.base.Source`."""

    name = "sentinel-hub"
    synthetic = False

    def __init__(self, settings: SentinelHubSettings | None = None) -> None:
        self.settings = settings or SentinelHubSettings()
        self._config: Any = None  # built lazily: a source can exist without credentials

    def __repr__(self) -> str:
        s = self.settings
        return f"SentinelHubSource(preset={s.preset!r}, base_url={s.base_url!r})"

    @property
    def config(self) -> Any:
        if self._config is None:
            self._config = sh_config(self.settings)
        return self._config

    # ------------------------------------------------------------------ collections

    def data_collection(self, collection: Collection, orbit_direction: str | None = None) -> Any:
        """The sentinelhub ``DataCollection`` bound to the configured service URL."""
        from sentinelhub import DataCollection

        base = {
            Collection.S2_L1C: DataCollection.SENTINEL2_L1C,
            Collection.S2_L2A: DataCollection.SENTINEL2_L2A,
            Collection.S1_GRD: DataCollection.SENTINEL1_IW,
        }[Collection(collection)]
        params: dict[str, Any] = {"service_url": self.settings.base_url}
        if collection is Collection.S1_GRD:
            orbit = (orbit_direction or self.settings.orbit_direction).upper()
            params["orbit_direction"] = orbit
        key = repr(sorted(params.items()))
        digest = hashlib.sha1(f"{base.name}|{key}".encode()).hexdigest()[:12]
        name = f"CLOUDBENCH_{base.name}_{digest}"
        try:
            return base.define_from(name, **params)
        except ValueError:
            # An identical definition already exists (e.g. the stock collection when base_url is
            # its default service URL): use that one.
            return DataCollection(base.value.derive(**params, _name=name))

    # ------------------------------------------------------------------ search

    def search(
        self,
        collection: Collection,
        area: BaseGeometry,
        start: dt.datetime,
        end: dt.datetime,
        *,
        max_cloud_cover: float | None = None,
        min_cloud_cover: float | None = None,
    ) -> list[Acquisition]:
        """Acquisitions intersecting ``area`` (EPSG:4326) in [start, end], sorted by time.

        ``min_cloud_cover`` / ``max_cloud_cover`` (percent, inclusive) filter Sentinel-2 products
        on the catalog's ``eo:cloud_cover``, server-side; Sentinel-1 is not filtered.
        """
        from sentinelhub import CRS, Geometry, SentinelHubCatalog
        from sentinelhub.exceptions import DownloadFailedException

        collection = Collection(collection)
        data_collection = self.data_collection(collection)
        terms = []
        if collection is not Collection.S1_GRD:
            # repr: the shortest exact decimal, so the range edges are the caller's, unrounded
            if min_cloud_cover is not None:
                terms.append(f"eo:cloud_cover >= {float(min_cloud_cover)!r}")
            if max_cloud_cover is not None:
                terms.append(f"eo:cloud_cover <= {float(max_cloud_cover)!r}")
        query_filter = " AND ".join(terms) or None
        t0, t1 = _as_utc(start), _as_utc(end)
        catalog = SentinelHubCatalog(config=self.config)
        what = f"catalog search for {collection.value} {t0:%Y-%m-%d}..{t1:%Y-%m-%d}"
        try:
            features = list(
                catalog.search(
                    data_collection,
                    time=(t0, t1),
                    geometry=Geometry(area, CRS.WGS84),
                    filter=query_filter,
                    limit=100,
                )
            )
        except DownloadFailedException as exc:
            raise CloudbenchError(
                f"Sentinel Hub {what} at {self.settings.base_url} failed ({_status(exc)})"
            ) from None
        except Exception as exc:
            self._raise_auth(exc, what)
            raise
        out: dict[str, Acquisition] = {}
        for feature in features:
            acq = self._acquisition(collection, feature)
            out.setdefault(acq.id, acq)
        return sorted(out.values(), key=lambda a: (a.datetime, a.id))

    @staticmethod
    def _acquisition(collection: Collection, feature: dict[str, Any]) -> Acquisition:
        from shapely.geometry import shape

        props = dict(feature.get("properties", {}))
        when = _parse_time(props.pop("datetime"))
        cloud = props.get("eo:cloud_cover")
        extra: dict[str, Any] = dict(props)
        for key, (alias, cast) in _PROPERTY_ALIASES.items():
            if key in props and props[key] is not None:
                try:
                    extra[alias] = cast(props[key])
                except (TypeError, ValueError):
                    pass
        if collection is not Collection.S1_GRD:
            baseline = _baseline(props.get("s2:processing_baseline"), str(feature["id"]))
            if baseline is not None:
                extra["processing_baseline"] = baseline
            tile = _mgrs_tile(props, str(feature["id"]))
            if tile is not None:
                extra["mgrs_tile"] = tile
            # Sentinel Hub's S2 items carry no sat:* (nor s2:*) properties: the relative orbit,
            # the platform and the datatake start come from the product name (the id)
            named = product_name_fields(str(feature["id"]))
            for key in ("relative_orbit", "platform", "datatake_start"):
                if extra.get(key) is None and key in named:
                    extra[key] = named[key]
        return Acquisition(
            id=str(feature["id"]),
            collection=collection,
            datetime=when,
            footprint=shape(feature["geometry"]),
            cloud_cover=None if cloud is None else float(cloud),
            properties=extra,
        )

    # ------------------------------------------------------------------ read

    def read(self, acquisition: Acquisition, grid: Grid, bands: Sequence[str]) -> np.ndarray:
        """float32 (len(bands), H, W) on exactly ``grid``: S2 reflectance, S1 dB, NaN no data."""
        return self._read(acquisition, grid, bands, scl=False)[0]

    def read_with_scl(
        self, acquisition: Acquisition, grid: Grid, bands: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``read`` of an L2A product plus its scene classification from the same request:
        (float32 reflectance (len(bands), H, W), uint8 SCL codes (H, W), 0 where no data)."""
        if Collection(acquisition.collection) is not Collection.S2_L2A:
            raise CloudbenchError(f"{acquisition.id}: SCL exists in sentinel-2-l2a products only")
        optical, scl = self._read(acquisition, grid, bands, scl=True)
        assert scl is not None
        return optical, scl

    def _read(
        self, acquisition: Acquisition, grid: Grid, bands: Sequence[str], *, scl: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        collection = Collection(acquisition.collection)
        bands = [bands] if isinstance(bands, str) else list(bands)
        unknown = [b for b in bands if b not in collection.bands]
        if unknown or not bands:
            raise CloudbenchError(
                f"bands {unknown or '(none)'} not in {collection.value}; "
                f"allowed: {', '.join(collection.bands)}"
            )
        requested = [*bands, SCL_BAND] if scl else bands
        request = self._process_request(acquisition, collection, grid, requested)
        what = (
            f"process request for {collection.value} {acquisition.id} on grid "
            f"{grid.crs.to_string()} {tuple(round(v, 3) for v in grid.bounds)} "
            f"({grid.width}x{grid.height})"
        )
        attempts = self.settings.max_attempts
        problem = ""
        for attempt in range(attempts):
            content = self._download(request, what, redownload=attempt > 0)
            try:
                data = self._decode(content, grid, len(requested))
            except ValueError as exc:
                problem = str(exc)
                LOGGER.warning(
                    "Sentinel Hub %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts
                )
                self._drop_cached(request)
                continue
            if collection is Collection.S1_GRD:  # linear power -> dB
                with np.errstate(divide="ignore", invalid="ignore"):
                    db = np.where(data > 0, 10.0 * np.log10(data), np.nan).astype(np.float32)
                return db, None
            classes = data[-1].astype(np.uint8) if scl else None
            optical = data[: len(bands)]
            optical[optical == 0] = np.nan  # UINT16 output: 0 is no data
            return optical / np.float32(10000), classes
        raise CloudbenchError(f"Sentinel Hub {what} failed after {attempts} attempts: {problem}")

    def _process_request(
        self, acquisition: Acquisition, collection: Collection, grid: Grid, bands: list[str]
    ) -> Any:
        from sentinelhub import CRS, BBox, MimeType, MosaickingOrder, SentinelHubRequest

        epsg = grid.crs.to_epsg()
        if epsg is None:
            raise CloudbenchError(f"grid CRS {grid.crs} has no EPSG code; Sentinel Hub needs one")
        orbit = None
        if collection is Collection.S1_GRD:
            orbit = acquisition.properties.get("orbit_direction") or None
        data_collection = self.data_collection(collection, orbit)
        when = _as_utc(acquisition.datetime)
        processing: dict[str, Any]
        if collection is Collection.S1_GRD:
            processing = {
                "backCoeff": BACKSCATTER_COEFFICIENTS[self.settings.backscatter_coefficient],
                "orthorectify": True,
                "demInstance": "COPERNICUS",
            }
        else:
            processing = {"harmonizeValues": True}  # per tile, by the service: see the module
        input_data = SentinelHubRequest.input_data(
            data_collection,
            time_interval=(when - TIME_WINDOW, when + TIME_WINDOW),
            mosaicking_order=MosaickingOrder.MOST_RECENT,
            other_args={"processing": processing},
        )
        folder = self.settings.cache_folder
        return SentinelHubRequest(
            evalscript=evalscript(collection, bands),
            input_data=[input_data],
            responses=[SentinelHubRequest.output_response("default", MimeType.TIFF)],
            bbox=BBox(grid.bounds, crs=CRS(epsg)),
            size=(grid.width, grid.height),
            data_folder=str(folder) if folder is not None else None,
            config=self.config,
        )

    def _download(self, request: Any, what: str, *, redownload: bool) -> bytes:
        from sentinelhub.exceptions import DownloadFailedException

        try:
            responses = request.get_data(
                save_data=self.settings.cache_folder is not None,
                redownload=redownload,
                decode_data=False,
                max_threads=1,
            )
        except DownloadFailedException as exc:
            detail = ""
            cause: Any = getattr(exc, "request_exception", None)
            response = getattr(cause, "response", None)
            if response is not None:
                try:
                    detail = f": {response.text[:200]}"
                except Exception:  # noqa: BLE001
                    detail = ""
            raise CloudbenchError(
                f"Sentinel Hub {what} at {self.settings.base_url} failed ({_status(exc)}){detail}"
            ) from None
        except Exception as exc:
            self._raise_auth(exc, what)
            raise
        return bytes(responses[0].content)

    def _raise_auth(self, exc: Exception, what: str) -> None:
        """Turn OAuth failures (bad credentials, unreachable token URL) into CloudbenchErrors."""
        from oauthlib.oauth2.rfc6749.errors import OAuth2Error

        if isinstance(exc, OAuth2Error):
            raise CloudbenchError(
                f"Sentinel Hub {what}: authentication at {self.settings.token_url} failed "
                f"({exc.error}); check SH_CLIENT_ID / SH_CLIENT_SECRET"
            ) from None

    def _drop_cached(self, request: Any) -> None:
        if self.settings.cache_folder is None:
            return
        for download in request.download_list:
            request_path, _ = download.get_storage_paths()
            if request_path:
                shutil.rmtree(os.path.dirname(request_path), ignore_errors=True)

    @staticmethod
    def _decode(content: bytes, grid: Grid, count: int) -> np.ndarray:
        from rasterio.errors import RasterioError
        from rasterio.io import MemoryFile

        try:
            with MemoryFile(content) as memfile, memfile.open() as src:
                data = src.read(out_dtype=np.float32)
                transform = src.transform
        except (RasterioError, OSError) as exc:
            raise ValueError(f"unreadable GeoTIFF ({len(content)} bytes: {exc})") from None
        if data.shape != (count, grid.height, grid.width):
            raise ValueError(
                f"GeoTIFF of shape {data.shape}, expected {(count, grid.height, grid.width)}"
            )
        if not transform.is_identity and not transform.almost_equals(
            grid.transform, precision=1e-6 * max(1.0, abs(grid.resolution))
        ):
            # Process API output on a bbox + size is exactly the grid; anything else is a bug.
            raise ValueError(f"GeoTIFF transform {tuple(transform)[:6]} is not the grid's")
        if not np.all(np.isfinite(data) | np.isnan(data)):
            data[~np.isfinite(data)] = np.nan
        return data


@cache
def _cached_source(settings: str) -> SentinelHubSource:
    return SentinelHubSource(SentinelHubSettings.model_validate_json(settings))


def cached_source(settings: SentinelHubSettings) -> SentinelHubSource:
    """One client per process and settings, so builders reuse its token and session."""
    return _cached_source(settings.model_dump_json())
