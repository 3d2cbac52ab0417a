"""The ``cloudbench`` command line.

Errors a user can cause end in one message and exit status 2; ``--debug`` (anywhere on the
command line) shows the traceback instead. Heavy libraries are imported inside the commands so
``cloudbench --help`` stays fast.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cloudbench.errors import CloudbenchError

if TYPE_CHECKING:
    from pydantic import BaseModel

DEMO_OUT = "cloudbench-demo"


def _workers_option(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--scheduler", metavar="ADDRESS",
                     help="run the build on this Dask scheduler (e.g. tcp://host:8786)")(f)
    f = click.option("--workers", type=click.IntRange(min=1),
                     help="local worker processes (default: all cores)")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override a recipe setting (repeatable), e.g. --set purity=0.7")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cloudbench")
def cli() -> None:
    """Cloudy Sentinel-1/2 scene-classification datasets and benchmarks.

    Add --debug anywhere to see tracebacks.
    """


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path(DEMO_OUT), show_default=True,
              help="output folder: datasets, results, leaderboard.md/.html and plots")
@click.option("--device", help="cpu, cuda, cuda:1 … (default: a GPU when there is one)")
def demo(out: Path, device: str | None) -> None:
    """The main job on the embedded default: the standard leaderboard's smoke spec
    (standard-smoke: every method family on the synthetic world, a few minutes on a CPU)."""
    _leaderboard_run("standard-smoke", out, 1, None, device)


@cli.group()
def leaderboard() -> None:
    """Run leaderboard specs (catalogs/leaderboards) and render their results."""


@leaderboard.command("run")
@click.argument("spec")
@click.option("--out", type=click.Path(path_type=Path),
              help="results folder (default: leaderboard-<name>)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="change the spec, e.g. sources.NR.model=resisc45.pt or seeds=[0] (repeatable)")
@click.option("--datasets", help="comma-separated: only these datasets of the spec")
@click.option("--sources", help="comma-separated: only these sources of the spec")
@click.option("--methods", help="comma-separated: only these methods (entry names) of the spec")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="runs at once on local processes")
@click.option("--scheduler", metavar="ADDRESS", help="fan runs out over this Dask scheduler")
@click.option("--device", help="cpu, cuda, cuda:1 … (overrides the spec)")
@click.option("--devices", type=click.IntRange(min=1),
              help="train each run data-parallel on N GPUs (N CPU processes with --device cpu)")
@click.option("--num-nodes", type=click.IntRange(min=1), help="machines the devices span")
@click.option("--strategy", type=click.Choice(["ddp_spawn", "ddp"]),
              help="ddp_spawn (default) starts the processes; ddp: under torchrun or SLURM")
def leaderboard_run(spec: str, out: Path | None, overrides: tuple[str, ...],
                    datasets: str | None, sources: str | None, methods: str | None,
                    workers: int, scheduler: str | None, device: str | None,
                    devices: int | None, num_nodes: int | None, strategy: str | None) -> None:
    """Run SPEC (a name in catalogs/leaderboards or a YAML path), skipping finished runs."""
    only = {"datasets": datasets, "sources": sources, "methods": methods}
    parallel = {"devices": devices, "num_nodes": num_nodes, "strategy": strategy}
    changes = (*overrides, *(f"{k}={v}" for k, v in parallel.items() if v is not None))
    _leaderboard_run(spec, out, workers, scheduler, device, changes, only)


@leaderboard.command("show")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--spec", "spec_name", help="the spec, for its metrics, title and published numbers")
def leaderboard_show(out: Path, spec_name: str | None) -> None:
    """Render OUT's results as leaderboard.md, leaderboard.html and plots; with --spec, also
    rewrite OUT's results bundle (give --spec OUT/spec.yaml to keep the spec as run)."""
    from cloudbench.harness.render import load_published, render

    if not (out / "results").is_dir():
        raise CloudbenchError(f"{out} holds no leaderboard results (no results/ folder)")
    metrics, published, title, spec = None, None, None, None
    stores: dict[tuple[str, str], Path] = {}
    factors: dict[str, str | None] = {}
    if spec_name:
        from cloudbench.harness.spec import entry_factors, load_spec

        spec = load_spec(spec_name)
        metrics, title = list(spec.metrics), spec.title or spec.name
        factors = entry_factors(spec)
        published = load_published(spec.published) if spec.published else None
        # datasets given by path (recipes are found in OUT/datasets by the renderer)
        stores = {(name, ""): d.path for name, d in spec.datasets.items() if d.path}
    for path in render(out, metrics=metrics, published=published, title=title, stores=stores,
                       factors=factors):
        click.echo(f"wrote {path}")
    if spec is not None:
        from cloudbench.harness.bundle import write_bundle
        from cloudbench.harness.runner import store_roots

        click.echo(f"wrote {write_bundle(out, spec, store_roots(spec, out))}")


