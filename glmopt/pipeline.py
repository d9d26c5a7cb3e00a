"""Runs a recipe's stages in order, owns the working folder and progress, and publishes the artifact."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from glmopt.artifacts import host_info, now_utc, start_version, tool_versions
from glmopt.cache import CachedStage, StageCache, chain_key, default_cache_dir, hidden_prefix
from glmopt.calibrate.dataset import check_document_count, load_calibration_file, resolve_calibration
from glmopt.data import load_rows, rows_digest
from glmopt.errors import GateFailed, GlmoptError, InputError, PublishError, StageError
from glmopt.fileutil import sha256_bytes, sha256_file, write_json
from glmopt.models import ARCHITECTURES, SERVING_FILES, load_model, read_model_type
from glmopt.models.builtin import BUILTIN_MODELS, resolve_builtin
from glmopt.onnx_utils import default_providers, model_files, model_size
from glmopt.recipe import LoadedRecipe, check_task_metrics, load_recipe
from glmopt.remote import RemoteStore, is_remote, local_path, start_remote_version
from glmopt.report import write_reports
from glmopt.stages import STAGES, ModelHandle, StageContext, StageResult
from glmopt.stages.evaluate import TASK_COLUMNS, EvaluateConfig, Evaluator
from glmopt.stages.quantize import QuantizeState
from glmopt.tuning import fallback_search, glob_literal, metric_effects


@dataclass
class BuildOutcome:
    artifact: Path | str | None  # a local folder, or the version's URL in an object store
    version: int | None
    stages: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    within_budget: bool | None = None
    verdict: str = ""


def progress_factory(enabled: bool):
    from tqdm import tqdm

    def make(total: int, desc: str):
        return tqdm(
            total=total,
            desc=desc,
            file=sys.stderr,
            disable=not enabled,
            mininterval=0.5,
            dynamic_ncols=True,
            leave=True,
        )

    return make


def resolve_source(loaded: LoadedRecipe) -> Path:
    source = loaded.recipe.model
    if source.builtin is not None:
        return resolve_builtin(source.builtin)
    folder = (loaded.base_dir / source.path).resolve()
    if not folder.is_dir():
        what = "is a file, not a model folder" if folder.exists() else "does not exist"
        raise InputError(f"{loaded.path}: model.path: folder {folder} {what}")
    return folder


def preflight(loaded: LoadedRecipe, folder: Path) -> str:
    """Checks that need files but no model: model type vs metrics, calibration set files. Returns the task."""
    return _preflight(loaded, read_model_type(folder))


def preflight_without_model(loaded: LoadedRecipe) -> str:
    """The same checks for a built-in model, whose type is known without preparing it."""
    assert loaded.recipe.model.builtin is not None
    return _preflight(loaded, BUILTIN_MODELS[loaded.recipe.model.builtin][1])


def _preflight(loaded: LoadedRecipe, model_type: str) -> str:
    """Fail in seconds, before any model work, on what a recipe's files and data can tell."""
    recipe = loaded.recipe
    task = recipe.model.task or ARCHITECTURES[model_type].task
    check_task_metrics(recipe, task, str(loaded.path))
    calibration_texts: set[str] = set()
    evaluation_texts: dict[str, set[str]] = {}
    for i, stage in enumerate(recipe.stages):
        where = f"{loaded.path}: stages[{i}]"
        if getattr(stage, "calibration", None) is not None:  # quantize, smooth, and prune ranked by activations
            cal, cal_base, cal_where = stage.calibration, loaded.base_dir, f"{where}.calibration"
            if isinstance(cal, str):
                cal_path = (loaded.base_dir / cal).resolve()
                if not cal_path.is_file():
                    what = "is a folder, not a calibration set file" if cal_path.is_dir() else "does not exist"
                    raise InputError(f"{cal_where}: file {cal_path} {what}")
                cal, cal_base, cal_where = load_calibration_file(cal_path), cal_path.parent, str(cal_path)
            rows = load_rows(cal.data, cal_base, ("text",), f"{cal_where}: data")
            check_document_count(cal, [r["text"] for r in rows], cal_where)
            calibration_texts |= {r["text"] for r in rows}
        if isinstance(stage, EvaluateConfig):
            for j, task_config in enumerate(stage.tasks):
                columns = TASK_COLUMNS[task_config.metric]
                rows = load_rows(task_config.data, loaded.base_dir, columns, f"{where}.tasks[{j}].data")
                text_columns = [c for c in columns if c.startswith("text")]
                evaluation_texts[f"stages[{i}].tasks[{j}]"] = {r[c] for r in rows for c in text_columns}
    for location, texts in evaluation_texts.items():
        shared = calibration_texts & texts
        if shared:
            raise InputError(
                f"{loaded.path}: {location}.data: {len(shared)} documents also appear in the calibration data; "
                "calibration and evaluation text must be disjoint for the reported drops to mean anything"
            )
    return task


