"""Process-level defaults: sparsekit makes OpenMP workers sleep at barriers unless the user chose
otherwise, and the app's timing log reports each sparsify and quality pass it runs."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _policy_after_import(env_value: str | None, torch_first: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    code = ("import torch; " if torch_first else "") + "import os, sparsekit; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_sets_passive_wait_policy_by_default():
    assert _policy_after_import(None) == "PASSIVE"
    assert _policy_after_import(None, torch_first=True) == "PASSIVE"  # numba's own runtime loads later


def test_a_policy_the_user_set_is_kept():
    assert _policy_after_import("ACTIVE") == "ACTIVE"


def test_timing_log_names_each_sparsify_and_quality_pass(tmp_cache, caplog):
    from ui.cached import model_quality as _quality
    from ui.state import _results

    _results.clear()  # other tests in this process may have computed the default setting already
    _quality.clear()
    at = AppTest.from_file("../app.py", default_timeout=120)
    with caplog.at_level(logging.INFO, logger="sparsekit.timing"):
        at.run()
        at.selectbox(key="model_source").set_value("digits:mlp").run()
        at.switch_page("views/sparsify.py")
        at.run()
    assert not at.exception
    lines = [r.getMessage() for r in caplog.records if r.name == "sparsekit.timing"]
    assert any(line.startswith("sparsify ") and line.endswith(" s") for line in lines), lines
    assert any(line.startswith("quality ") for line in lines), lines
    assert any(line.startswith("page Sparsify ") for line in lines), lines
    seconds = [float(line.split()[-2]) for line in lines]
    assert all(s >= 0 for s in seconds)