@leaderboard.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--strata", is_flag=True,
              help="also the cloud strata (default: stratum all only)")
@click.option("--out", "out_file", type=click.Path(path_type=Path),
              help="also write the comparison to this file: Markdown, or CSV for a .csv name")
def leaderboard_compare(a: Path, b: Path, strata: bool, out_file: Path | None) -> None:
    """Compare two results bundles (output folders of `leaderboard run`) side by side.

    Per dataset, test, source, method, metric and stratum: the mean ± std over seeds of A and
    of B and the difference B − A, rows in one bundle only marked as such; first, whether the
    two used the same datasets (fingerprints), spec, versions and revision.
    """
    from cloudbench.harness.bundle import compare, comparison_markdown, read_bundle
    from cloudbench.store import atomic_write_text

    first, second = read_bundle(a), read_bundle(b)
    table = compare(first, second, strata=strata)
    markdown = comparison_markdown(first, second, table)
    click.echo(markdown, nl=False)
    if out_file is not None:
        text = table.to_csv(index=False) if out_file.suffix == ".csv" else markdown
        out_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_file, text)
        click.echo(f"wrote {out_file}", err=True)  # stdout holds the comparison alone


def _leaderboard_run(spec_name: str, out: Path | None, workers: int, scheduler: str | None,
                     device: str | None, overrides: tuple[str, ...] = (),
                     only: dict[str, str | None] | None = None) -> None:
    from cloudbench.harness.runner import run_leaderboard
    from cloudbench.harness.spec import load_spec, restrict

    changes = [*overrides, *([f"device={device}"] if device else [])]
    spec = load_spec(spec_name, changes)
    for part, names in (only or {}).items():
        if names:
            spec = restrict(spec, part, [n.strip() for n in names.split(",") if n.strip()])
    out = out or Path(f"leaderboard-{spec.name}")
    summary = run_leaderboard(spec, out, workers=workers, scheduler=scheduler)
    resumed = f" ({summary.skipped} already done)" if summary.skipped else ""
    click.echo(f"{summary.runs} runs{resumed}; results in {out}")
    markdown = out / "leaderboard.md"
    if markdown.exists():
        click.echo(markdown.read_text())


@cli.group()
def source() -> None:
    """Source models: a ResNet-50 pre-trained on a cloud-free optical domain."""


@source.command("train")
@click.option("--dataset", required=True, metavar="resisc45|aid",
              help="NWPU-RESISC45 (its train split) or AID (see docs/sources.md)")
@click.option("--root", type=click.Path(path_type=Path), required=True,
              help="folder holding NWPU-RESISC45/ and resisc45-*.txt, or AID/ (or AID/ itself)")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="the model file to write (FILE.pt); FILE.ckpt is its resumable checkpoint")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True,
              help="images are resized to SIZE x SIZE pixels")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01,
              show_default=True, help="peak learning rate (SGD, momentum 0.9, cosine schedule)")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:1 … (auto: a GPU when there is one)")
@click.option("--init", default="imagenet", show_default=True, metavar="imagenet|random",
              help="ImageNet weights from the local torch hub cache (never downloaded), or "
                   "random initialisation")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--holdout", type=click.FloatRange(min=0, max=1, max_open=True),
              help="AID only: fraction of each class held out for validation [default: 0.1]")
@click.option("--workers", type=click.IntRange(min=0), default=min(4, os.cpu_count() or 1),
              show_default=True, help="processes decoding the images")
def source_train(dataset: str, root: Path, out: Path, size: int, epochs: int, batch_size: int,
                 lr: float, device: str, init: str, seed: int, holdout: float | None,
                 workers: int) -> None:
    """Train a ResNet-50 on RESISC45 or AID; the same command resumes a killed run."""
    from cloudbench.harness.engine import Engine, TrainConfig
    from cloudbench.harness.source import pretrain_source

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    summary = pretrain_source(dataset, root, out, Engine(device, seed), config, size=size,
                              init=init, holdout=holdout, workers=workers, echo=click.echo,
                              progress=True)
    click.echo(summary.format())


@cli.command("pretrain")
@click.argument("method", type=click.Choice(["moco-v2", "moco-v3", "mae"]))
@click.option("--store", type=click.Path(path_type=Path),
              help="a cloudbench store: pre-train on its train split (clean or cloudy)")
@click.option("--ssl4eo", type=click.Path(path_type=Path), metavar="ROOT",
              help="SSL4EO-S12 in TorchGeo's layout (ROOT/s1, ROOT/s2a)")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="the backbone checkpoint to write (FILE.pt); FILE.ckpt is its resumable "
                   "checkpoint while it trains")
@click.option("--bands", help="comma-separated input channels [default: VV,VH and the 12 L2A "
                              "bands]")
@click.option("--backbone", help="moco-v2-resnet50, moco-v3-vit-s16 or mae-vit-s16 [default: "
                                 "the method's]")
