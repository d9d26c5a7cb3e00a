"""The glmopt command line. Parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 built and within budget, 2 bad recipe or input, 3 accuracy budget missed (artifact and
report written, status "budget-missed"), 4 a stage failed, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from glmopt import __version__
from glmopt.errors import GateFailed, GlmoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Optimize Hugging Face models into ONNX artifacts.")
CACHE_DIR_OPTION = typer.Option(None, "--cache-dir", help="stage cache folder [default: ARTIFACTS_DIR/.cache/stages]")
ARTIFACTS_OPTION = typer.Option(
    "artifacts", "--artifacts-dir", help="the artifacts folder, or an fsspec URL (s3://...)"
)


def _emit_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def _fail(exc: GlmoptError, as_json: bool) -> None:
    typer.echo(f"error: {exc}", err=True)
    if as_json:
        _emit_json({"error": str(exc), "exit_code": exc.exit_code})
    raise typer.Exit(exc.exit_code)


def _outcome_json(outcome) -> dict:
    return {
        "artifact": str(outcome.artifact) if outcome.artifact else None,
        "version": outcome.version,
        "within_budget": outcome.within_budget,
        "verdict": outcome.verdict,
        "stages": outcome.stages,
        "metrics": outcome.metrics,
    }


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    artifacts_dir: str = typer.Option(
        "artifacts", "--artifacts-dir", help="where versions are published: a folder, or an fsspec URL (s3://...)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last line of stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    no_cache: bool = typer.Option(False, "--no-cache", help="run every stage, neither reading nor writing the cache"),
    cache_dir: Path = CACHE_DIR_OPTION,
) -> None:
    """Run a recipe's stages and publish a new artifact version with its report.

    Stages whose settings and input match an earlier build come from the stage cache.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    from glmopt.pipeline import build as run_build

    try:
        outcome = run_build(recipe, artifacts_dir, show_progress=not quiet, use_cache=not no_cache, cache_dir=cache_dir)
    except GateFailed as exc:
        outcome = exc.outcome
        typer.echo(f"budget missed: {exc}; artifact written to {outcome.artifact} with status budget-missed", err=True)
        if as_json:
            _emit_json({**_outcome_json(outcome), "exit_code": 3})
        raise typer.Exit(3) from None
    except GlmoptError as exc:
        _fail(exc, as_json)
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was published", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"built {outcome.artifact} ({outcome.verdict})", err=True)
    if as_json:
        _emit_json({**_outcome_json(outcome), "exit_code": 0})
    else:
        typer.echo(str(outcome.artifact))


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check a recipe (schema, stage order, referenced files) without running it."""
    from glmopt.pipeline import preflight
    from glmopt.recipe import load_recipe

    try:
        loaded = load_recipe(recipe)
        if loaded.recipe.model.path is not None:  # built-in models are prepared on first build, not here
            from glmopt.pipeline import resolve_source

            preflight(loaded, resolve_source(loaded))
        else:
            from glmopt.pipeline import preflight_without_model

            preflight_without_model(loaded)
    except GlmoptError as exc:
        _fail(exc, as_json)
    stages = loaded.recipe.stage_names()
    if as_json:
        _emit_json({"recipe": str(recipe), "valid": True, "name": loaded.recipe.name, "stages": stages})
    else:
        typer.echo(f"{recipe}: valid ({' -> '.join(stages)})")


cache_app = typer.Typer(no_args_is_help=True, help="Inspect or clear the stage cache.")
app.add_typer(cache_app, name="cache")


def _stage_cache(artifacts_dir: str, cache_dir: Path | None):
    from glmopt.cache import StageCache, default_cache_dir

    return StageCache(cache_dir or default_cache_dir(artifacts_dir))


@cache_app.command("list")
def cache_list(
    artifacts_dir: str = ARTIFACTS_OPTION,
    cache_dir: Path = CACHE_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every cache entry: stage, size, and the seconds it saves."""
    rows = _stage_cache(artifacts_dir, cache_dir).entries()
    if as_json:
        _emit_json({"entries": rows, "bytes": sum(r["bytes"] for r in rows)})
        return
    for r in rows:
        typer.echo(f"{r['key'][:16]}  {r['stage'] or 'unreadable'}  {r['bytes'] / 1e6:.1f} MB  {r.get('seconds')} s")
    typer.echo(f"{len(rows)} entries, {sum(r['bytes'] for r in rows) / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(
    artifacts_dir: str = ARTIFACTS_OPTION,
    cache_dir: Path = CACHE_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove every cache entry (published artifacts are not touched)."""
    removed = _stage_cache(artifacts_dir, cache_dir).clear()
    if as_json:
        _emit_json({"removed": removed})
    else:
        typer.echo(f"removed {removed} cache entries")


artifacts_app = typer.Typer(no_args_is_help=True, help="List, show and verify published artifacts.")
app.add_typer(artifacts_app, name="artifacts")


def _local_version(artifacts_dir: str, spec: str, scratch: Path) -> Path:
    """A version as a local folder: found in a local store, or downloaded from an object store."""
    from glmopt.artifacts import resolve_version
    from glmopt.remote import RemoteStore, is_remote, local_path

    if is_remote(artifacts_dir):
        store = RemoteStore(artifacts_dir)
        name, version = store.resolve(spec)
        return store.download(name, version, scratch / f"{name}-{version}")
    return resolve_version(local_path(artifacts_dir), spec)


@artifacts_app.command("list")
def artifacts_list(
    name: str = typer.Argument(None, help="only this artifact's versions"),
    artifacts_dir: str = ARTIFACTS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every published version, oldest first, with status and headline metrics."""
    from glmopt.artifacts import list_versions
    from glmopt.remote import RemoteStore, is_remote, local_path

    try:
        if is_remote(artifacts_dir):
            rows = RemoteStore(artifacts_dir).list_versions(name)
        else:
            rows = list_versions(local_path(artifacts_dir), name)
    except GlmoptError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit_json({"artifacts": rows})
        return
    for r in rows:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in r.get("metrics", {}).items())
        typer.echo(f"{r['name']}/{r['version']}  {r['status']}  {r.get('created', '')}  {metrics}")


