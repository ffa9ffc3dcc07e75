"""Server-side time of a page re-run (AppTest, no browser).

    python benchmarks/bench_app.py [--repeats 5]

Warm re-runs with MiniLM loaded: change the N:M setting on the Sparsify page ("Update live"
ticked), then re-run the Masks page with it; the median wall time of each re-run is printed. What a
browser user waits for (these plus transfer and drawing, and the cold start) is
`benchmarks/bench_browser.py`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.apptest import page_app  # noqa: E402

SETTINGS = ["2:4", "1:4", "2:8", "4:8", "1:2"]


def warm_reruns(repeats: int) -> None:
    sp = page_app("sparsify", "minilm", sp_live=True)
    t0 = time.perf_counter()
    sp.run()
    first = time.perf_counter() - t0
    masks = page_app("masks", "minilm")
    masks.run()
    sp_times, mask_times = [], []
    for i in range(repeats):
        for nm in SETTINGS[1:] + SETTINGS[:1]:
            # A new N:M setting each time, so nothing is served from the result cache.
            t0 = time.perf_counter()
            sp.selectbox(key="sp_nm").set_value(nm).run()
            sp_times.append(time.perf_counter() - t0)
            assert not sp.exception and not sp.error, (sp.exception, [e.value for e in sp.error])
            masks.session_state["config_json"] = sp.session_state["config_json"]
            t0 = time.perf_counter()
            masks.run()
            mask_times.append(time.perf_counter() - t0)
            assert not masks.exception, masks.exception
            assert len(masks.get("plotly_chart")) >= 5 and any(m.label.startswith("SAD") for m in masks.metric)
        # Clear the cached results so the next round recomputes.
        from ui.cached import model_quality as _quality
        from ui.state import _results

        _results.clear()
        _quality.clear()
    print(f"MiniLM, first Sparsify page run (model load + 2:4 + quality): {first:.2f} s")
    print(f"{'re-run after changing N:M':<34}{'median s':>10}{'max s':>8}{'runs':>6}")
    print(f"{'Sparsify page (prune + quality)':<34}{statistics.median(sp_times):>10.2f}{max(sp_times):>8.2f}{len(sp_times):>6}")
    print(f"{'Masks page (all figures + diff)':<34}{statistics.median(mask_times):>10.2f}{max(mask_times):>8.2f}{len(mask_times):>6}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.chdir(ROOT)
    warm_reruns(args.repeats)


if __name__ == "__main__":
    main()