@click.option("--epochs", type=click.IntRange(min=1), help="[default: 100]")
@click.option("--batch-size", type=click.IntRange(min=2),
              help="[default: 256 (MoCo), 64 (MAE)]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="peak learning rate [default: 0.03 (MoCo v2, SGD), 0.15 (MoCo v3, AdamW), "
                   "0.1 (MAE, AdamW)]")
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True,
              help="side of the augmented views (ViTs: a multiple of 16)")
@click.option("--max-samples", type=click.IntRange(min=2),
              help="pre-train on this many evenly spaced samples at most")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:1 … (auto: a GPU when there is one)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="train.<field> (TrainConfig, e.g. train.weight_decay=0.05) or "
                   "pretext.<setting> (e.g. pretext.queue_size=16384); repeatable")
def pretrain_command(method: str, store: Path | None, ssl4eo: Path | None, out: Path,
                     bands: str | None, backbone: str | None, epochs: int | None,
                     batch_size: int | None, lr: float | None, image_size: int,
                     max_samples: int | None, device: str, seed: int,
                     overrides: tuple[str, ...]) -> None:
    """Pre-train a backbone with METHOD (the CBEN paper's Table IV settings by default).

    The same command resumes an interrupted run from FILE.ckpt. See docs/ssl.md.
    """
    from cloudbench.config import parse_overrides
    from cloudbench.harness.engine import Engine
    from cloudbench.harness.pretrain import default_config, pretrain
    from cloudbench.models.backbones import FUSED_BANDS

    changes = parse_overrides(overrides)
    unknown = sorted(set(changes) - {"train", "pretext"})
    if unknown or not all(isinstance(changes.get(k, {}), dict) for k in ("train", "pretext")):
        raise CloudbenchError(f"--set takes train.<field>=… or pretext.<setting>=…, got "
                              f"{', '.join(unknown) or 'a value for train or pretext itself'}")
    chosen = ([b.strip() for b in bands.split(",") if b.strip()] if bands
              else list(FUSED_BANDS))
    options = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    config = default_config(method, **{**changes.get("train", {}),
                                       **{k: v for k, v in options.items() if v is not None}})

    def echo(entry: dict) -> None:
        if not entry.get("resumed"):
            click.echo(f"epoch {entry['epoch']}/{config.epochs}: loss {entry['loss']:.4f}, "
                       f"{entry['samples_per_second']:.1f} samples/s")

    result = pretrain(method, store=store, ssl4eo=ssl4eo, bands=chosen, out=out, config=config,
                      image_size=image_size, engine=Engine(device, seed),
                      settings=changes.get("pretext"), max_samples=max_samples,
                      backbone=backbone, log=echo)
    click.echo(result.format())


@cli.group()
def weights() -> None:
    """SSL4EO-S12 weight files of the SSL backbones (docs/ssl.md): never downloaded at run time."""


@weights.command("list")
def weights_list() -> None:
    """Every backbone's S2 and S1 weights: TorchGeo's name, where they are expected, present?"""
    from cloudbench.models.weights import entries

    for entry in entries():
        if entry.url is None:
            click.echo(f"{entry.label:24} {entry.name:40} not in this TorchGeo "
                       "(give a file by path)")
            continue
        state = "present" if entry.present else "missing"
        click.echo(f"{entry.label:24} {entry.name:40} {state:8} {entry.path}")


@weights.command("fetch")
@click.argument("names", nargs=-1, required=True)
def weights_fetch(names: tuple[str, ...]) -> None:
    """Download weights into the torch hub cache (needs a network): NAMES are 'all', a backbone,
    backbone:s2 / backbone:s1, or TorchGeo names such as ResNet50_Weights.SENTINEL2_ALL_MOCO."""
    from cloudbench.models.weights import fetch, select

    chosen = select(names)
    for entry in chosen:
        if entry.url is None:
            click.echo(f"{entry.label}: skipped, {entry.missing}", err=True)
            continue
        click.echo(f"{entry.label}: {fetch(entry)}")


@weights.command("fake")
@click.argument("backbones", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="folder for the fake files (never the torch hub cache)")
def weights_fake(backbones: tuple[str, ...], out: Path) -> None:
    """Write FAKE weight files (the released files' keys and shapes, random values) for tests
    and smoke runs: <backbone>-<s2|s1>.fake.pth for BACKBONES (default: all). They say nothing
    about any method."""
    from cloudbench.models.backbones import BACKBONES
    from cloudbench.models.weights import write_fake

    for path in write_fake(out, backbones or tuple(BACKBONES)):
        click.echo(f"fake weights (random, for tests only): {path}")


@cli.command("download")
@click.argument("name", metavar="NAME")
@click.option("--out", type=click.Path(path_type=Path),
              help="folder for the data (not for ssl4eo-weights: the torch hub cache)")
