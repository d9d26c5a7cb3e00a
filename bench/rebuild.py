"""What the stage cache saves: a recipe built from scratch, then rebuilt after changing only its budget.

Both builds run `glmopt build RECIPE --json` in a fresh process with one new artifacts folder (so the
first build starts with an empty stage cache). The second build's recipe is the first with every
`max_drop_pct` raised by 10 points, written beside the original (so relative paths resolve the same)
and removed afterwards. Prints both wall times, each stage's seconds and cache status, and the ratio.

    python bench/rebuild.py [--recipe recipes/int8.yaml]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml
from common import run_build

REPO = Path(__file__).resolve().parents[1]


def with_looser_budgets(recipe: Path) -> Path:
    data = yaml.safe_load(recipe.read_text())
    for stage in data["stages"]:
        for budget in (stage.get("budgets") or {}).values():
            budget["max_drop_pct"] = float(budget["max_drop_pct"]) + 10.0
    changed = recipe.with_name(f".{recipe.stem}.rebuild-bench.yaml")
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="recipes/int8.yaml")
    args = parser.parse_args()
    recipe = REPO / args.recipe
    artifacts = Path(tempfile.mkdtemp(prefix="glmopt-rebuild-"))
    changed = with_looser_budgets(recipe)
    try:
        first_wall, first, _ = run_build(recipe, artifacts)
        second_wall, second, _ = run_build(changed, artifacts)
    finally:
        changed.unlink(missing_ok=True)
        shutil.rmtree(artifacts, ignore_errors=True)
    print(f"recipe: {args.recipe}; rebuilt with every budget 10 points looser")
    print(f"{'stage':<10} {'first s':>9} {'rebuild s':>10}  rebuild cache")
    for a, b in zip(first["stages"], second["stages"], strict=True):
        print(f"{a['name']:<10} {a['seconds']:9.1f} {b['seconds']:10.1f}  {b.get('cache', 'not cached')}")
    ratio = first_wall / second_wall
    print(f"wall time: first build {first_wall:.1f} s, rebuild {second_wall:.1f} s: {ratio:.2f}x faster")
    same = first["metrics"].get("size_bytes") == second["metrics"].get("size_bytes")
    print(f"same final model size: {same}; exit codes {first['exit_code']} and {second['exit_code']}")


if __name__ == "__main__":
    main()
