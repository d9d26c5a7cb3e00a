"""Calibration of a GLM of at least 1B parameters on this 24 GB machine: time and peak RSS.

Builds a ~1.03B-parameter GlmForCausalLM from a config (random weights: this measures memory, not
accuracy), exports it with glmopt's export stage (external data), then runs plain FP32 inference and
glmopt's calibration over the same samples, each in its own process so that peak RSS is its own.

    python bench/calibration_scale.py [--samples 16] [--layers 22]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, peak_rss_bytes, table


def build_model(folder: Path, layers: int) -> int:
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from glmopt.models.builtin import resolve_builtin

    tokenizer_source = resolve_builtin("smollm2-glm")
    config = GlmConfig(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=64,
        partial_rotary_factor=0.5,
        attention_bias=True,
        pad_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GlmForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--worker")
    parser.add_argument("--model-path")
    parser.add_argument("--model-folder")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    work = Path(tempfile.mkdtemp(prefix="glmopt-scale-"))
    try:
        measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # about 9 GB of model files


def measure(work: Path, args) -> None:
    folder = work / "hf"
    start = time.perf_counter()
    params = build_model(folder, args.layers)
    print(
        f"built GlmForCausalLM with {params / 1e9:.2f}B parameters in {time.perf_counter() - start:.0f} s", flush=True
    )
    export_json = work / "export.json"
    subprocess.run(
        [sys.executable, __file__, "--worker", "export", "--model-folder", str(folder), "--out", str(export_json)],
        check=True,
    )
    exported = json.loads(export_json.read_text())
    model_path = Path(exported["path"])
    size = sum(f.stat().st_size for f in model_path.parent.glob("model.onnx*"))
    rows = [["export", "", exported["seconds"], "", exported["peak_rss"] / 1e9, ""]]
    results = {}
    for method in ("fp32", "glmopt"):
        out = work / f"{method}.json"
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                method,
                "--model-folder",
                str(folder),
                "--model-path",
                str(model_path),
                "--samples",
                str(args.samples),
                "--out",
                str(out),
            ],
            check=True,
        )
        results[method] = json.loads(out.read_text())
    for method, r in results.items():
        rows.append(
            [
                method,
                r["samples"],
                r["seconds"],
                r["seconds"] / results["fp32"]["seconds"],
                r["peak_rss"] / 1e9,
                (r["peak_rss"] - size) / 1e9,
            ]
        )
    print(f"FP32 ONNX model: {size / 1e9:.2f} GB on disk ({params / 1e9:.2f}B parameters)")
    print(table(["step", "samples", "seconds", "x fp32", "peak RSS GB", "RSS - model GB"], rows))
    print("goal: glmopt peak RSS <= model size + 1 GB")


def worker(args) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from glmopt.models import load_model

    start = time.perf_counter()
    result: dict = {}
    if args.worker == "export":
        loaded = load_model(Path(args.model_folder))
        from glmopt.pipeline import progress_factory
        from glmopt.stages.base import ModelHandle, StageContext
        from glmopt.stages.export import ExportConfig
        from glmopt.stages.export import run as export

        work = Path(args.model_folder).parent / "onnx"
        work.mkdir()
        ctx = StageContext(work, work, loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
        handle = export(ExportConfig(atol=1e-2), ctx, ModelHandle("torch", "reference", torch=loaded)).model
        result["path"] = str(handle.onnx_path)
    else:
        import onnx

        from glmopt.calibrate.collect import activation_inputs, collect_histograms, select_nodes
        from glmopt.calibrate.dataset import calibration_batches, load_calibration_file
        from glmopt.onnx_utils import make_session, run_session

        model_path = Path(args.model_path)
        cal = load_calibration_file(REPO_ROOT / "calibration" / "wikipedia-64x256.yaml")
        cal = cal.model_copy(update={"num_samples": args.samples, "batch_size": 1})  # as the README measured
        # Tokenizer and input names only: loading the PyTorch model would count towards this process's peak.
        from transformers import AutoTokenizer

        from glmopt.models import ARCHITECTURES, read_model_type

        tokenizer = AutoTokenizer.from_pretrained(args.model_folder)
        arch = ARCHITECTURES[read_model_type(Path(args.model_folder))]
        batches, _ = calibration_batches(cal, tokenizer, arch.input_names, REPO_ROOT, "bench")
        start = time.perf_counter()
        if args.worker == "fp32":
            session = make_session(model_path, ["CPUExecutionProvider"])
            for feeds in batches:
                run_session(session, feeds)
        else:
            proto = onnx.load(str(model_path), load_external_data=False)
            tensors = activation_inputs(proto, select_nodes(proto, ["MatMul", "Gather"], None, [], True))
            del proto
            collect_histograms(model_path, tensors, batches, 2048, ["CPUExecutionProvider"], model_path.parent)
        result["samples"] = len(batches)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss"] = peak_rss_bytes()
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