@click.option("--only", metavar="PART,...",
              help="comma-separated parts or name prefixes, e.g. ROIs1868_summer")
@click.option("--dry-run", is_flag=True,
              help="print each part, its URL and size, and the total; fetch nothing")
@click.option("--mirror", metavar="URL",
              help="fetch every part from URL/<file> instead of the publisher's server")
def download_command(name: str, out: Path | None, only: str | None, dry_run: bool,
                     mirror: str | None) -> None:
    """Fetch the raw data the builders read (docs/download.md): NAME is sen12ms, sen12ms-cr,
    bigearthnet (v1.0 with the split lists), bigearthnet-v2 (reBEN), earthenv or
    ssl4eo-weights. Resumes cut downloads and checks sizes and checksums."""
    from cloudbench.download import download

    parts = [p.strip() for p in only.split(",") if p.strip()] if only else []
    download(name, out, only=parts, dry_run=dry_run, mirror=mirror, echo=click.echo)


class _BuildGroup(click.Group):
    """``cloudbench build NAME …`` runs a shipped recipe; ``cloudbench build FILE.yaml …`` runs a
    recipe file with the command (options and builder) of the recipe its ``builder:`` names."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        from cloudbench.config import is_file_ref, recipe_builder

        if args and args[0] not in self.commands and is_file_ref(args[0]):
            name = recipe_builder(args[0])  # a missing file or builder: one clear error
            command = self.get_command(ctx, name)
            if command is None:
                raise CloudbenchError(f"recipe {args[0]}: builder {name!r} has no "
                                      f"'cloudbench build' command")
            ctx.meta[_RECIPE_FILE] = str(Path(args[0]).resolve())
            return name, command, args[1:]
        return super().resolve_command(ctx, args)


_RECIPE_FILE = "cloudbench.recipe_file"


@cli.group(cls=_BuildGroup)
def build() -> None:
    """Build a dataset from a recipe: a shipped one in catalogs/recipes (the commands below), or
    your own recipe file, `cloudbench build my-recipe.yaml [OPTIONS]`, which names the shipped
    recipe whose command and builder it runs with (`builder: demo`) and takes that command's
    options (docs/classes.md)."""


@build.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=DEMO_OUT, show_default=True,
              help="dataset folder to write")
@_workers_option
def build_demo(out: Path, overrides: tuple[str, ...], workers: int | None,
               scheduler: str | None) -> None:
    """The demo dataset from the synthetic world (not real data; under a minute on 2 cores)."""
    _build("demo", out, overrides, workers, scheduler)


@build.command("ben-demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_workers_option
def build_ben_demo(out: Path, overrides: tuple[str, ...], workers: int | None,
                   scheduler: str | None) -> None:
    """A synthetic BigEarthNet (not real data): the clean twin of cben-demo, same patches."""
    _build("ben-demo", out, overrides, workers, scheduler)


@build.command("cben-demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_workers_option
def build_cben_demo(out: Path, overrides: tuple[str, ...], workers: int | None,
                    scheduler: str | None) -> None:
    """A synthetic CBEN (not real data): ben-demo's patches from a cloudy acquisition."""
    _build("cben-demo", out, overrides, workers, scheduler)


@build.command("sen12ms-cloud")
@click.option("--sen12ms-root", type=click.Path(path_type=Path), required=True,
              help="SEN12MS root in its official layout (ROIs<id>_<season>/…)")
@click.option("--cloud-source", type=click.Path(path_type=Path), required=True,
              help="SEN12MS-CR root, a folder of 13-band L1C GeoTIFFs, or a cloud mask library")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_workers_option
def build_sen12ms_cloud(sen12ms_root: Path, cloud_source: Path, out: Path,
                        overrides: tuple[str, ...], workers: int | None,
                        scheduler: str | None) -> None:
    """SEN12MS Cloud: real s2cloudless cloud masks composited onto SEN12MS pairs."""
    paths = {"sen12ms_root": sen12ms_root.resolve(), "cloud_source": cloud_source.resolve()}
    _build("sen12ms-cloud", out, overrides, workers, scheduler, paths)


@build.command("sen12ms-cr")
@click.option("--root", type=click.Path(path_type=Path), required=True,
              help="SEN12MS-CR root in its official layout (ROIs<id>_<season>_<mod>/…)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_workers_option
def build_sen12ms_cr(root: Path, out: Path, overrides: tuple[str, ...], workers: int | None,
                     scheduler: str | None) -> None:
    """SEN12MS-CR: cloudy and cloud-free S2 L1C with S1 and s2cloudless masks, split by scene."""
    from cloudbench.sources.sen12ms import SEN12MSCR

    if not SEN12MSCR.looks_like(root):  # before the build starts a folder at --out
        raise CloudbenchError(f"no SEN12MS-CR folder at {root} (expected {SEN12MSCR.layout})")
    _build("sen12ms-cr", out, overrides, workers, scheduler, {"root": root.resolve()})


def _sentinel_hub_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--dry-run", is_flag=True,
                     help="search and plan only: print tiles, requests and processing units")(f)
    f = click.option("--sh-token-url", help="OAuth token URL of a custom deployment")(f)
    f = click.option("--sh-base-url", help="service URL of a custom deployment")(f)
    f = click.option("--preset", type=click.Choice(["sentinel-hub", "cdse"]),
                     help="Sentinel Hub (default) or Copernicus Data Space Ecosystem")(f)
    return f


