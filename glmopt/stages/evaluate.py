"""evaluate: the reference and every stage's model on held-out data, plus size and CPU latency.

Reports each metric's drop against the reference and checks the recipe's budgets on the final model.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from glmopt.data import DataSource, load_rows, rows_digest
from glmopt.fileutil import tree_size
from glmopt.metrics import (
    bootstrap_indices,
    interval95,
    mean_pool,
    perplexity_resampled,
    probe_accuracy,
    relative_drop_pct,
    relative_drops_pct,
    spearman,
    spearman_resampled,
    token_nll,
)
from glmopt.onnx_utils import make_session, model_size, run_session
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult
from glmopt.stages.export import dummy_inputs, export_wrapper


class PerplexityTask(StrictModel):
    metric: Literal["perplexity"]
    data: DataSource
    window: int = Field(512, ge=16, le=32768, description="tokens per window")
    max_tokens: int = Field(8192, ge=64, description="tokens evaluated in all")


class SimilarityTask(StrictModel):
    metric: Literal["spearman"]
    data: DataSource
    max_length: int = Field(128, ge=8, le=8192)


class ClassificationTask(StrictModel):
    metric: Literal["accuracy"]
    data: DataSource
    max_length: int = Field(128, ge=8, le=8192)
    max_samples: int | None = Field(1000, ge=20, description="stratified subsample for speed; null for all")
    test_fraction: float = Field(0.3, gt=0.05, lt=0.95)


EvalTask = Annotated[PerplexityTask | SimilarityTask | ClassificationTask, Field(discriminator="metric")]
TASK_COLUMNS = {"perplexity": ("text",), "spearman": ("text_a", "text_b", "score"), "accuracy": ("text", "label")}
TASK_FOR_METRIC = {"perplexity": "causal-lm", "spearman": "feature-extraction", "accuracy": "feature-extraction"}


class LatencyConfig(StrictModel):
    batch_size: int = Field(1, ge=1, le=256)
    sequence_length: int = Field(128, ge=2, le=32768)
    warmup: int = Field(3, ge=0, le=100)
    runs: int = Field(10, ge=1, le=1000)
    threads: int = Field(0, ge=0, le=256, description="intra-op threads; 0 lets the runtime choose")


class Budget(StrictModel):
    max_drop_pct: float = Field(..., ge=0, le=1000, description="largest allowed degradation of the final model, %")


class FallbackConfig(StrictModel):
    enabled: bool = Field(True, description="keep sensitive nodes in float when the quantized model misses a budget")
    max_trials: int = Field(8, ge=1, le=100, description="re-quantize-and-evaluate trials at most")
    max_minutes: float = Field(30.0, gt=0, le=1440, description="no new trial starts after this long")
    first_step: int = Field(1, ge=1, le=10000, description="float nodes in the first trial; later trials double it")
    to: Literal["float", "weight_only"] = Field(
        "float",
        description="what the sensitive nodes become: float (FP32), or weight-only (MatMulNBits at the quantize "
        "stage's bits: activations in float, weights still small; other op types go to float)",
    )


class EvaluateConfig(StrictModel):
    stage: Literal["evaluate"] = "evaluate"
    tasks: list[EvalTask] = Field(..., min_length=1)
    latency: LatencyConfig = LatencyConfig()
    budgets: dict[str, Budget] = Field(default_factory=dict)
    sensitivity_top_k: int = Field(
        3, ge=0, le=100, description="the k nodes with the lowest SQNR are each quantized alone and scored"
    )
    fallback: FallbackConfig = FallbackConfig()

    @model_validator(mode="after")
    def _budgets_name_tasks(self) -> EvaluateConfig:
        metrics = [t.metric for t in self.tasks]
        if len(set(metrics)) != len(metrics):
            raise ValueError("each metric may appear once in 'tasks'")
        unknown = sorted(set(self.budgets) - set(metrics))
        if unknown:
            raise ValueError(f"budgets for {unknown} name no task; tasks measure {metrics}")
        return self


class Runner:
    """Calls a model, PyTorch or ONNX, on numpy inputs and returns its single output."""

    def __init__(self, handle: ModelHandle, providers: list[str], threads: int):
        self.handle = handle
        if handle.kind == "onnx":
            assert handle.onnx_path is not None
            self.session = make_session(handle.onnx_path, providers, threads=threads)
        else:
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.wrapper = export_wrapper(handle.loaded)
            self.names = handle.loaded.arch.input_names

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.handle.kind == "onnx":
            return run_session(self.session, feeds)[0]
        import torch

        with torch.inference_mode():
            return self.wrapper(*[torch.from_numpy(feeds[n]) for n in self.names]).float().numpy()


def _feeds(ids: np.ndarray, mask: np.ndarray, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in input_names:
        feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


class Prepared:
    """Tokenised evaluation data, built once and shared by every model."""

    def __init__(self, task, tokenizer, input_names, base_dir: Path, seed: int, where: str):
        self.task = task
        self.input_names = input_names
        if isinstance(task, PerplexityTask):
            rows = load_rows(task.data, base_dir, TASK_COLUMNS["perplexity"], f"{where}.data")
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            stream: list[int] = []
            for row in rows:
                stream.extend(tokenizer(row["text"], add_special_tokens=False)["input_ids"] + eos)
                if len(stream) >= task.max_tokens:
                    break
            n_windows = min(task.max_tokens, len(stream)) // task.window
            if n_windows == 0:
                from glmopt.errors import InputError

                raise InputError(f"{where}.data: {len(stream)} tokens is less than one window of {task.window}")
            self.windows = np.array(stream[: n_windows * task.window], dtype=np.int64).reshape(n_windows, -1)
            self.count = n_windows
            self.texts_digest = rows_digest(rows)
        elif isinstance(task, SimilarityTask):
            rows = load_rows(task.data, base_dir, TASK_COLUMNS["spearman"], f"{where}.data")
            texts = sorted({r["text_a"] for r in rows} | {r["text_b"] for r in rows})
            index = {t: i for i, t in enumerate(texts)}
            self.pairs = np.array([(index[r["text_a"]], index[r["text_b"]]) for r in rows])
            self.scores = np.array([float(r["score"]) for r in rows])
            self.encoded = self._encode(tokenizer, texts, task.max_length)
            self.count = len(rows)
            self.texts_digest = rows_digest(rows)
        else:
            rows = load_rows(task.data, base_dir, TASK_COLUMNS["accuracy"], f"{where}.data")
            if task.max_samples and len(rows) > task.max_samples:
                rows = _stratified_sample(rows, task.max_samples, seed)
            self.labels = [str(r["label"]) for r in rows]
            self.encoded = self._encode(tokenizer, [r["text"] for r in rows], task.max_length)
            self.seed = seed
            self.count = len(rows)
            self.texts_digest = rows_digest(rows)

    @staticmethod
    def _encode(tokenizer, texts: list[str], max_length: int, batch_size: int = 32):
        batches = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="np",
            )
            batches.append((enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)))
        return batches

    def _embed(self, runner: Runner, bar) -> np.ndarray:
        out = []
        for ids, mask in self.encoded:
            out.append(mean_pool(runner(_feeds(ids, mask, self.input_names)), mask))
            bar.update(1)
        return np.concatenate(out)

    @property
    def steps(self) -> int:
        return len(self.windows) if isinstance(self.task, PerplexityTask) else len(self.encoded)

    def score(self, runner: Runner, bar) -> tuple[dict, np.ndarray]:
        """The metric, plus the per-unit figures (windows, pairs, documents) that bootstrap intervals resample."""
        if isinstance(self.task, PerplexityTask):
            rows = []
            for row in self.windows:
                ids = row[None, :]
                mask = np.ones_like(ids)
                rows.append(token_nll(runner(_feeds(ids, mask, self.input_names)), ids, mask))
                bar.update(1)
            per_window = np.array(rows, dtype=np.float64)
            window_ppl = np.exp(per_window[:, 0] / per_window[:, 1])
            result = {
                "value": float(np.exp(per_window[:, 0].sum() / per_window[:, 1].sum())),
                "samples": int(per_window[:, 1].sum()),
                "unit": "tokens",
                "windows": len(rows),
                "per_window": [float(v) for v in window_ppl],
                "window_spread": {
                    "std": float(window_ppl.std(ddof=1)) if len(rows) > 1 else 0.0,
                    "min": float(window_ppl.min()),
                    "max": float(window_ppl.max()),
                },
            }
            return result, per_window
        embeddings = self._embed(runner, bar)
        if isinstance(self.task, SimilarityTask):
            sims = (embeddings[self.pairs[:, 0]] * embeddings[self.pairs[:, 1]]).sum(axis=1)
            return {"value": spearman(sims, self.scores), "samples": self.count, "unit": "pairs"}, sims
        correct = probe_accuracy(embeddings, self.labels, self.task.test_fraction, self.seed)
        return {"value": float(correct.mean()), "samples": len(correct), "unit": "test documents"}, correct

    def resampled(self, raw: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The metric on each bootstrap resample (rows of idx) of the per-unit figures."""
        if isinstance(self.task, PerplexityTask):
            return perplexity_resampled(raw, idx)
        if isinstance(self.task, SimilarityTask):
            return spearman_resampled(raw, self.scores, idx)
        return raw[idx].mean(axis=1)


