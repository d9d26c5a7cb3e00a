"""Accuracy-driven fallback and the reports around it, on a tiny GLM (mechanics, not accuracy claims)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from test_build import build, validate_report

from glmopt.cli import app
from recipes import decoder_recipe, write

# Per-tensor MinMax on the tiny model costs a measurable (if small) perplexity drop to win back.
PLAIN = {"method": "minmax", "per_channel": False}


def tight_recipe(tiny_models, text_files, name: str, budget: float, fallback: dict | None = None, **quantize):
    recipe = decoder_recipe(tiny_models["glm"], text_files, name=name, budget=budget, quantize={**PLAIN, **quantize})
    evaluate = recipe["stages"][-1]
    evaluate["sensitivity_top_k"] = 2
    if fallback is not None:
        evaluate["fallback"] = fallback
    return recipe


@pytest.fixture(scope="module")
def impossible(tiny_models, text_files, tmp_path_factory):
    """Budget 0: even the float model's rounding misses it, so fallback runs to its end and exit code is 3."""
    root = tmp_path_factory.mktemp("impossible")
    recipe = tight_recipe(tiny_models, text_files, "impossible", 0.0)
    code, out, result = build(write(root / "r.yaml", recipe), root / "a")
    return code, out, result, root / "a" / "impossible" / "1"


def test_missed_budget_after_fallback_exits_3_with_best_model_and_explanation(impossible):
    code, out, result, artifact = impossible
    assert code == 3, result.output
    report = json.loads((artifact / "report.json").read_text())
    fallback = report["evaluation"]["fallback"]
    counts = [t["float_nodes"] for t in fallback["trials"]]
    assert counts[:3] == [1, 2, 4]  # doubling while every trial fails
    assert not any(t["passed"] for t in fallback["trials"])
    assert fallback["within_budget"] is False and fallback["stopped"]
    # The best model is the one closest to the budget, and it is what the artifact holds.
    best = min(fallback["trials"], key=lambda t: (t["drop_pct"]["perplexity"], t["float_nodes"]))
    plain = report["evaluation"]["models"]["quantize"]["drop_pct"]["perplexity"]
    if best["drop_pct"]["perplexity"] < plain:
        assert report["evaluation"]["final"] == "fallback"
        assert report["metrics"]["perplexity"] == pytest.approx(best["metrics"]["perplexity"])
        assert fallback["float_nodes"] == best["float_nodes"]
    assert "BUDGET MISSED" in out["verdict"] and "Fallback kept" in out["verdict"]
    assert json.loads((artifact / "fallback.json").read_text())["exclude_nodes"] == fallback["exclude_nodes"]
    assert "budget still missed" in (artifact / "report.md").read_text()


def test_trial_limit_is_respected(tiny_models, text_files, tmp_path):
    recipe = tight_recipe(tiny_models, text_files, "limited", 0.0, fallback={"max_trials": 2})
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 3, result.output
    fallback = json.loads((tmp_path / "a" / "limited" / "1" / "report.json").read_text())["evaluation"]["fallback"]
    assert len(fallback["trials"]) == 2 and fallback["stopped"] == "trial limit reached"


def test_fallback_disabled_leaves_the_plain_model(tiny_models, text_files, tmp_path):
    recipe = tight_recipe(tiny_models, text_files, "nofallback", 0.0, fallback={"enabled": False})
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 3, result.output
    report = json.loads((tmp_path / "a" / "nofallback" / "1" / "report.json").read_text())
    assert "fallback" not in report["evaluation"] and report["evaluation"]["final"] == "quantize"
    assert not (tmp_path / "a" / "nofallback" / "1" / "fallback.json").exists()


def test_fallback_meets_a_feasible_budget_and_its_exclusions_rebuild_the_same_model(
    impossible, tiny_models, text_files, tmp_path
):
    _, _, _, artifact = impossible
    report = json.loads((artifact / "report.json").read_text())
    plain = report["evaluation"]["models"]["quantize"]["drop_pct"]["perplexity"]
    trials = report["evaluation"]["fallback"]["trials"]
    # A budget the plain INT8 model misses but some trial of the first build met.
    budget = (plain + min(t["drop_pct"]["perplexity"] for t in trials)) / 2
    assert budget < plain
    code, out, result = build(
        write(tmp_path / "r.yaml", tight_recipe(tiny_models, text_files, "feasible", budget)), tmp_path / "a"
    )
    assert code == 0, result.output
    feasible = json.loads((tmp_path / "a" / "feasible" / "1" / "report.json").read_text())
    evaluation = feasible["evaluation"]
    fallback = evaluation["fallback"]
    assert evaluation["final"] == "fallback" and evaluation["within_budget"] is True
    passing = [t["float_nodes"] for t in fallback["trials"] if t["passed"]]
    assert fallback["float_nodes"] == min(passing)
    assert [s["name"] for s in feasible["stages"]][-1] == "fallback"

    # Pasting the saved exclusions into the recipe builds that model directly, without fallback.
    pasted = tight_recipe(tiny_models, text_files, "pasted", budget, exclude_nodes=fallback["exclude_nodes"])
    code, out, result = build(write(tmp_path / "p.yaml", pasted), tmp_path / "a")
    assert code == 0, result.output
    direct = json.loads((tmp_path / "a" / "pasted" / "1" / "report.json").read_text())
    assert "fallback" not in direct["evaluation"]
    assert direct["metrics"]["perplexity"] == pytest.approx(feasible["metrics"]["perplexity"], rel=1e-6)
    assert direct["metrics"]["size_bytes"] == feasible["metrics"]["size_bytes"]

    # compare reads exclusions from the recipe and from the fallback alike: these two builds keep the same nodes.
    from typer.testing import CliRunner

    shown = CliRunner().invoke(
        app,
        ["report", "compare", str(tmp_path / "a" / "feasible" / "1"), str(tmp_path / "a" / "pasted" / "1"), "--json"],
    )
    assert shown.exit_code == 0, shown.output
    diff = json.loads(shown.stdout.strip().splitlines()[-1])
    assert diff["exclusions"] == {"added": [], "removed": []}
    assert any(key.startswith("stages[quantize].exclude_nodes") for key in diff["recipe_changes"])