def _label_column_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option("--label-column", help="class-code column of a vector label layer")(f)


def _sentinel_hub_values(preset: str | None, base_url: str | None,
                         token_url: str | None) -> dict[str, object]:
    if (base_url or token_url) and preset:
        raise CloudbenchError("give --preset or --sh-base-url/--sh-token-url, not both")
    if base_url or token_url:
        if not (base_url and token_url):
            raise CloudbenchError("a custom deployment needs both --sh-base-url and "
                                  "--sh-token-url")
        return {"sentinel_hub": {"preset": "custom", "base_url": base_url,
                                 "token_url": token_url}}
    return {"sentinel_hub": {"preset": preset}} if preset else {}


@build.command("aoi")
@click.option("--aoi", type=click.Path(path_type=Path), required=True,
              help="area of interest: GeoJSON, GeoPackage or shapefile, any CRS")
@click.option("--start", required=True, help="first day, YYYY-MM-DD")
@click.option("--end", required=True, help="last day, YYYY-MM-DD")
@click.option("--labels", type=click.Path(path_type=Path), required=True,
              help="land-cover raster (GeoTIFF) or vector layer, any CRS")
@click.option("--classes", default="hunan_cloud", show_default=True,
              help="class scheme: a name in catalogs/classes or your own .yaml file")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_label_column_option
@_sentinel_hub_options
@_workers_option
def build_aoi(aoi: Path, start: str, end: str, labels: Path, classes: str, out: Path,
              label_column: str | None, preset: str | None, sh_base_url: str | None,
              sh_token_url: str | None, dry_run: bool, overrides: tuple[str, ...],
              workers: int | None, scheduler: str | None) -> None:
    """A HunanCloud-style dataset (real clouds) for any area, through Sentinel Hub."""
    values = {"aoi": aoi.resolve(), "start": start, "end": end, "labels": labels.resolve(),
              "classes": classes, "label_column": label_column,
              **_sentinel_hub_values(preset, sh_base_url, sh_token_url)}
    _build("aoi", out, overrides, workers, scheduler, values, dry_run=dry_run)


@build.command("hunan-cloud")
@click.option("--labels", type=click.Path(path_type=Path), required=True,
              help="labels coded 1-10 in hunan_cloud order, or a land-cover product with "
                   "--set label_codes=…")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_label_column_option
@_sentinel_hub_options
@_workers_option
def build_hunan_cloud(labels: Path, out: Path, label_column: str | None, preset: str | None,
                      sh_base_url: str | None, sh_token_url: str | None, dry_run: bool,
                      overrides: tuple[str, ...], workers: int | None,
                      scheduler: str | None) -> None:
    """Hunan Cloud (ESCCS): northern Hunan, July 2018, through Sentinel Hub."""
    values = {"labels": labels.resolve(), "label_column": label_column,
              **_sentinel_hub_values(preset, sh_base_url, sh_token_url)}
    _build("hunan-cloud", out, overrides, workers, scheduler, values, dry_run=dry_run)


@build.command("cben")
@click.option("--bigearthnet-root", type=click.Path(path_type=Path), required=True,
              help="BigEarthNet v1.0 or v2.0 (reBEN) in its original layout")
@click.option("--climatology", type=click.Path(path_type=Path), required=True,
              help="folder with the EarthEnv MODCF_monthlymean_MM.tif and "
                   "MODCF_interannualSD.tif files")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@_sentinel_hub_options
@_workers_option
def build_cben(bigearthnet_root: Path, climatology: Path, out: Path, preset: str | None,
               sh_base_url: str | None, sh_token_url: str | None,
               dry_run: bool, overrides: tuple[str, ...], workers: int | None,
               scheduler: str | None) -> None:
    """CloudyBigEarthNet: BigEarthNet re-acquired at climatological cloudiness (Sentinel Hub)."""
    values = {"bigearthnet_root": bigearthnet_root.resolve(), "climatology": climatology.resolve(),
              **_sentinel_hub_values(preset, sh_base_url, sh_token_url)}
    _build("cben", out, overrides, workers, scheduler, values, dry_run=dry_run)


@build.command("bigearthnet")
@click.option("--bigearthnet-root", type=click.Path(path_type=Path), required=True,
              help="BigEarthNet v1.0 or v2.0 (reBEN) in its original layout")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset folder")