def _stratified_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(str(row["label"]), []).append(row)
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_label):
        group = by_label[label]
        take = max(2, round(n * len(group) / len(rows)))
        picked.extend(rng.sample(group, min(take, len(group))))
    return picked


def measure_latency(runner: Runner, loaded, config: LatencyConfig) -> dict:
    feeds = dummy_inputs(loaded, config.batch_size, config.sequence_length, seed=0, pad_last=False)
    for _ in range(config.warmup):
        runner(feeds)
    times = []
    for _ in range(config.runs):
        start = time.perf_counter()
        runner(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    p10, p90 = np.percentile(times, [10, 90])
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "stdev_ms": statistics.stdev(times) if len(times) > 1 else 0.0,
        "runs": config.runs,
        "warmup": config.warmup,
        "shape": [config.batch_size, config.sequence_length],
        "threads": config.threads,
        # 0 means the runtime's default: one intra-op thread per core for ONNX Runtime and PyTorch here.
        "threads_effective": config.threads or os.cpu_count(),
    }


def handle_size(handle: ModelHandle) -> int:
    if handle.kind == "onnx":
        assert handle.onnx_path is not None
        return model_size(handle.onnx_path)
    folder = handle.loaded.folder
    return sum(tree_size(p) for p in folder.glob("*.safetensors"))