def test_report_lists_sensitive_nodes_and_metric_cost(impossible):
    _, _, _, artifact = impossible
    report = json.loads((artifact / "report.json").read_text())
    nodes = report["sensitivity"]["nodes"]
    assert len(nodes) == report["stages"][2]["details"]["quantized_nodes"]
    assert [n["sqnr_db"] for n in nodes] == sorted(n["sqnr_db"] for n in nodes)
    costs = report["evaluation"]["node_metric_cost"]
    assert [c["node"] for c in costs] == [n["node"] for n in nodes[:2]]
    md = (artifact / "report.md").read_text()
    assert "Most sensitive nodes" in md and nodes[0]["node"] in md
    assert (artifact / "sensitivity.json").is_file()
    validate_report(artifact / "report.json")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.links.append(value)


def test_html_report_is_self_contained_with_plots_and_verdict(impossible):
    _, _, _, artifact = impossible
    html = (artifact / "report.html").read_text()
    parser = _Collector()
    parser.feed(html)
    assert "script" not in parser.tags and not parser.links  # nothing to fetch, nothing to run
    assert re.findall(r"https?://", html.replace('xmlns="http://www.w3.org/2000/svg"', "")) == []
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    titles = [ET.fromstring(svg).find("{http://www.w3.org/2000/svg}title").text for svg in svgs]
    assert any(t.startswith("perplexity per stage") for t in titles)
    assert any(t.startswith("latency") for t in titles)
    assert any(t.startswith("size against") for t in titles)
    assert any(t.startswith("SQNR of") for t in titles)
    assert any(t.startswith("input of") for t in titles)  # calibration histograms of the worst tensors
    assert any("nodes kept in float" in t for t in titles)
    verdict = re.search(r'<div class="verdict (\w+)">(.*?)</div>', html)
    assert verdict and verdict.group(1) == "missed" and verdict.group(2).startswith("BUDGET MISSED")
    assert "onnxruntime" in html  # tool versions
    assert "stage: quantize" in html  # the recipe as written


def test_fallback_to_weight_only_keeps_weights_small_and_its_snippet_rebuilds_the_model(
    tiny_models, text_files, tmp_path
):
    import onnx

    recipe = tight_recipe(tiny_models, text_files, "wo", 0.0, fallback={"max_trials": 2, "to": "weight_only"})
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 3, result.output  # budget 0 cannot be met: the search runs its two trials
    artifact = tmp_path / "a" / "wo" / "1"
    report = json.loads((artifact / "report.json").read_text())
    evaluation = report["evaluation"]
    fallback = evaluation["fallback"]
    assert fallback["to"] == "weight_only" and [t["float_nodes"] for t in fallback["trials"]] == [1, 2]
    # The trials' models are no bigger than the plain INT8 model plus block scales: weights stay 8-bit.
    plain_size = evaluation["models"]["quantize"]["size_bytes"]
    assert all(t["size_bytes"] < 1.1 * plain_size for t in fallback["trials"])
    assert "weight-only" in out["verdict"]
    if evaluation["final"] != "fallback":
        return  # no trial beat the plain model: nothing more to check on this tiny model
    snippet = fallback["recipe_snippet"]
    ops = [n.op_type for n in onnx.load(str(artifact / "model.onnx")).graph.node]
    assert ops.count("MatMulNBits") == len(snippet["weight_only_nodes"]) >= 1
    pasted = tight_recipe(tiny_models, text_files, "wo-pasted", 0.0, fallback={"enabled": False}, **snippet)
    code, out, result = build(write(tmp_path / "p.yaml", pasted), tmp_path / "a")
    direct = json.loads((tmp_path / "a" / "wo-pasted" / "1" / "report.json").read_text())
    assert direct["metrics"]["perplexity"] == pytest.approx(report["metrics"]["perplexity"], rel=1e-6)