@click.option("--match", type=click.Path(path_type=Path),
              help="a CBEN dataset: keep only its patches (the 2x2 clean/cloudy protocol)")
@_workers_option
def build_bigearthnet(bigearthnet_root: Path, out: Path, match: Path | None,
                      overrides: tuple[str, ...], workers: int | None,
                      scheduler: str | None) -> None:
    """The original BigEarthNet patches in the store format (CBEN's clean twin)."""
    values = {"bigearthnet_root": bigearthnet_root.resolve(),
              "match": match.resolve() if match else None}
    _build("bigearthnet", out, overrides, workers, scheduler, values)


def _with_scheme_path(config: BaseModel) -> BaseModel:
    """``config`` with its class scheme (``classes``) checked before anything is built (a missing
    scheme file stops here, naming it) and, when it is a file, given as its absolute path so that
    every worker reads the same file."""
    from cloudbench.config import class_scheme

    ref = getattr(config, "classes", None)
    if not isinstance(ref, str):
        return config
    scheme = class_scheme(ref)
    return config if scheme.source is None else config.model_copy(update={"classes": scheme.source})


def _build(name: str, out: Path, overrides: tuple[str, ...], workers: int | None,
           scheduler: str | None, values: Mapping[str, object] | None = None,
           dry_run: bool = False) -> None:
    from cloudbench.build import run_build
    from cloudbench.builders import builder_module
    from cloudbench.config import load_recipe

    module = builder_module(name)
    recipe = click.get_current_context().meta.get(_RECIPE_FILE, name)
    config = _with_scheme_path(load_recipe(module.Config, recipe, overrides,
                                           {k: v for k, v in (values or {}).items()
                                            if v is not None}))
    if dry_run:
        plan = module.estimate(config, module.plan(config, out))
        click.echo(f"{plan['summary']}; nothing was downloaded")
        if plan.get("breakdown"):
            click.echo(plan["breakdown"])
        if plan.get("warning"):  # over a free quota: a warning, the dry run still succeeds
            click.echo(f"warning: {plan['warning']}", err=True)
        return
    result = run_build(name, config, out, workers=workers, scheduler=scheduler)
    if result.already_complete:
        click.echo(f"{out} is already complete (same recipe); nothing to do")
    else:
        resumed = f", {result.skipped_shards} resumed" if result.skipped_shards else ""
        click.echo(f"built {out}: {result.built_shards} shards{resumed}")


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def info(dataset: Path, as_json: bool) -> None:
    """Counts per split, class and cloud state of DATASET; on a raw download folder (SEN12MS,
    SEN12MS-CR, BigEarthNet, EarthEnv), which of its parts are there and how to get the rest."""
    from cloudbench.download import raw_report
    from cloudbench.store import Store, summarize

    raw = None if (dataset / "dataset.json").exists() else raw_report(dataset)
    if raw is not None:
        click.echo(json.dumps(raw.summary(), indent=2) if as_json else "\n".join(raw.lines()))
        return
    st = Store(dataset)
    summary = {
        "root": str(dataset),
        "kind": st.kind,
        "task": st.task,
        "samples": len(st),
        "synthetic": bool(st.meta.get("provenance", {}).get("synthetic", False)),
        "arrays": {a.name: {"bands": list(a.bands), "unit": a.unit, "shape": list(a.shape)}
                   for a in st.arrays.values()},
        **summarize(st.samples, st.classes, st.task),
        "mean_cloud_fraction": round(float(st.samples["cloud_fraction"].mean()), 4),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(_format_info(summary))


def _format_info(s: dict) -> str:
    lines = [
        f"{s['root']}: {s['kind']} ({s['task']}), {s['samples']} samples"
        + ("  [SYNTHETIC: not real data]" if s["synthetic"] else ""),
        "arrays: " + "; ".join(f"{n} {v['shape']} {','.join(v['bands'])} ({v['unit']})"
                               for n, v in s["arrays"].items()),
        f"mean cloud fraction: {s['mean_cloud_fraction']:.1%}",
        "",
    ]
    splits = list(s["per_split"])
    width = max(len(c) for c in [*s["per_class"][splits[0]], "cloud state"]) + 2
    header = "".ljust(width) + "".join(sp.rjust(8) for sp in splits)
    lines += [header, "total".ljust(width) + "".join(str(s["per_split"][sp]).rjust(8)
                                                     for sp in splits)]
    for name in s["per_class"][splits[0]]:
        lines.append(name.ljust(width)
                     + "".join(str(s["per_class"][sp][name]).rjust(8) for sp in splits))
    lines.append("")
    for state in s["per_cloud_state"][splits[0]]:
        lines.append(f"cloud: {state}".ljust(width)
                     + "".join(str(s["per_cloud_state"][sp][state]).rjust(8) for sp in splits))
    return "\n".join(lines)


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["geotiff"]), default="geotiff",
              show_default=True)