class Evaluator:
    """Scores models on the prepared tasks; keeps the reference's per-unit figures for paired intervals.

    The pipeline keeps it after the stage so that accuracy-driven fallback scores its trial models
    on exactly the same data, resamples and budgets.
    """

    def __init__(self, config: EvaluateConfig, ctx: StageContext):
        self.config = config
        self.providers = ctx.providers
        self.reference_model = ctx.reference
        self.seed = ctx.seed
        self.prepared = [
            Prepared(
                task,
                ctx.reference.tokenizer,
                ctx.reference.arch.input_names,
                ctx.base_dir,
                ctx.seed,
                f"evaluate.tasks[{i}]",
            )
            for i, task in enumerate(config.tasks)
        ]
        # The reference's metrics and per-unit figures: drops and their paired intervals are taken against them.
        self.reference_metrics: dict[str, dict] | None = None
        self.reference_raw: dict[str, np.ndarray] = {}
        self._indices: dict[str, np.ndarray] = {}

    @property
    def steps_per_model(self) -> int:
        return sum(p.steps for p in self.prepared) + self.config.latency.warmup + self.config.latency.runs

    def _idx(self, metric: str, n: int) -> np.ndarray:
        if metric not in self._indices:
            self._indices[metric] = bootstrap_indices(n, BOOTSTRAP_RESAMPLES, self.seed)
        return self._indices[metric]

    def measure(self, handle: ModelHandle, bar, latency: bool = True) -> dict:
        """Metrics with 95% intervals, size and (unless latency=False) latency of one model.

        The first model measured must be the reference; every later one gets drops against it.
        """
        runner = Runner(handle, self.providers, self.config.latency.threads)
        metrics, raws = {}, {}
        for p in self.prepared:
            metric = p.task.metric
            result, raw = p.score(runner, bar)
            result["ci95"] = interval95(p.resampled(raw, self._idx(metric, len(raw))))
            metrics[metric], raws[metric] = result, raw
        out = {
            "format": "pytorch" if handle.kind == "torch" else "onnx",
            "size_bytes": handle_size(handle),
            "metrics": metrics,
        }
        if latency:
            out["latency"] = measure_latency(runner, handle.loaded, self.config.latency)
            bar.update(self.config.latency.warmup + self.config.latency.runs)
        del runner
        if handle.produced_by == "reference":
            self.reference_metrics, self.reference_raw = metrics, raws
        out["drop_pct"], out["drop_ci95"] = self.drops(metrics, raws)
        return out

    def drops(self, metrics: dict, raws: dict) -> tuple[dict, dict]:
        """Each metric's drop against the reference, and its paired bootstrap 95% interval."""
        drop, interval = {}, {}
        if self.reference_metrics is None:
            return drop, interval
        for p in self.prepared:
            metric = p.task.metric
            reference = self.reference_raw[metric]
            drop[metric] = relative_drop_pct(metric, self.reference_metrics[metric]["value"], metrics[metric]["value"])
            idx = self._idx(metric, len(raws[metric]))
            interval[metric] = interval95(
                relative_drops_pct(metric, p.resampled(reference, idx), p.resampled(raws[metric], idx))
            )
        return drop, interval

    def budget_checks(self, result: dict, model_name: str) -> list[dict]:
        checks = []
        for metric, budget in self.config.budgets.items():
            drop = result["drop_pct"][metric]
            lo, hi = result["drop_ci95"][metric]
            checks.append(
                {
                    "metric": metric,
                    "model": model_name,
                    "drop_pct": drop,
                    "drop_ci95": [lo, hi],
                    "max_drop_pct": budget.max_drop_pct,
                    "passed": drop <= budget.max_drop_pct,
                    # The verdict follows the measured drop; the interval says whether it is clear of the noise.
                    "margin_within_noise": bool(lo <= budget.max_drop_pct <= hi),
                }
            )
        return checks

    def data_summary(self) -> dict:
        return {
            p.task.metric: {
                "source": p.task.data.describe(),
                "samples": p.count,
                "unit": UNITS[p.task.metric],
                "sha256": p.texts_digest,
            }
            for p in self.prepared
        }


BOOTSTRAP_RESAMPLES = 1000
UNITS = {"perplexity": "windows", "spearman": "pairs", "accuracy": "documents"}


def run(config: EvaluateConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    evaluator = Evaluator(config, ctx)
    handles = list(ctx.history)
    bar = ctx.progress(total=len(handles) * evaluator.steps_per_model, desc=f"evaluate ({len(handles)} models)")
    results = {handle.produced_by: evaluator.measure(handle, bar) for handle in handles}
    bar.close()
    final_name = handles[-1].produced_by
    checks = evaluator.budget_checks(results[final_name], final_name)
    details = {
        "models": results,
        "final": final_name,
        "budgets": checks,
        "within_budget": all(c["passed"] for c in checks),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "data": evaluator.data_summary(),
    }
    return StageResult(None, details, state=evaluator)