def _source_hash(folder: Path) -> str:
    """Hash of what defines the model: weights, config and tokenizer files (not READMEs or caches)."""
    parts = [
        f"{p.name}:{sha256_file(p)}"
        for p in sorted(folder.iterdir())
        if p.is_file() and (p.suffix in (".safetensors", ".json") or p.name.startswith("tokenizer"))
    ]
    return sha256_bytes("\n".join(parts).encode())


def build(
    recipe_path: Path,
    artifacts_dir: Path | str,
    show_progress: bool = True,
    work_root: Path | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
) -> BuildOutcome:
    """Build a recipe into a new artifact version; stages found in the stage cache are not rerun."""
    loaded = load_recipe(recipe_path)
    recipe = loaded.recipe
    folder = resolve_source(loaded)
    preflight(loaded, folder)
    progress = progress_factory(show_progress)
    providers = default_providers()

    if is_remote(artifacts_dir):  # an object store: assembled locally, then uploaded (see glmopt/remote.py)
        staging = start_remote_version(RemoteStore(str(artifacts_dir)), recipe.name)
    else:
        artifacts_dir = local_path(artifacts_dir).resolve()
        staging = start_version(artifacts_dir, recipe.name)
    work = Path(tempfile.mkdtemp(prefix=hidden_prefix("work"), dir=work_root or staging.name_dir))
    cache = StageCache((cache_dir or default_cache_dir(artifacts_dir)).resolve()) if use_cache else None
    try:
        return _run(loaded, folder, staging, work, progress, providers, cache)
    except OSError as exc:  # stage I/O errors are StageErrors by now: this is writing the artifact itself
        staging.discard()
        raise PublishError(f"{artifacts_dir}: could not write the artifact ({exc.strerror or exc})") from None
    except BaseException:
        staging.discard()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _guarded(name: str, call):
    """Run one step of the build; an unexpected error becomes a one-line StageError naming the step."""
    try:
        return call()
    except GlmoptError:
        raise
    except MemoryError:
        raise StageError(name, "out of memory") from None
    except OSError as exc:
        raise StageError(name, f"I/O error: {exc.strerror or exc} ({exc.filename or ''})") from None
    except Exception as exc:
        if os.environ.get("GLMOPT_DEBUG"):
            traceback.print_exc()
        raise StageError(name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _data_digest(config, base_dir: Path) -> str:
    """Hash of the data a stage's settings point at (the calibration text), for its cache key."""
    calibration = getattr(config, "calibration", None)
    if calibration is None:
        return ""
    cal, cal_base = resolve_calibration(calibration, base_dir)
    rows = load_rows(cal.data, cal_base, ("text",), "calibration.data")
    return sha256_bytes((cal.model_dump_json() + rows_digest(rows)).encode())


def _settings(config) -> dict:
    """A stage's settings for its cache key. A calibration set given as a file enters through the data
    digest (its resolved content), not its path: the same file reached by another path is the same input."""
    settings = config.model_dump(mode="json")
    if isinstance(getattr(config, "calibration", None), str):
        settings["calibration"] = "file"
    return settings


def _from_cache(spec, config, cached: CachedStage, stage_dir: Path, current: ModelHandle) -> StageResult:
    model = None
    if cached.model_file is not None:
        path = stage_dir / cached.model_file
        model = ModelHandle(kind="onnx", produced_by=spec.name, onnx_path=path, torch=current.torch)
    state = spec.load_state(cached.state, config, current) if spec.load_state and cached.state is not None else None
    return StageResult(model, cached.details, state=state)


def _run(loaded: LoadedRecipe, folder: Path, staging, work: Path, progress, providers, cache) -> BuildOutcome:
    recipe = loaded.recipe
    source_sha256 = _source_hash(folder)
    # The first stage's input is the source model as this recipe loads it.
    key = sha256_bytes(f"{source_sha256}|{recipe.model.task}|{recipe.model.trust_remote_code}".encode())
    t0 = time.perf_counter()
    reference = load_model(folder, task=recipe.model.task, trust_remote_code=recipe.model.trust_remote_code)
    load_seconds = time.perf_counter() - t0
    current = ModelHandle(kind="torch", produced_by="reference", torch=reference)
    history = [current]
    records: dict[str, dict] = {}
    stage_log: list[dict] = []
    states: dict[str, object] = {}
    evaluation = None

    for index, config in enumerate(recipe.stages):
        spec = STAGES[config.stage]
        stage_dir = work / f"{index:02d}-{spec.name}"
        stage_dir.mkdir()
        ctx = StageContext(
            work_dir=stage_dir,
            base_dir=loaded.base_dir,
            reference=reference,
            history=list(history),
            providers=providers,
            seed=recipe.seed,
            progress=progress,
            records=records,
            location=f"{loaded.path}: stages[{index}]",
        )
        if cache is not None:  # keys chain through every stage, cached or not (a prune changes what follows)
            # (preflight has read the same data, so the digest cannot fail on a user mistake)
            digest = _data_digest(config, loaded.base_dir)
            key = chain_key(key, spec.name, _settings(config), digest, providers, recipe.seed)
        use_cache = cache is not None and spec.cached
        start = time.perf_counter()
        cached = _guarded("cache", lambda: cache.restore(key, stage_dir)) if use_cache else None  # noqa: B023
        if cached is not None:
            result = _from_cache(spec, config, cached, stage_dir, current)
        else:
            result = _guarded(spec.name, lambda: spec.run(config, ctx, current))  # noqa: B023 (called at once)
        seconds = time.perf_counter() - start
        entry = {"name": spec.name, "status": "ok", "seconds": round(seconds, 2), "details": result.details}
        if use_cache:
            entry["cache"] = {"status": "hit" if cached else "stored", "key": key}
            if cached:
                entry["cache"]["original_seconds"] = cached.seconds
        if result.model is not None:
            current = result.model
            history.append(current)
            entry["size_bytes"] = model_size(current.onnx_path) if current.kind == "onnx" else None
            if current.kind == "onnx":
                rel = current.onnx_path.relative_to(stage_dir).as_posix()
                if cached is None and use_cache:
                    state = spec.save_state(result.state) if spec.save_state and result.state is not None else None
                    files = cache.store(key, spec.name, stage_dir, result.details, state, rel, round(seconds, 2))
                else:
                    files = cached.files if cached else {}
                entry["output_sha256"] = files[rel]["sha256"] if rel in files else sha256_file(current.onnx_path)
        else:
            evaluation = result.details
        records[spec.name] = result.details
        states[spec.name] = result.state
        stage_log.append(entry)

    if evaluation is not None and isinstance(states.get("quantize"), QuantizeState):
        current = _guarded("fallback", lambda: _tune(evaluation, states, history, current, work, progress, stage_log))

    final = current
    if final.kind != "onnx":  # the recipe schema requires export, so this is a programming error
        raise StageError("pipeline", "the build produced no ONNX model")

    # Assemble the artifact: model, serving files, applied recipe, calibration ranges, reports, manifest.
    for f in model_files(final.onnx_path):
        staging.add_file(f, f.name.replace(final.onnx_path.name, "model.onnx", 1))
    for name in SERVING_FILES:
        src = final.loaded.folder / name
        if src.is_file():
            staging.add_file(src)
    (staging.path / "recipe.yaml").write_text(loaded.text)
    (staging.path / "recipe.resolved.json").write_text(recipe.model_dump_json(indent=2))
    for entry in stage_log:
        for name in (entry["details"].get("ranges_file"), entry["details"].get("sensitivity", {}).get("file")):
            if name:
                staging.add_file(next(work.glob(f"*-{entry['name']}/{name}")))
    fallback = evaluation.get("fallback") if evaluation else None
    if fallback and fallback.get("trials"):
        write_json(staging.path / FALLBACK_FILE, fallback)

    within = evaluation["within_budget"] if evaluation else None
    final_metrics = {}
    if evaluation:
        final_result = evaluation["models"][evaluation["final"]]
        final_metrics = {m: v["value"] for m, v in final_result["metrics"].items()}
        final_metrics["size_bytes"] = final_result["size_bytes"]
        final_metrics["latency_ms"] = final_result["latency"]["median_ms"]
        final_metrics["drop_pct"] = final_result["drop_pct"]
        reference_result = evaluation["models"]["reference"]
        final_metrics["reference"] = {m: v["value"] for m, v in reference_result["metrics"].items()}

    source_desc = f"builtin:{recipe.model.builtin}" if recipe.model.builtin else str(folder)
    record = {
        "schema_version": 1,
        "name": recipe.name,
        "version": None,
        "created": now_utc(),
        "status": "ok" if within is not False else "budget-missed",
        "model": {
            "source": source_desc,
            "model_type": reference.arch.model_type,
            "task": reference.arch.task,
            "sha256": source_sha256,
        },
        "recipe": {"file": str(loaded.path), "sha256": sha256_bytes(loaded.text.encode()), "text": loaded.text},
        "tools": tool_versions(),
        "host": {**host_info(), "providers": providers},
        "load_seconds": round(load_seconds, 2),
        "stages": stage_log,
        "evaluation": evaluation,
        "metrics": final_metrics,
        "within_budget": within,
        "sensitivity": _sensitivity(work, stage_log),
    }

    def finalize(version: int) -> None:
        record["version"] = version
        write_reports(record, staging.path)

    manifest = {
        "name": recipe.name,
        "created": record["created"],
        "status": record["status"],
        "source_model": record["model"],
        "recipe": record["recipe"],
        "tools": record["tools"],
        "host": record["host"],
        "data": {
            "calibration": {e["name"]: e["details"]["calibration"] for e in stage_log if "calibration" in e["details"]},
            "evaluation": evaluation["data"] if evaluation else {},
        },
        "metrics": final_metrics,
        "stages": [_lineage(s) for s in stage_log],
    }
    version, path = staging.publish(manifest, finalize)
    from glmopt.report import verdict_line

    outcome = BuildOutcome(
        artifact=path,
        version=version,
        stages=[_lineage(s) for s in stage_log],
        metrics=final_metrics,
        within_budget=within,
        verdict=verdict_line(record),
    )
    if within is False:
        raise GateFailed(outcome.verdict, outcome)
    return outcome


FALLBACK_FILE = "fallback.json"


def _lineage(entry: dict) -> dict:
    """A stage's row in the manifest: what it produced (hash), in how long, and whether from the cache."""
    row = {"name": entry["name"], "status": entry["status"], "seconds": entry["seconds"]}
    for field_name in ("output_sha256", "size_bytes"):
        if entry.get(field_name) is not None:
            row[field_name] = entry[field_name]
    if "cache" in entry:
        row["cache"] = entry["cache"]["status"]
        if "original_seconds" in entry["cache"]:
            row["original_seconds"] = entry["cache"]["original_seconds"]
    return row


def _sensitivity(work: Path, stage_log: list[dict]) -> dict | None:
    """The quantize stage's full sensitivity analysis, for the reports."""
    entry = next((e for e in stage_log if e["name"] == "quantize" and "sensitivity" in e["details"]), None)
    if entry is None:
        return None
    return json.loads(next(work.glob(f"*-quantize/{entry['details']['sensitivity']['file']}")).read_text())


def _tune(evaluation: dict, states: dict, history: list, current, work: Path, progress, stage_log) -> object:
    """Metric cost of the most sensitive nodes, then fallback when a budget is missed. Returns the final model."""
    quantized: QuantizeState = states["quantize"]
    evaluator: Evaluator = states["evaluate"]
    config: EvaluateConfig = evaluator.config
    float_name = history[-2].produced_by  # the model quantization started from
    tuning_dir = work / "tuning"
    tuning_dir.mkdir()
    if config.sensitivity_top_k and quantized.ranking:
        start = time.perf_counter()
        evaluation["node_metric_cost"] = metric_effects(
            evaluator, quantized, evaluation["models"][float_name], config.sensitivity_top_k, tuning_dir, progress
        )
        evaluation["node_metric_cost_seconds"] = round(time.perf_counter() - start, 2)
    if evaluation["within_budget"] or not config.budgets or not config.fallback.enabled:
        return current
    start = time.perf_counter()
    search = fallback_search(
        evaluator, quantized, evaluation["models"]["quantize"], config.fallback, tuning_dir, progress
    )
    best = search.pop("best")
    kept = quantized.ranking[: best["float_nodes"]]
    if config.fallback.to == "weight_only":  # MatMuls go weight-only; any other op type goes to float
        moved, rest = quantized.split_weight_only(kept)
        search["weight_only_nodes"] = [glob_literal(n) for n in moved]
        search["exclude_nodes"] = [glob_literal(n) for n in rest]
        search["recipe_snippet"] = {
            "weight_only_nodes": search["weight_only_nodes"],
            "exclude_nodes": search["exclude_nodes"],
        }
    else:
        search["exclude_nodes"] = [glob_literal(n) for n in kept]
        search["recipe_snippet"] = {"exclude_nodes": search["exclude_nodes"]}
    evaluation["fallback"] = search
    if best["path"] is None:  # no trial beat the plain quantized model: it stays the final model
        return current
    evaluation["models"]["fallback"] = best["result"]
    evaluation["final"] = "fallback"
    evaluation["budgets"] = best["checks"]
    evaluation["within_budget"] = search["within_budget"]
    stage_log.append(
        {
            "name": "fallback",
            "status": "ok",
            "seconds": round(time.perf_counter() - start, 2),
            "size_bytes": model_size(best["path"]),
            "details": {
                "float_nodes": best["float_nodes"],
                "to": config.fallback.to,
                "trials": len(search["trials"]),
                "stopped": search["stopped"],
                "exclude_nodes": search["exclude_nodes"],
            },
        }
    )
    return ModelHandle(kind="onnx", produced_by="fallback", onnx_path=best["path"], torch=current.torch)