@click.option("--split", help="only this split (train or test)")
@click.option("--arrays", help="comma-separated arrays to export (default: all)")
@click.option("--bands", help="comma-separated ESA band names to keep, e.g. B04,B03,B02,VV")
def export(dataset: Path, out: Path, fmt: str, split: str | None, arrays: str | None,
           bands: str | None) -> None:
    """Write one georeferenced GeoTIFF per sample and array of DATASET into OUT."""
    from cloudbench.export import export_geotiff

    names = [a.strip() for a in arrays.split(",")] if arrays else None
    chosen = [b.strip() for b in bands.split(",")] if bands else None
    written = export_geotiff(dataset, out, split=split, arrays=names, bands=chosen)
    click.echo(f"wrote {written} GeoTIFFs under {out}")


@cli.command("eval")
@click.argument("predictions", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="split the predictions cover")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="bootstrap resamples for the 95% confidence intervals (0: none)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="also write the long table (CSV)")
def evaluate(predictions: Path, dataset: Path, split: str, bootstrap: int, seed: int,
             out: Path | None) -> None:
    """Score a PREDICTIONS file (CSV or Parquet) against DATASET (see docs/metrics.md)."""
    from cloudbench.metrics import evaluate as run_evaluate
    from cloudbench.metrics import format_table
    from cloudbench.predictions import read_predictions
    from cloudbench.store import Store

    st = Store(dataset)
    pred = read_predictions(predictions, st, split)
    table = run_evaluate(
        st.task, pred.outputs, pred.target, num_classes=len(st.classes), class_names=st.classes,
        cloud_state=pred.cloud_state, cloud_fraction=pred.cloud_fraction,
        bootstrap=bootstrap, seed=seed,
    )
    click.echo(f"{dataset} [{split}], {len(pred.target)} samples")
    click.echo(format_table(table))
    if out:
        table.to_csv(out, index=False)


@cli.group()
def perf() -> None:
    """Benchmarks: speed (ratios against a reference) and the tests' mutation score."""


@perf.command("loader")
@click.option("--dataset", type=click.Choice(["sen12ms", "bigearthnet"]), default="sen12ms",
              show_default=True,
              help="TorchGeo's SEN12MS (random patches) or BigEarthNet v1.0 (a synthetic tree, "
                   "built into a store by the real recipe)")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cloudbench-perf"),
              show_default=True, help="where the benchmark store and GeoTIFFs are written")
@click.option("--samples", type=click.IntRange(min=16), default=10000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True)
def perf_loader(dataset: str, workdir: Path, samples: int, batch_size: int,
                num_workers: int) -> None:
    """Our memory-mapped store vs TorchGeo's GeoTIFFs through the same DataLoader."""
    from cloudbench.perf import format_benchmark, loader_benchmark

    result = loader_benchmark(workdir, samples=samples, batch_size=batch_size,
                              num_workers=num_workers, dataset=dataset)
    click.echo(format_benchmark(result))


@perf.command("train")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cloudbench-perf"),
              show_default=True, help="where the benchmark store is written (and reused)")
@click.option("--samples", type=click.IntRange(min=2), default=2048, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True,
              help="timed epochs, after one untimed warm-up epoch")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--ceiling/--no-ceiling", default=None,
              help="also time the model on a random batch already on the device "
                   "[default: on CUDA only]")
@click.option("--data", type=click.Choice(["resident", "stream"]), default="resident",
              show_default=True, help="stream: also time the same fit streamed from the store")
def perf_train(workdir: Path, samples: int, epochs: int, batch_size: int,
               ceiling: bool | None, data: str) -> None:
    """Training engine vs a plain DataLoader loop: GoogLeNet samples/s on 64x64 patches."""
    from cloudbench.perf import format_train_benchmark, train_benchmark

    result = train_benchmark(workdir, samples=samples, epochs=epochs, batch_size=batch_size,
                             ceiling=ceiling, data=data)
    click.echo(format_train_benchmark(result))


@perf.command("gpu")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cloudbench-perf"),
              show_default=True, help="where the benchmark store is written (and reused)")
@click.option("--samples", type=click.IntRange(min=2), default=8192, show_default=True)
@click.option("--size", type=click.IntRange(min=6), default=120, show_default=True,
              help="patch side in pixels (a multiple of 6: BigEarthNet's 120)")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="per device")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True,
              help="timed epochs, after one untimed warm-up epoch")
@click.option("--model", type=click.Choice(["resnet50", "googlenet"]), default="resnet50",
              show_default=True)
@click.option("--device", default="cuda", show_default=True,
              help="cuda; cpu only to try the command")
