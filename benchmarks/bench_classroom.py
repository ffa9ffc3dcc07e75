"""One server for a classroom: many browser sessions on one app at once, in Chromium.

    python benchmarks/bench_classroom.py [--sessions 1 5 20] [--keep-cache] [--out results.json]

Starts the app as ``scripts/run_app.sh`` does (``scripts/serve.py``) on a free localhost port (stopped by
its pid at the end), opens N browser contexts of Debian's chromium at once (Playwright), and has each
student: open the app, pick a digits model (MLP, CNN, ViT in turn), open Sparsify and change N:M
(1:4, then back to 2:4 magnitude), open Masks and Attention; one student in five then runs Wanda on
MiniLM (each its own N:M, so the jobs queue rather than share one result). Heavy jobs go through the
server-wide queue (``ui.heavy``; ``SPARSEKIT_HEAVY_JOBS`` slots).

Reports per action the median and 95th percentile of click to idle page (as
``benchmarks/bench_browser.py`` measures it: Streamlit's script state back at ``notRunning`` after
the action's rerun, from the browser's own time stamps), the errors (an exception shown on the page, a
timeout, a session that lost its page), how many heavy jobs were shown "waiting: k jobs ahead", and
the server's memory (RSS of its pid, sampled every second). To tell the server's share from the
browsers' (which run on the same cores here, unlike a classroom's), it also reports the server's own
script time per page run (``SPARSEKIT_LOG_TIMINGS=1``: app.py's ``page <title> <s>`` lines, median and
95th percentile per page) and the CPU seconds the server and the Chromium processes used during the
run, with the load average before and after. The machine's load matters: quote the table with the
machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.served import served_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DIGITS = ("Digits MLP", "Digits CNN", "Digits ViT")
HEAVY_NM = ("2:4", "1:4", "4:8", "2:8", "1:2")
POLL_MS = 250
LOG = False
"""Print each action as it ends (``--verbose``)."""

_WATCH = """() => {
  if (window.__states) return;
  window.__states = [];
  const app = document.querySelector('[data-testid="stApp"]');
  new MutationObserver(() => window.__states.push([app.getAttribute('data-test-script-state'), performance.now()]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
_WAIT = """([seen, ms]) => new Promise(resolve => {
  const app = document.querySelector('[data-testid="stApp"]');
  const check = () => {
    const states = window.__states.slice(seen);
    const idle = app.getAttribute('data-test-script-state') === 'notRunning';
    const ran = states.some(s => s[0] !== 'notRunning');
    return [idle && ran && states[states.length - 1][0] === 'notRunning', states, idle];
  };
  const first = check();
  if (first[0]) return resolve(first);
  const obs = new MutationObserver(() => {
    const r = check();
    if (r[0]) { obs.disconnect(); clearTimeout(timer); resolve(r); }
  });
  obs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  const timer = setTimeout(() => { obs.disconnect(); resolve(check()); }, ms);
})"""
"""Waits in the page (no polling over the wire) until the script ran and is idle again, or ``ms``
passed: ``[done, states since seen, idle now]``. Polling from here instead (five protocol round
trips, two of them text searches of the whole page, every 250 ms in every session) cost the shared
cores CPU that a classroom's server never pays."""


def server_pid(parent: int | None = None) -> int | None:
    """The pid of the ``scripts/serve.py`` process this process started (from /proc)."""
    parent = os.getpid() if parent is None else parent
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and "serve.py" in cmd:
            return int(entry.name)
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads) so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chromium_pids(ancestor: int | None = None) -> list[int]:
    """The Chromium processes that descend from ``ancestor`` (default: this process; Playwright's
    driver starts the browser), not those of anything else on the machine."""
    ancestor = os.getpid() if ancestor is None else ancestor
    parent, chrome = {}, set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                if "chrom" in stat[stat.index("(") + 1:stat.rindex(")")]:
                    chrome.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue

    def descends(pid: int) -> bool:
        for _ in range(64):
            pid = parent.get(pid, 0)
            if pid == ancestor:
                return True
            if pid <= 1:
                return False
        return False

    return [p for p in chrome if descends(p)]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemorySampler:
    """RSS of one pid every ``every`` seconds in a thread: ``samples`` is ``[(seconds, MB)]``; also the
    CPU seconds that pid and the Chromium processes used since the start (``server_cpu``,
    ``browser_cpu``: each Chromium process's last reading, so one that ended early still counts)."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._cpu0 = cpu_seconds(pid) or 0.0
        self.server_cpu = 0.0
        self._browser: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()

    @property
    def browser_cpu(self) -> float:
        return sum(self._browser.values())

    def cpu_now(self) -> tuple[float, float]:
        """(server, browsers) CPU seconds since the start, read now."""
        self._sample_cpu()
        return self.server_cpu, self.browser_cpu

    def _run(self) -> None:
        while not self._stop.is_set():
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append((time.perf_counter() - self._start, mb))
            self._sample_cpu()
            self._stop.wait(self.every)

    def _sample_cpu(self) -> None:
        with self._lock:
            if (cpu := cpu_seconds(self.pid)) is not None:
                self.server_cpu = cpu - self._cpu0
            for p in chromium_pids():
                if (c := cpu_seconds(p)) is not None:
                    self._browser[p] = c

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample_cpu()


class Session:
    """One student's browser context, its timings and errors."""

    def __init__(self, index: int, page, timeout: float) -> None:
        self.index, self.page, self.timeout = index, page, timeout
        self.times: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.waited = False  # saw "waiting: k jobs ahead"
        self.cpu_clock = None  # () -> (server, browsers) CPU seconds so far; set for a lone session
        self.cpu: dict[str, list[tuple[float, float]]] = {}  # per action: (server, browsers) CPU seconds

    async def mark(self) -> tuple[float, int, float]:
        seen, browser_ms = await self.page.evaluate(
            f"() => {{ ({_WATCH})(); return [window.__states.length, performance.now()]; }}")
        return time.perf_counter(), seen, browser_ms

    async def wait_idle(self, start: tuple[float, int, float], expect=None, watch_waiting: bool = False) -> float:
        """Seconds from ``start`` to the idle page showing ``expect``: the browser's time stamp of the
        script state back at ``notRunning`` after a run (see bench_browser.wait_idle), or, when no run
        came within 2 s, the time the idle page was seen. ``watch_waiting``: look for "waiting: k jobs
        ahead" every ``POLL_MS`` meanwhile (a heavy job's wait)."""
        t0, seen, browser_start = start
        page = self.page
        deadline = time.perf_counter() + self.timeout
        while time.perf_counter() < deadline:
            step = POLL_MS * 2 if watch_waiting else 2000
            done, states, idle = await page.evaluate(_WAIT, [seen, step])
            if watch_waiting and not self.waited and await page.get_by_text("waiting:").count():
                self.waited = True
            now = time.perf_counter()
            ran = any(s != "notRunning" for s, _ in states)
            if idle and (done or (not ran and now - t0 > 2.0)):
                if expect is None or (await expect.count() > 0 and await expect.first.is_visible()):
                    return (states[-1][1] - browser_start) / 1000 if ran else now - t0
                await page.wait_for_timeout(POLL_MS)  # idle, but not showing it yet: another run comes
        raise TimeoutError("the page did not become idle")

    async def timed(self, name: str, action, expect=None, watch_waiting: bool = False) -> None:
        """Run ``action`` (a coroutine function) and record click to idle under ``name``; an exception
        or an exception box on the page counts as an error."""
        try:
            cpu0 = self.cpu_clock() if self.cpu_clock else None
            start = await self.mark()
            await action()
            self.times.setdefault(name, []).append(await self.wait_idle(start, expect, watch_waiting))
            if cpu0 is not None and self.cpu_clock:
                cpu1 = self.cpu_clock()
                self.cpu.setdefault(name, []).append((cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]))
            if LOG:
                print(f"session {self.index}: {name} {self.times[name][-1]:.2f} s", file=sys.stderr, flush=True)
            if await self.page.locator('[data-testid="stException"]').count():
                self.errors.append(f"{name}: an exception on the page")
        except Exception as err:  # noqa: BLE001 (every failure is counted, the others go on)
            self.errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            if LOG:
                print(f"session {self.index}: {self.errors[-1]}", file=sys.stderr, flush=True)

    async def open(self, url: str, expect) -> None:
        """Load the app: seconds from the request to the idle page showing ``expect``."""
        name = "open the app (Model page)"
        try:
            t0 = time.perf_counter()
            await self.page.goto(url)
            await self.page.wait_for_selector('[data-testid="stApp"]')
            await self.page.evaluate(_WATCH)
            await expect.first.wait_for()
            await self.page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
            self.times[name] = [time.perf_counter() - t0]
        except Exception as err:  # noqa: BLE001
            self.errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")

    async def pick(self, label: str, option: str, sidebar: bool = False, exact: bool = True) -> None:
        scope = self.page.locator('[data-testid="stSidebar"]' if sidebar else '[data-testid="stMain"]')
        await scope.locator('[data-testid="stSelectbox"]', has_text=label).first.click()
        await self.page.get_by_role("option", name=option, exact=exact).first.click()

    async def nav(self, name: str) -> None:
        await self.page.locator('[data-testid="stSidebarNavLink"]', has_text=name).first.click()
        await self.page.get_by_role("heading", name=name).first.wait_for()


async def student(s: Session, url: str, heavy: bool, barrier: asyncio.Barrier | None) -> None:
    page = s.page
    text = page.get_by_text
    await s.open(url, text("Prunable layers"))
    digits = DIGITS[s.index % len(DIGITS)]
    caption = page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text="digits")
    await s.timed("pick a digits model", lambda: s.pick("Source", digits, sidebar=True, exact=False), caption)
    await s.timed("open Sparsify (2:4 magnitude)", lambda: s.nav("Sparsify"), text("Per-layer report"))
    for nm in ("1:4", "2:4"):
        await s.timed("digits change (N:M)", lambda nm=nm: s.pick("N:M", nm), text("Per-layer report"))
    await s.timed("open Masks", lambda: s.nav("Masks"), text("Showing the masks of"))
    await s.timed("open Attention", lambda: s.nav("Attention"))
    if not heavy:
        return
    minilm = page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text="MiniLM")
    await s.timed("pick MiniLM", lambda: s.pick("Source", "MiniLM", sidebar=True, exact=False), minilm)
    await s.timed("open Sparsify (MiniLM)", lambda: s.nav("Sparsify"), text("Per-layer report"))
    await s.timed("pick Wanda", lambda: s.pick("Scoring", "wanda"))
    nm = HEAVY_NM[(s.index // 5 + s.index % 5) % len(HEAVY_NM)]  # each heavy student its own N:M
    if nm != "2:4":
        await s.timed("pick N:M (MiniLM)", lambda: s.pick("N:M", nm))
    if barrier is not None:
        await barrier.wait()  # the heavy jobs start together

    async def apply() -> None:
        button = page.get_by_role("button", name="Apply")
        if await button.count():
            await button.first.click()

    await s.timed("Wanda on MiniLM (Apply to idle)", apply, text("Per-layer report"), watch_waiting=True)


async def classroom(url: str, n: int, *, heavy: set[int] | None = None, together: bool = False,
                    timeout: float = 600.0, before_close=None, cpu_clock=None) -> list[Session]:
    """``n`` students at once on the app at ``url``; ``heavy``: which of them run Wanda on MiniLM (default
    every fifth); ``together``: those start their Wanda at the same moment; ``before_close()`` is called
    once every student is done, before the browser closes; ``cpu_clock()`` (server, browsers) CPU
    seconds so far: with one student, each action's CPU is recorded (``Session.cpu``)."""
    from playwright.async_api import async_playwright

    heavy = {i for i in range(n) if i % 5 == 0} if heavy is None else heavy
    barrier = asyncio.Barrier(len(heavy)) if together and len(heavy) > 1 else None
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        sessions = []
        for i in range(n):
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(timeout * 1000)
            sessions.append(Session(i, page, timeout))
            if n == 1:
                sessions[-1].cpu_clock = cpu_clock
        await asyncio.gather(*(student(s, url, s.index in heavy, barrier) for s in sessions))
        for s in sessions:  # a lost session: its page no longer shows the app with a model
            try:
                if not await s.page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]').count():
                    s.errors.append("lost session: no model caption in the sidebar at the end")
            except Exception as err:  # noqa: BLE001
                s.errors.append(f"lost session: {type(err).__name__}")
        if before_close is not None:
            before_close()
        await browser.close()
    return sessions


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(counts: list[int], keep_cache: bool, timeout: float) -> dict:
    results: dict = {}
    for n in counts:
        tmp = tempfile.mkdtemp(prefix="sparsekit-classroom-")
        env = dict(os.environ, SPARSEKIT_LOG_TIMINGS="1")
        if not keep_cache:
            env["SPARSEKIT_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            log = Path(tmp) / "streamlit.log"
            with served_app(("scripts/serve.py",), env=env, log_path=log, timeout=300) as url:
                pid = server_pid()
                if pid is None:
                    raise RuntimeError("could not find the server's pid")
                start, load_before = time.perf_counter(), os.getloadavg()
                with MemorySampler(pid) as memory:
                    sessions = asyncio.run(classroom(url, n, timeout=timeout, before_close=memory._sample_cpu,
                                                     cpu_clock=memory.cpu_now))
                wall = time.perf_counter() - start
                results[n] = {
                    "wall_s": wall,
                    "load": [load_before, os.getloadavg()],
                    "server_cpu_s": memory.server_cpu,
                    "browser_cpu_s": memory.browser_cpu,
                    "page_runs": page_runs(log.read_text(errors="replace")),
                    "cpu_per_action": _merge(s.cpu for s in sessions),
                    "times": _merge(s.times for s in sessions),
                    "errors": [f"session {s.index}: {e}" for s in sessions for e in s.errors],
                    "waited": sum(s.waited for s in sessions),
                    "heavy": sum(1 for s in sessions if s.index % 5 == 0),
                    "memory_mb": memory.samples,
                }
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def page_runs(log: str) -> dict[str, list[float]]:
    """Server-side seconds of each page run, by page title, from the ``sparsekit.timing page`` lines."""
    runs: dict[str, list[float]] = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["sparsekit.timing", "page"] and parts[-1] == "s":
            try:
                runs.setdefault(" ".join(parts[2:-2]), []).append(float(parts[-2]))
            except ValueError:
                continue
    return runs


def _merge(parts) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def print_table(results: dict) -> None:
    import torch

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"SPARSEKIT_HEAVY_JOBS={os.environ.get('SPARSEKIT_HEAVY_JOBS', 'default')}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| sessions | action | n | p50 (s) | p95 (s) | max (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, r in results.items():
        for action, ts in r["times"].items():
            print(f"| {n} | {action} | {len(ts)} | {statistics.median(ts):.2f} | {percentile(ts, 0.95):.2f} | "
                  f"{max(ts):.2f} |")
    print("\n| sessions | wall (s) | errors | heavy jobs shown waiting | server RSS start / peak / end (MB) "
          "| CPU s: server / browsers | load avg before / after |")
    print("|---:|---:|---:|---:|---|---|---|")
    for n, r in results.items():
        mem = [mb for _, mb in r["memory_mb"]] or [0.0]
        load = " / ".join(f"{a[0]:.1f}" for a in r["load"])
        print(f"| {n} | {r['wall_s']:.0f} | {len(r['errors'])} | {r['waited']} of {r['heavy']} | "
              f"{mem[0]:.0f} / {max(mem):.0f} / {mem[-1]:.0f} | {r['server_cpu_s']:.0f} / {r['browser_cpu_s']:.0f} "
              f"| {load} |")
    print("\nServer-side script time per page run (app.py's timing; a run that a newer click interrupted "
          "counts too):\n")
    print("| sessions | page | runs | p50 (s) | p95 (s) | max (s) | sum (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        for page, ts in sorted(r["page_runs"].items()):
            print(f"| {n} | {page} | {len(ts)} | {statistics.median(ts):.2f} | {percentile(ts, 0.95):.2f} | "
                  f"{max(ts):.2f} | {sum(ts):.0f} |")
    for n, r in results.items():
        if r.get("cpu_per_action"):
            print(f"\nCPU seconds per action, {n} session (server / browsers, summed over its repeats):\n")
            print("| action | server CPU (s) | browser CPU (s) |")
            print("|---|---:|---:|")
            for action, pairs in r["cpu_per_action"].items():
                print(f"| {action} | {sum(a for a, _ in pairs):.2f} | {sum(b for _, b in pairs):.2f} |")
    for n, r in results.items():
        samples = r["memory_mb"]
        step = max(1, len(samples) // 10)
        trace = ", ".join(f"{t:.0f} s: {mb:.0f}" for t, mb in samples[::step])
        print(f"\nserver RSS over time, {n} sessions (MB): {trace}")
        for e in r["errors"]:
            print(f"error ({n} sessions): {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--keep-cache", action="store_true",
                        help="use the usual sparsekit disk cache (default: an empty one per server)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one action may take")
    parser.add_argument("--out", help="also write the raw results as JSON")
    parser.add_argument("--verbose", action="store_true", help="print each action as it ends")
    args = parser.parse_args()
    global LOG
    LOG = args.verbose
    if not os.path.exists(CHROMIUM):
        sys.exit("chromium is not installed: bash scripts/setup.sh --dev installs it")
    if any(n < 1 for n in args.sessions):
        sys.exit(f"--sessions must be at least 1, got {args.sessions}")
    results = run(args.sessions, args.keep_cache, args.timeout)
    print_table(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
