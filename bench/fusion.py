"""Which fusion engine to use per model type: ONNX Runtime's transformers optimizer vs onnxscript's ort_fusions.

Exports each ready model once, fuses it with both engines, and prints fusion time, fusions applied, and
CPU latency (2 threads) against the unfused export, side by side in one run.

    python bench/fusion.py [--models smollm2-glm all-minilm-l6-v2] [--kv-cache on|off|both]

Decoders are exported with their key/value cache inputs (the default) unless `--kv-cache off`; `both`
times the two exports side by side (latency is of full-sequence calls with an empty cache).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from common import exported, latency_ms, max_diff, table

from glmopt.stages.fuse import fuse_model

SHAPES = [(1, 128), (4, 512)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["smollm2-glm", "all-minilm-l6-v2"])
    parser.add_argument("--kv-cache", choices=["on", "off", "both"], default="on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    cache_modes = {"on": [True], "off": [False], "both": [False, True]}[args.kv_cache]
    for builtin in args.models:
        loaded = None
        for kv_cache in cache_modes:
            loaded, onnx_path, export_s = exported(builtin, kv_cache=kv_cache, loaded=loaded)
            label = f"{builtin} ({'kv cache' if kv_cache else 'no cache'})" if loaded.arch.is_decoder else builtin
            results.extend(measure(label, loaded, onnx_path))
            shutil.rmtree(onnx_path.parent, ignore_errors=True)  # the export's temporary folder
            if not loaded.arch.is_decoder:
                break  # an encoder has no cache: one export covers every mode
    keys = list(dict.fromkeys(k for r in results for k in r if k != "fusions"))
    rows = [[r.get(k, "") for k in keys] for r in results]
    print(table(keys, rows))
    for r in results:
        if r.get("fusions"):
            print(f"{r['model']} / {r['engine']}: {r['fusions']}")
    print("speedup = latency of the unfused export / latency of the fused model, at the largest shape")
    if args.json:
        print(json.dumps(results))


def measure(builtin: str, loaded, onnx_path) -> list[dict]:
    results = []
    shapes = SHAPES if loaded.arch.is_decoder else [(1, 128), (32, 128)]
    base = {s: latency_ms(onnx_path, loaded, *s) for s in shapes}
    results.append(
        {
            "model": builtin,
            "engine": "none (export)",
            "seconds": 0.0,
            "fusions": {},
            **{f"{b}x{q} ms": base[(b, q)] for b, q in shapes},
            "speedup": 1.0,
            "max_diff": 0.0,
        }
    )
    for engine in ("onnxruntime", "onnxscript"):
        out = onnx_path.with_name(f"fused-{engine}.onnx")
        start = time.perf_counter()
        try:
            fusions = fuse_model(onnx_path, out, engine, loaded.arch.model_type, loaded.model.config)
        except Exception as exc:  # an engine that fails on a model type is a result too
            results.append({"model": builtin, "engine": engine, "error": str(exc).splitlines()[0]})
            continue
        seconds = time.perf_counter() - start
        lat = {s: latency_ms(out, loaded, *s) for s in shapes}
        results.append(
            {
                "model": builtin,
                "engine": engine,
                "seconds": seconds,
                "fusions": fusions,
                **{f"{b}x{q} ms": lat[(b, q)] for b, q in shapes},
                "speedup": base[shapes[-1]] / lat[shapes[-1]],
                "max_diff": max_diff(onnx_path, out, loaded),
            }
        )
    return results


if __name__ == "__main__":
    main()
