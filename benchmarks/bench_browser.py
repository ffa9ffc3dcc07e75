"""Responsiveness as a browser user meets it: time from a click to the idle page, in Chromium.

    python benchmarks/bench_browser.py [--repeats 3] [--empty-cache] [--out results.json]
    python benchmarks/bench_browser.py --goals [--root OTHER_CHECKOUT ...] [--repeats 3]

Starts the app as `scripts/run_app.sh` does (`scripts/serve.py`) on a free localhost port (stopped by its pid at the end) and drives
it with Playwright and Debian's chromium:

- cold start: from starting the server to MiniLM's Model page drawn and idle;
- model switch: MiniLM -> digits MLP -> digits CNN -> MiniLM in the sidebar;
- Sparsify on MiniLM: a new N:M setting with magnitude and random (live), Wanda and SparseGPT (Apply);
- Masks: another layer picked.

``--goals`` times issue #24's four latency goals instead, each server started fresh: cold start, page
switches (first visit and revisit), a live magnitude change on MiniLM and a deep link (on a fresh server
and in a new browser tab); with several ``--root`` checkouts (e.g. a ``git archive`` of the commit
before a change) it alternates between them, so before and after share one run window and its load.

"Idle" is Streamlit's script state back at ``notRunning`` after the rerun the action started (and
the expected text on the page), checked every 20 ms; each timing ends at the first idle sample. Prints one table with the median and range of each
action, measured in this run. The machine's load matters: quote the table with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from devtools.served import served_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


_WATCH = """() => {
  if (window.__states) return;
  window.__states = [];
  const app = document.querySelector('[data-testid="stApp"]');
  new MutationObserver(() => window.__states.push([app.getAttribute('data-test-script-state'), performance.now()]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def watch(page) -> None:
    """Record every change of Streamlit's script state (``data-test-script-state`` on the app root):
    polling alone misses a rerun shorter than one poll."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.evaluate(_WATCH)


def mark(page) -> tuple[float, int, float]:
    """The moment an action starts: this process's clock, how many script states were recorded so
    far, and the browser's clock (ms)."""
    page.evaluate(_WATCH)  # again after a page load; a no-op while the observer is there
    seen, browser_ms = page.evaluate("() => [window.__states.length, performance.now()]")
    return time.perf_counter(), seen, browser_ms


POLL_MS = 250
"""How often ``wait_idle`` asks the browser. Each question makes Chromium work (on 2 cores, polling
every 20 ms took about half a core from the server during a Wanda run), and the duration no longer
depends on it: it is read from the browser's own time stamp of the state change."""


def wait_idle(page, start: tuple[float, int, float] | float, expect=None, timeout: float = 300.0) -> float:
    """Seconds from ``start`` until the rerun the action caused has finished and ``expect`` shows.

    Done when the recorded states (``watch``) since the action went through a running state and are
    back at ``notRunning``; the time is the browser's time stamp of that last change, less the
    browser's time at ``mark``. An action that starts no rerun within 2 s counts from when
    ``expect`` shows; a plain float ``start`` (this process's clock, e.g. a server start) is timed
    here, polling every 20 ms.
    """
    if isinstance(start, tuple):
        start, seen, browser_start = start
        poll = POLL_MS
    else:
        seen, browser_start, poll = 0, None, 20
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        states = page.evaluate(f"() => window.__states.slice({seen})")
        now = time.perf_counter()
        ran = any(s != "notRunning" for s, _ in states)
        idle = page.locator('[data-testid="stApp"]').get_attribute("data-test-script-state") == "notRunning"
        shown = expect is None or (expect.count() > 0 and expect.first.is_visible())
        if idle and shown and ran and states[-1][0] == "notRunning":
            return (states[-1][1] - browser_start) / 1000 if browser_start is not None else now - start
        if idle and shown and not ran and now - start > 2.0:
            return now - start
        page.wait_for_timeout(poll)
    page.screenshot(path="bench_browser_timeout.png", full_page=True)
    raise TimeoutError("the page did not become idle (screenshot: bench_browser_timeout.png)")


def pick(page, label: str, option: str, sidebar: bool = False) -> None:
    scope = page.locator('[data-testid="stSidebar"]') if sidebar else page.locator('[data-testid="stMain"]')
    box = scope.locator('[data-testid="stSelectbox"]', has_text=label).first
    box.click()
    page.get_by_role("option", name=option, exact=False).first.click()


def nav(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=name).first.click()
    page.get_by_role("heading", name=name).first.wait_for()


def run(repeats: int, empty_cache: bool, streamlit_args: list[str] = ()) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    env = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="sparsekit-bench-")
    if empty_cache:
        env["SPARSEKIT_CACHE_DIR"] = tmp
    times: dict[str, list[float]] = {}
    start = time.perf_counter()
    # The command scripts/run_app.sh runs (it preloads the default model while the server starts).
    try:
        with served_app(("scripts/serve.py",), options=streamlit_args, env=env,
                        log_path=Path(tmp) / "streamlit.log", timeout=300) as url:
            times["server up (health check answers)"] = [time.perf_counter() - start]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                page.set_default_timeout(300_000)
                page.goto(url)
                watch(page)
                times["cold start to Model page (MiniLM)"] = [wait_idle(page, start, page.get_by_text("Prunable layers (36)"))]

                for _ in range(repeats):
                    for option, name in (("Digits MLP", "digits MLP"), ("Digits CNN", "digits CNN"), ("MiniLM", "all-MiniLM")):
                        t = mark(page)
                        pick(page, "Source", option, sidebar=True)
                        key = f"model switch to {option}"
                        caption = page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text=name)
                        times.setdefault(key, []).append(wait_idle(page, t, caption))

                nav(page, "Sparsify")
                wait_idle(page, mark(page), page.get_by_text("Per-layer report"))
                # Magnitude, Apply: every change waits for the button on MiniLM (> 1 M weights).
                for nm in ("1:2", "2:8"):
                    pick(page, "N:M", nm)
                    wait_idle(page, mark(page))
                    t = mark(page)
                    page.get_by_role("button", name="Apply").first.click()
                    times.setdefault("Sparsify magnitude: Apply to idle", []).append(
                        wait_idle(page, t, page.get_by_text("Per-layer report")))
                t = mark(page)
                page.get_by_text("Update live").click()
                wait_idle(page, t, page.get_by_text("Per-layer report"))
                for method in ("magnitude", "random"):
                    # Every N:M preset once (new: computed), then two again (served from the result cache).
                    settings = ["1:4", "4:8", "2:4", "1:2"] if method == "magnitude" else ["2:4", "1:4", "2:8", "1:2"]
                    if method != "magnitude":
                        t = mark(page)
                        pick(page, "Scoring", method)
                        times.setdefault(f"Sparsify {method} (live): new setting", []).append(
                            wait_idle(page, t, page.get_by_text("Per-layer report")))
                    # magnitude 2:4, 1:2 and 2:8 were computed above: its new ones are 1:4 and 4:8.
                    new = settings[:2] if method == "magnitude" else settings[:4]
                    cached = settings[2:4] if method == "magnitude" else settings[:2]
                    for label, nms in (("new setting", new), ("cached setting", cached)):
                        for nm in nms:
                            t = mark(page)
                            pick(page, "N:M", nm)
                            times.setdefault(f"Sparsify {method} (live): {label}", []).append(
                                wait_idle(page, t, page.get_by_text("Per-layer report")))
                for method in ("wanda", "sparsegpt"):
                    t = mark(page)
                    pick(page, "Scoring", method)
                    wait_idle(page, t)
                    for nm in ("2:4", "1:4")[:max(1, min(repeats, 2))]:
                        pick(page, "N:M", nm)
                        wait_idle(page, mark(page))
                        button = page.get_by_role("button", name="Apply")
                        if button.count() == 0:
                            continue  # cached from an earlier round
                        t = mark(page)
                        button.first.click()
                        times.setdefault(f"Sparsify {method}: Apply to idle", []).append(
                            wait_idle(page, t, page.get_by_text("Per-layer report")))

                nav(page, "Masks")
                wait_idle(page, mark(page), page.get_by_text("Showing the masks of"))
                box = page.locator('[data-testid="stSelectbox"]', has_text="Layer").first
                for i in range(repeats * 2):
                    box.click()
                    options = page.get_by_role("option")
                    target = options.nth((i * 5 + 3) % options.count())
                    t = mark(page)
                    target.click()
                    times.setdefault("Masks: another layer", []).append(wait_idle(page, t))
                browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return times


SPLITS: dict[str, list[dict[str, float]]] = {}
"""Server-side seconds per action (GPT-2 run): the page script, and its sparsify and quality pass."""


def server_split(log_path: Path, offset: int) -> tuple[dict[str, float], int]:
    """Sum the ``sparsekit.timing`` lines (``SPARSEKIT_LOG_TIMINGS=1``) written to the server log
    since ``offset``: ``{"page": s, "sparsify": s, "quality": s}``, and the new offset."""
    with open(log_path) as f:
        f.seek(offset)
        text = f.read()
        offset = f.tell()
    split = {"page": 0.0, "sparsify": 0.0, "quality": 0.0}
    for line in text.splitlines():
        if line.startswith("sparsekit.timing ") and line.endswith(" s"):
            try:
                what, seconds = line.split()[1], float(line.split()[-2])
            except ValueError:  # a line of another form (the warm-up's notes)
                continue
            split[what] = split.get(what, 0.0) + seconds
    return split, offset


def run_gpt2(repeats: int) -> tuple[dict[str, list[float]], list[str]]:
    """The GPT-2 small-size model (124 M parameters, random weights, written as a Hugging Face
    directory under a temporary model root) picked in the sidebar, then on Sparsify: a new magnitude
    and random setting (Apply), Wanda and SparseGPT (Apply, first run on the model). Returns the
    times and the estimate captions the page showed before each calibrated method's first run."""
    from playwright.sync_api import sync_playwright

    from bench_scale import write_gpt2  # noqa: PLC0415 (a sibling script)

    tmp = tempfile.mkdtemp(prefix="sparsekit-bench-")
    root = Path(tmp) / "models"
    root.mkdir()
    gpt2_dir = write_gpt2(root, "gpt2-small")
    env = dict(os.environ, SPARSEKIT_MODEL_ROOTS=str(root), SPARSEKIT_CACHE_DIR=str(Path(tmp) / "cache"),
               SPARSEKIT_LOG_TIMINGS="1")
    log_path = Path(tmp) / "streamlit.log"
    times: dict[str, list[float]] = {}
    captions: list[str] = []
    offset = 0

    def report(page):
        return page.get_by_text("Per-layer report")

    def apply(page, key: str) -> None:
        nonlocal offset
        button = page.get_by_role("button", name="Apply")
        caption = page.locator('[data-testid="stCaptionContainer"]', has_text="Computed when you press Apply")
        if caption.count():
            captions.append(f"{key}: {caption.first.inner_text()}")
        _, offset = server_split(log_path, offset)  # skip what ran before the click
        t = mark(page)
        button.first.click()
        times.setdefault(key, []).append(wait_idle(page, t, report(page)))
        split, offset = server_split(log_path, offset)
        SPLITS.setdefault(key, []).append(split)

    try:
        with served_app(("scripts/serve.py",), env=env, log_path=log_path, timeout=300) as url:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                page.set_default_timeout(600_000)
                page.goto(url)
                watch(page)
                wait_idle(page, mark(page), page.get_by_text("Prunable layers"))
                t = mark(page)
                pick(page, "Source", "Hugging Face directory", sidebar=True)
                wait_idle(page, t)
                t = mark(page)
                pick(page, "Model directory", gpt2_dir.name, sidebar=True)
                times["load GPT-2 small-size (pick to Model page idle)"] = [
                    wait_idle(page, t, page.get_by_text("Prunable layers (49)"))]
                nav(page, "Sparsify")
                wait_idle(page, mark(page))
                apply(page, "first setting (magnitude 2:4, dense reference built)")
                for nm in ("1:4", "4:8", "1:2")[:repeats]:
                    pick(page, "N:M", nm)
                    wait_idle(page, mark(page))
                    apply(page, "magnitude: new setting, Apply to idle")
                t = mark(page)
                pick(page, "Scoring", "random")
                wait_idle(page, t)
                apply(page, "random: new setting, Apply to idle")  # 1:2, as magnitude left it
                for nm in ("2:4", "1:4")[:max(repeats - 1, 0)]:
                    pick(page, "N:M", nm)
                    wait_idle(page, mark(page))
                    apply(page, "random: new setting, Apply to idle")
                for method in ("wanda", "sparsegpt"):
                    t = mark(page)
                    pick(page, "Scoring", method)
                    wait_idle(page, t)
                    for i, nm in enumerate(("2:4", "1:4")[:max(1, min(repeats - 1, 2))]):
                        pick(page, "N:M", nm)
                        wait_idle(page, mark(page))
                        apply(page, f"{method}: {'first 2:4' if i == 0 else 'a second setting'}, Apply to idle")
                browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return times, captions

GOALS = {"cold start to Model page (MiniLM)": 6.0, "deep link to Sparsify, fresh server": 8.0,
         "page switch, revisit": 0.5, "Sparsify magnitude (live): new setting": 1.0}
"""Issue #24's goals (seconds); the other actions are shown for context."""


def server_cpu() -> float:
    """CPU seconds (user + system, all threads) used so far by this process's app server (a child
    running ``serve.py``): a measure of the server's work that the machine's load hardly changes."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and "serve.py" in (stat.parent / "cmdline").read_text():
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def goals_once(browser, root: Path, times: dict[str, list[float]], env: dict) -> None:
    """One round of the issue #24 actions on servers started from checkout ``root`` (two servers: the
    first for the cold start, page switches, live changes and a deep link in a new tab; the second
    for a deep link as the very first request of a fresh server)."""
    serve = (str(root / "scripts" / "serve.py"),)

    def timed(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    start = time.perf_counter()
    with served_app(serve, env=env, timeout=300) as url:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(url)
        watch(page)
        timed("cold start to Model page (MiniLM)", wait_idle(page, start, page.get_by_text("Prunable layers (36)")))
        timed("server CPU s: start to Model page idle", server_cpu())
        expect = {"Sparsify": "Per-layer report", "Masks": "Showing the masks of", "Model": "Prunable layers (36)"}
        for i, name in enumerate(("Sparsify", "Masks", "Model") * 2):
            t = mark(page)
            page.locator('[data-testid="stSidebarNavLink"]', has_text=name).first.click()
            key = {0: "page switch, first visit to Sparsify (computes 2:4)", 1: "page switch, first visit to Masks"}
            timed(key.get(i, "page switch, revisit"), wait_idle(page, t, page.get_by_text(expect[name]).first))
        nav(page, "Sparsify")
        wait_idle(page, mark(page), page.get_by_text("Per-layer report"))
        t = mark(page)
        page.get_by_text("Update live").click()
        wait_idle(page, t, page.get_by_text("Per-layer report"))
        for nm in ("1:4", "4:8", "2:8"):
            t, cpu = mark(page), server_cpu()
            pick(page, "N:M", nm)
            timed("Sparsify magnitude (live): new setting", wait_idle(page, t, page.get_by_text("Per-layer report")))
            timed("server CPU s: live magnitude setting", server_cpu() - cpu)
        fresh = browser.new_page(viewport={"width": 1440, "height": 1000})
        t0 = time.perf_counter()
        fresh.goto(f"{url}/sparsify?sp_nm=1%3A2")
        watch(fresh)
        timed("deep link to Sparsify, new tab (warm server)",
              wait_idle(fresh, t0, fresh.get_by_text("Per-layer report")))
        fresh.close()
        page.close()
    start = time.perf_counter()
    with served_app(serve, env=env, timeout=300) as url:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(f"{url}/sparsify?sp_nm=1%3A4")
        watch(page)
        timed("deep link to Sparsify, fresh server", wait_idle(page, start, page.get_by_text("Per-layer report")))
        timed("server CPU s: start to deep link idle", server_cpu())
        page.close()


def run_goals(roots: list[Path], repeats: int, warmup: bool) -> dict[str, dict[str, list[float]]]:
    """``repeats`` rounds of ``goals_once`` per checkout, alternating between them; load averages too."""
    from playwright.sync_api import sync_playwright

    results: dict[str, dict[str, list[float]]] = {str(r): {} for r in roots}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for rep in range(-1 if warmup else 0, repeats):
            for root in roots:
                times: dict[str, list[float]] = {} if rep < 0 else results[str(root)]
                times.setdefault("load average (1/5/15 min) at start", []).append(_load())  # type: ignore[arg-type]
                goals_once(browser, root, times, dict(os.environ))
                print(f"round {rep} {root}: " + ", ".join(f"{k} {v[-1]}" if isinstance(v[-1], str) else
                                                          f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True)
        browser.close()
    return results


def print_goals(results: dict[str, dict[str, list[float]]]) -> None:
    roots = list(results)
    print("| action | goal (s) | " + " | ".join(f"{Path(r).name}: median (min–max), n" for r in roots) + " |")
    print("|---|---:|" + "---:|" * len(roots))
    for action in results[roots[0]]:
        if action.startswith("load"):
            continue
        cells = []
        for r in roots:
            ts = results[r].get(action, [])
            cells.append(f"{statistics.median(ts):.2f} ({min(ts):.2f}–{max(ts):.2f}), {len(ts)}" if ts else "–")
        goal = GOALS.get(action)
        print(f"| {action} | {'≤ ' + format(goal, 'g') if goal else ''} | " + " | ".join(cells) + " |")
    for r in roots:
        print(f"load averages at the start of each round ({Path(r).name}): {'; '.join(results[r]['load average (1/5/15 min) at start'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--empty-cache", action="store_true", help="start with an empty sparsekit disk cache")
    parser.add_argument("--out", help="also write the raw times as JSON")
    parser.add_argument("--gpt2", action="store_true",
                        help="time the GPT-2 small-size model (random weights, 124 M parameters) instead of MiniLM")
    parser.add_argument("--streamlit-arg", action="append", default=[],
                        help="extra option for streamlit run, e.g. --streamlit-arg=--runner.postScriptGC=false")
    parser.add_argument("--goals", action="store_true", help="time issue #24's latency goals (fresh servers)")
    parser.add_argument("--root", action="append", type=Path, default=[],
                        help="with --goals: a checkout to serve (repeatable; rounds alternate between them)")
    parser.add_argument("--warmup", action="store_true", help="with --goals: one unrecorded round per checkout first")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit("chromium is not installed: bash scripts/setup.sh --dev installs it")
    if args.goals:
        results = run_goals([r.resolve() for r in args.root] or [ROOT], args.repeats, args.warmup)
        print_goals(results)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        return
    captions: list[str] = []
    if args.gpt2:
        times, captions = run_gpt2(args.repeats)
    else:
        times = run(args.repeats, args.empty_cache, args.streamlit_arg)
    import torch

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| action | n | median (s) | min (s) | max (s) |")
    print("|---|---:|---:|---:|---:|")
    for action, ts in times.items():
        print(f"| {action} | {len(ts)} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")
    if SPLITS:
        print("\nServer side, medians (s): the page script's run(s) after the click, and within them the "
              "sparsify and the quality pass; 'outside' = click to idle minus the page script (websocket, "
              "browser, Streamlit's own work)")
        print("| action | click to idle | page script | sparsify | quality | page, other | outside |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for action, splits in SPLITS.items():
            med = {k: statistics.median(s[k] for s in splits) for k in ("page", "sparsify", "quality")}
            total = statistics.median(times[action])
            print(f"| {action} | {total:.2f} | {med['page']:.2f} | {med['sparsify']:.2f} | {med['quality']:.2f} | "
                  f"{med['page'] - med['sparsify'] - med['quality']:.2f} | {total - med['page']:.2f} |")
    for caption in captions:
        print(f"shown before: {caption}")
    if args.out:
        Path(args.out).write_text(json.dumps(times, indent=1))


if __name__ == "__main__":
    main()
