"""A classroom in miniature (mechanics only, no timing asserted): three browser contexts on one served
app pick a digits model, change 2:4 magnitude, open Masks and Attention; two of them start Wanda on
MiniLM at the same moment, and the server-wide heavy-job queue (one slot) shows the second one
"waiting: 1 job ahead". No session sees an error or loses its page.

Drives Debian's chromium through Playwright (``benchmarks/bench_classroom.py`` does the same at 1, 5
and 20 sessions and times it)."""
import asyncio
import os
import sys
from pathlib import Path

import pytest

from devtools.served import served_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_classroom import CHROMIUM, classroom  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_three_sessions_share_one_server_and_heavy_jobs_queue(tmp_path):
    pytest.importorskip("playwright.async_api")
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: scripts/setup.sh --dev installs it")
        pytest.skip("chromium is not installed")
    # An empty disk cache: the two Wanda results are computed, not read back.
    env = dict(os.environ, SPARSEKIT_CACHE_DIR=str(tmp_path / "cache"), SPARSEKIT_HEAVY_JOBS="1")
    with served_app(("scripts/serve.py",), env=env, log_path=tmp_path / "streamlit.log", timeout=300) as url:
        sessions = asyncio.run(classroom(url, 3, heavy={0, 1}, together=True, timeout=300))
    errors = [f"session {s.index}: {e}" for s in sessions for e in s.errors]
    assert errors == [], (tmp_path / "streamlit.log").read_text()[-3000:]
    for s in sessions:
        assert len(s.times["digits change (N:M)"]) == 2
        assert "open Attention" in s.times and "open Masks" in s.times
    assert sum("Wanda on MiniLM (Apply to idle)" in s.times for s in sessions) == 2
    assert any(s.waited for s in sessions[:2]), "neither heavy job was shown waiting in the queue"
