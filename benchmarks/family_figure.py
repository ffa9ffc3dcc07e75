"""The equal-cost figure as PNG for the README (issue #26 item 4): ``viz.family_cost_figure`` of every family of
structure on one x axis, rendered by Debian's headless chromium (no kaleido, no network).

    python benchmarks/family_figure.py                             # digits:vit and lm:small (a few minutes)
    python benchmarks/family_figure.py --models digits:vit --json /tmp/points.json
    python benchmarks/family_figure.py --points /tmp/points.json   # draw earlier points again, measure nothing

The points are ``benchmarks/family_table.py``'s (its ``SETTINGS`` and quality functions, imported, so a family or
setting added there or to ``family_points`` appears here by rerunning) and the table it prints is the same.
For each model it writes ``families_<model>.png`` (quality against kept parameters of the whole model) and
``families_<model>_bytes.png`` (against stored bytes in each family's format) into ``--out-dir``
(default ``docs/figures``). Each figure goes through ``to_html`` with plotly.js inline into a temporary folder
and chromium's ``--screenshot``; a PNG over ``MAX_PNG_BYTES`` is reduced to a 256-colour palette.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from family_table import SETTINGS, figure_metric, measure_points, print_table  # noqa: E402

import torch  # noqa: E402

from sparsekit.structured.equal_cost import FamilyPoints, FamilyRow  # noqa: E402
from sparsekit.viz import family_cost_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1000, 550
"""Pixel size of each PNG (and of the figure's layout)."""
MAX_PNG_BYTES = 150_000
VIEWS = {"params": "", "bytes": "_bytes"}
"""x view -> file-name suffix."""
METRIC_LABELS = {"accuracy": "held-out accuracy (%)", "heldout ppl": "held-out perplexity"}
NO_CHROMIUM = ("chromium is not installed (looked for `chromium` and `chromium-browser` on PATH): the PNGs need "
               "Debian's headless chromium (apt-get install chromium; bash scripts/setup.sh --dev installs it). "
               "benchmarks/family_table.py --html writes the same figures as interactive HTML without it.")


class RenderError(RuntimeError):
    """Chromium is missing, failed, or wrote no screenshot."""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page(fig: Any, width: int, height: int) -> str:
    """A full HTML page holding only the figure at ``width`` x ``height`` px, plotly.js inline, no margins."""
    sized = type(fig)(fig).update_layout(width=width, height=height, autosize=False)
    div = sized.to_html(include_plotlyjs=True, full_html=False, config={"staticPlot": True, "displayModeBar": False})
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><style>html,body{margin:0;padding:0;"
            f"background:white;overflow:hidden}}</style></head><body>{div}</body></html>")


def render_png(fig: Any, path: str | Path, *, width: int = WIDTH, height: int = HEIGHT, chromium: str | None = None,
               budget_ms: int = 15_000, timeout_s: float = 180.0) -> Path:
    """Write ``fig`` (a plotly figure) as a ``width`` x ``height`` PNG at ``path`` with headless chromium.

    ``budget_ms`` is chromium's virtual time for the page (plotly draws well within it); the process group is
    killed after ``timeout_s``. Raises ``RenderError`` when chromium is missing or writes no image."""
    exe = chromium or find_chromium()
    if exe is None:
        raise RenderError(NO_CHROMIUM)
    if width < 100 or height < 100:
        raise ValueError(f"width and height must be at least 100 px, got {width} x {height}")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="sparsekit-figure-") as tmp:
        html, shot = Path(tmp) / "figure.html", Path(tmp) / "shot.png"
        html.write_text(page(fig, width, height), encoding="utf-8")
        cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--mute-audio",
               "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}", "--force-device-scale-factor=1",
               f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", f"--screenshot={shot}",
               html.as_uri()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the chromium started here, nothing else
            proc.communicate()
            raise RenderError(f"chromium did not finish within {timeout_s:.0f} s ({exe})") from None
        if not shot.is_file() or shot.stat().st_size == 0:
            tail = "\n".join(err.decode(errors="replace").strip().splitlines()[-5:])
            raise RenderError(f"chromium ({exe}) wrote no screenshot (exit {proc.returncode}):\n{tail}")
        path.parent.mkdir(parents=True, exist_ok=True)
        compact_png(shot, path)
    return path


def compact_png(src: Path, dest: Path, limit: int = MAX_PNG_BYTES) -> None:
    """Copy the screenshot, re-encoded with optimisation; as a 256-colour palette if it is still over ``limit``."""
    from PIL import Image

    with Image.open(src) as image:
        rgb = image.convert("RGB")
    rgb.save(dest, optimize=True)
    if dest.stat().st_size > limit:
        rgb.quantize(colors=256).save(dest, optimize=True)


def figures(points: FamilyPoints) -> dict[str, Any]:
    """view -> ``family_cost_figure`` of the table's metric, titled with the model."""
    metric, higher, log_y = figure_metric(points)
    out = {}
    for view in VIEWS:
        fig = family_cost_figure(points, metric, x=view, metric_label=METRIC_LABELS.get(metric),
                                 higher_is_better=higher, log_y=log_y)
        fig.layout.title.text = f"{points.model}: {fig.layout.title.text}"
        out[view] = fig
    return out


def points_json(points: list[FamilyPoints]) -> dict[str, object]:
    return {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "models": [{"model": p.model, "rows": [asdict(r) for r in p.rows],
                        "skipped": [list(s) for s in p.skipped]} for p in points]}


def load_points(path: str) -> list[FamilyPoints]:
    """``--json``'s file back as ``FamilyPoints``; a file of another shape raises ``ValueError`` naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return [FamilyPoints(m["model"], [FamilyRow(**r) for r in m["rows"]],
                             [(str(f), str(s), str(why)) for f, s, why in m["skipped"]]) for m in data["models"]]
    except OSError as e:
        raise ValueError(f"--points {path}: cannot read it ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--points {path}: not a file written by --json ({type(e).__name__}: {e})") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), help=f"any of {', '.join(SETTINGS)}")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "figures"), help="where the PNGs go")
    parser.add_argument("--json", help="also write the measured points (rows and skipped families) here")
    parser.add_argument("--points", help="draw the points of an earlier --json file instead of measuring")
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in SETTINGS]
    if unknown:
        parser.error(f"--models: unknown model {', '.join(map(repr, unknown))}; this script draws "
                     f"{', '.join(SETTINGS)} (the settings of benchmarks/family_table.py)")
    if args.points:
        try:
            all_points = [p for p in load_points(args.points) if p.model in args.models]
        except ValueError as e:
            parser.error(str(e))
        if not all_points:
            parser.error(f"--points {args.points} holds none of {', '.join(args.models)}")
    chromium = find_chromium()
    if chromium is None:
        sys.exit(f"error: {NO_CHROMIUM}")
    if not args.points:
        torch.set_num_threads(args.threads)
        all_points = []
        for spec in args.models:
            t0 = time.time()
            all_points.append(measure_points(spec))
            print_table(spec, all_points[-1], time.time() - t0)
        if args.json:
            Path(args.json).write_text(json.dumps(points_json(all_points), indent=1), encoding="utf-8")
            print(f"\npoints: {args.json}")
    for points in all_points:
        for view, fig in figures(points).items():
            if view not in args.views:
                continue
            out = Path(args.out_dir) / f"families_{points.model.replace(':', '_')}{VIEWS[view]}.png"
            render_png(fig, out, chromium=chromium)
            print(f"{out} ({out.stat().st_size / 1000:.0f} kB)")


if __name__ == "__main__":
    main()
