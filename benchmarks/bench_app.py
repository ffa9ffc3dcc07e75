"""Responsiveness of the app, measured the way a user meets it.

    python benchmarks/bench_app.py [--repeats 5] [--no-browser]

1. Warm re-runs with MiniLM loaded (AppTest): change the N:M setting on the Sparsify page, then
   re-run the Masks page with it; the median wall time of each re-run is printed.
2. Cold start (real browser): start `streamlit run app.py` in a fresh process with an empty
   Streamlit cache and time until the Model page shows MiniLM's layer table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ui.testing import page_app  # noqa: E402

SETTINGS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 2)]


def warm_reruns(repeats: int) -> None:
    sp = page_app("sparsify", "minilm")
    t0 = time.perf_counter()
    sp.run()
    first = time.perf_counter() - t0
    masks = page_app("masks", "minilm")
    masks.run()
    sp_times, mask_times = [], []
    for i in range(repeats):
        for n, m in SETTINGS[1:] + SETTINGS[:1]:
            # A new N:M setting each time, so nothing is served from the result cache.
            t0 = time.perf_counter()
            sp.number_input(key="sp_m").set_value(m)
            sp.number_input(key="sp_n").set_value(n)
            sp.run()
            sp_times.append(time.perf_counter() - t0)
            assert not sp.exception and not sp.error, (sp.exception, [e.value for e in sp.error])
            masks.session_state["config_json"] = sp.session_state["config_json"]
            t0 = time.perf_counter()
            masks.run()
            mask_times.append(time.perf_counter() - t0)
            assert not masks.exception, masks.exception
            assert len(masks.get("plotly_chart")) >= 5 and any(m.label.startswith("SAD") for m in masks.metric)
        # Clear the cached results so the next round recomputes.
        from ui.state import _quality, _results

        _results.clear()
        _quality.clear()
    print(f"MiniLM, first Sparsify page run (model load + 2:4 + quality): {first:.2f} s")
    print(f"{'re-run after changing N:M':<34}{'median s':>10}{'max s':>8}{'runs':>6}")
    print(f"{'Sparsify page (prune + quality)':<34}{statistics.median(sp_times):>10.2f}{max(sp_times):>8.2f}{len(sp_times):>6}")
    print(f"{'Masks page (all figures + diff)':<34}{statistics.median(mask_times):>10.2f}{max(mask_times):>8.2f}{len(mask_times):>6}")


def cold_start() -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page()
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=2000)
                    break
                except Exception:
                    if time.perf_counter() - t0 > 60:
                        raise
                    time.sleep(0.2)
            page.get_by_text("Prunable layers").wait_for(timeout=60_000)
            elapsed = time.perf_counter() - t0
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"cold start to a rendered Model page with MiniLM (server start + model load + render): {elapsed:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    os.chdir(ROOT)
    warm_reruns(args.repeats)
    if not args.no_browser:
        cold_start()


if __name__ == "__main__":
    main()