@click.option("--devices", help="comma-separated device counts to scale over [default: 1 and "
              "all GPUs]")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def perf_gpu(workdir: Path, samples: int, size: int, batch_size: int, epochs: int, model: str,
             device: str, devices: str | None, as_json: bool) -> None:
    """Resident and streamed training vs the model's ceiling, peak memory, 1..N GPU scaling."""
    from cloudbench.perf import format_gpu_benchmark, gpu_benchmark

    counts = None
    if devices:
        try:
            counts = [int(part) for part in devices.split(",") if part.strip()]
        except ValueError as err:
            raise CloudbenchError(f"--devices takes counts like 1,2,4, got {devices!r}") from err
    result = gpu_benchmark(workdir, samples=samples, size=size, batch_size=batch_size,
                           epochs=epochs, model=model, device=device, devices=counts)
    click.echo(json.dumps(result, indent=2, default=str) if as_json
               else format_gpu_benchmark(result))


def _user_error(err: Exception) -> bool:
    """Errors a user can cause: ours, and TorchGeo's missing-dataset error (when loaded)."""
    if isinstance(err, CloudbenchError):
        return True
    torchgeo_errors = sys.modules.get("torchgeo.datasets.errors")
    return torchgeo_errors is not None and isinstance(err, torchgeo_errors.DatasetNotFoundError)


@perf.command("build-sen12ms-cloud")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cloudbench-perf"),
              show_default=True, help="where the generated trees and outputs are written")
@click.option("--patches", type=click.IntRange(min=25), default=2000, show_default=True)
@click.option("--cloud-images", type=click.IntRange(min=1), default=100, show_default=True)
def perf_build_sen12ms_cloud(workdir: Path, patches: int, cloud_images: int) -> None:
    """Time the SEN12MS Cloud builder stage by stage on a generated SEN12MS tree."""
    from cloudbench.perf import format_build_benchmark, sen12ms_cloud_benchmark

    click.echo(format_build_benchmark(sen12ms_cloud_benchmark(workdir, patches, cloud_images)))


@perf.command("mutation")
@click.argument("modules", nargs=-1, metavar="[MODULE]...")
@click.option("--tests", "tests", multiple=True, metavar="FILE",
              help="the tests for a MODULE outside catalogs/mutation.yaml (repeatable)")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True, help="the repository checkout (its sources and tests/)")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cloudbench-mutation"),
              show_default=True, help="one stage per module, kept: a re-run resumes")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default="all cores", help="mutants tested at once")
@click.option("--fresh", is_flag=True, help="forget earlier results of these modules")
@click.option("--survivors", is_flag=True,
              help="test again only the last run's survivors (after adding tests)")
def perf_mutation(modules: tuple[str, ...], tests: tuple[str, ...], repo: Path, workdir: Path,
                  workers: int, fresh: bool, survivors: bool) -> None:
    """Mutation testing (mutmut) of the modules results depend on (catalogs/mutation.yaml;
    default: all of them): the share of one-line bugs the tests catch, and each survivor.
    Slow (minutes to an hour a module); not part of CI. docs/testing.md."""
    from cloudbench import mutation

    scope = mutation.load_scope().modules
    unknown = [m for m in modules if m not in scope]
    if unknown and not tests:
        raise CloudbenchError(f"{', '.join(unknown)}: not in catalogs/mutation.yaml; give its "
                              f"tests with --tests, or one of: {', '.join(scope)}")
    if tests and len(modules) != 1:
        raise CloudbenchError("--tests goes with exactly one MODULE")
    chosen = {m: mutation.ModuleScope(tests=list(tests)) if tests else scope[m]
              for m in (modules or tuple(scope))}
    results = []
    for module, module_scope in chosen.items():
        result = mutation.run_module(repo, workdir, module, module_scope, max_children=workers,
                                     fresh=fresh, survivors_only=survivors, echo=click.echo)
        click.echo(mutation.format_result(result))
        results.append(result)
    workdir.mkdir(parents=True, exist_ok=True)
    mutation.write_summary(results, workdir / "mutation.json")
    total = sum(len(r.mutants) for r in results)
    killed = sum(r.killed for r in results)
    click.echo(f"all: {killed}/{total} mutants killed = {100 * killed / max(total, 1):.1f}% "
               f"({workdir / 'mutation.json'})")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (malloc.h)."""


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process for reuse, as ``MALLOC_MMAP_THRESHOLD_=1 GiB
    MALLOC_TRIM_THRESHOLD_=2 GiB`` would (unless either is set already); True when applied.

    glibc serves every allocation over 32 MiB with a fresh ``mmap`` and unmaps it when freed, so
    each batch of large patches (64 BigEarthNet samples are 52 MB of float32) is faulted in page
    by page anew: that was two thirds of the time to read a BigEarthNet store
    (docs/performance.md). The memory kept is what the largest batches need.
    """
    if not sys.platform.startswith("linux") or any(
            name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, …)
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
                and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one message and exit status 2."""
    keep_freed_memory()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        cli.main(args=args, prog_name="cloudbench", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        if debug:
            raise
        err.show()
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as err:
        if debug or not _user_error(err):
            raise
        click.echo(f"error: {err}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