@artifacts_app.command("show")
def artifacts_show(
    spec: str = typer.Argument(..., help="NAME, NAME/latest (newest good version) or NAME/VERSION"),
    artifacts_dir: str = ARTIFACTS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A version's manifest and headline metrics."""
    from glmopt.artifacts import read_manifest, resolve_version
    from glmopt.remote import RemoteStore, is_remote, local_path

    try:
        if is_remote(artifacts_dir):
            store = RemoteStore(artifacts_dir)
            name, version = store.resolve(spec)
            folder, manifest = store.url_of(name, version), store.read_manifest(name, version)
        else:
            folder = resolve_version(local_path(artifacts_dir), spec)
            manifest = read_manifest(folder)
    except GlmoptError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit_json({"path": str(folder), **manifest})
        return
    typer.echo(f"{manifest['name']}/{manifest['version']}  status {manifest['status']}  created {manifest['created']}")
    typer.echo(f"path: {folder}")
    typer.echo(f"source: {manifest['source_model']['source']} (sha256 {manifest['source_model']['sha256'][:12]})")
    for key, value in manifest.get("metrics", {}).items():
        typer.echo(f"  {key}: {value}")
    typer.echo(f"files: {len(manifest['files'])}, {sum(f['bytes'] for f in manifest['files'].values()) / 1e6:.1f} MB")


@artifacts_app.command("verify")
def artifacts_verify(
    path: str = typer.Argument(..., help="a version folder (artifacts/NAME/3) or URL (s3://bucket/prefix/NAME/3)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check every file's sha256 against the manifest. Exit 1 naming the first problem."""
    from glmopt.artifacts import verify_version
    from glmopt.remote import RemoteStore, is_remote, local_path, split_version_url

    try:
        if is_remote(path):
            root, name, version = split_version_url(path)
            problems = RemoteStore(root).verify(name, version)
        else:
            problems = verify_version(local_path(path))
    except GlmoptError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit_json({"path": str(path), "ok": not problems, "problems": problems})
    if problems:
        typer.echo(
            f"verify failed: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""), err=True
        )
        raise typer.Exit(1)
    if not as_json:
        typer.echo(f"{path}: every file matches the manifest")


@artifacts_app.command("export")
def artifacts_export(
    spec: str = typer.Argument(..., help="NAME, NAME/latest or NAME/VERSION"),
    dest: Path = typer.Argument(..., help="a model repository folder"),
    fmt: str = typer.Option("triton", "--format", help="repository layout: triton"),
    model_name: str = typer.Option(None, "--model-name", help="default: the artifact's name"),
    artifacts_dir: str = ARTIFACTS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a version as a serving repository (NVIDIA Triton: config.pbtxt + 1/model.onnx)."""
    import tempfile

    from glmopt.errors import InputError
    from glmopt.serving import export_triton

    try:
        if fmt != "triton":
            raise InputError(f"--format: '{fmt}' is not supported; expected 'triton'")
        with tempfile.TemporaryDirectory() as scratch:
            folder = _local_version(artifacts_dir, spec, Path(scratch))
            target = export_triton(folder, dest, model_name or spec.partition("/")[0])
    except GlmoptError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit_json({"repository": str(dest), "model": str(target), "source": str(folder)})
    else:
        typer.echo(str(target))


report_app = typer.Typer(no_args_is_help=True, help="Read and compare build reports.")
app.add_typer(report_app, name="report")


@report_app.command("compare")
def report_compare(
    a: str = typer.Argument(..., help="a version folder, or NAME/VERSION under --artifacts-dir"),
    b: str = typer.Argument(..., help="a version folder, or NAME/VERSION under --artifacts-dir"),
    artifacts_dir: str = ARTIFACTS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What changed between two builds: metrics, sizes, latencies, exclusions, recipe settings."""
    import tempfile

    from glmopt.report.compare import compare, render_text

    try:
        with tempfile.TemporaryDirectory() as scratch:
            folders = [Path(x) if Path(x).is_dir() else _local_version(artifacts_dir, x, Path(scratch)) for x in (a, b)]
            diff = compare(*folders)
    except GlmoptError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit_json(diff)
    else:
        typer.echo(render_text(diff))


@app.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editors and CI linters)."""
    from glmopt.recipe import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(), indent=2))


@app.command()
def version() -> None:
    """Print glmopt's version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
