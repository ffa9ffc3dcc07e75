"""Screenshots of every page, light and dark theme, into assets/ (for README and a look by eye).

    .venv/bin/python scripts/screenshots.py [--out assets] [--pages model,sparsify]

Starts `streamlit run app.py` once per theme on a free localhost port (stopped by its pid), opens
each page with MiniLM picked at 1440 px wide, waits for the page to be idle and saves
`<page>-<theme>.jpg` (full page).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.served import served_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = {  # url path -> text that says the page has drawn
    "model": "Prunable layers",
    "sparsify": "Per-layer report",
    "masks": "Showing the masks of",
    "attention": "Attention",
    "training": "New runs",
    "compare": "Compare",
    "attribution": "Attribution",
    "benchmarks": "Benchmarks",
}


def _idle(page, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    quiet = 0
    while time.time() < deadline and quiet < 10:  # 10 samples (1 s) without Streamlit's running indicator
        running = page.locator('[data-testid="stStatusWidget"]')
        quiet = 0 if running.count() and running.first.is_visible() else quiet + 1
        page.wait_for_timeout(100)


def shoot(theme: str, out: Path, pages: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    with served_app(options=["--theme.base", theme], timeout=120) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        # The main area scrolls inside its own container, so a full-page shot needs a tall viewport.
        page = browser.new_page(viewport={"width": 1440, "height": 2600})
        page.set_default_timeout(240_000)
        for name in pages:
            page.goto(f"{url}/{'' if name == 'model' else name}")
            page.get_by_text(PAGES[name]).first.wait_for()
            _idle(page)
            page.wait_for_timeout(1500)  # charts finish their transitions
            path = out / f"{name}-{theme}.jpg"
            page.screenshot(path=str(path), full_page=True, type="jpeg", quality=70)
            print(path, f"{path.stat().st_size / 1024:.0f} KB")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "assets"))
    parser.add_argument("--pages", default=",".join(PAGES))
    parser.add_argument("--themes", default="light,dark")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit("chromium is not installed: bash scripts/setup.sh --dev installs it")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for theme in args.themes.split(","):
        shoot(theme, out, args.pages.split(","))


if __name__ == "__main__":
    main()
