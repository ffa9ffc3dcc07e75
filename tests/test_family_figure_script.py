"""benchmarks/family_figure.py: the equal-cost figure rendered to PNG by headless chromium (no kaleido), its
``--points`` round trip and its messages for bad input; and the figure's static-picture details (setting labels
kept apart, full log ticks)."""
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import family_figure as ff  # noqa: E402

from sparsekit.structured.equal_cost import FamilyPoints, FamilyRow  # noqa: E402
from sparsekit.viz import FAMILY_COLORS, family_cost_figure  # noqa: E402

needs_chromium = pytest.mark.skipif(ff.find_chromium() is None,
                                    reason="chromium is not installed (bash scripts/setup.sh --dev installs it)")


def row(family, setting, kept, acc, dense=1000):
    return FamilyRow(family, setting, kept, dense, 4 * kept + (kept // 8 if family in ("unstructured", "N:M") else 0),
                     {"accuracy": acc}, detail=f"{family} {setting}")


def tiny_points(model="digits:vit"):
    rows = [row("dense", "dense", 1000, 97.0), row("unstructured", "50%", 520, 84.0),
            row("unstructured", "70%", 330, 52.0), row("N:M", "2:4", 520, 76.0), row("N:M", "1:4", 280, 10.0)]
    return FamilyPoints(model, rows, [("SliceGPT", "all", "not here"), ("Monarch", "4 blocks", "fits no layer")])


def pixels_near(image, hex_color, tol=40):
    want = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return sum(count for count, px in image.getcolors(image.width * image.height)
               if all(abs(a - b) <= tol for a, b in zip(px, want)))


@needs_chromium
def test_render_png_draws_the_figure(tmp_path):
    fig = family_cost_figure(tiny_points(), "accuracy")
    out = ff.render_png(fig, tmp_path / "sub" / "tiny.png", width=640, height=360)
    assert out == tmp_path / "sub" / "tiny.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 3_000 < len(data) < ff.MAX_PNG_BYTES
    with Image.open(out) as image:
        assert image.size == (640, 360)
        rgb = image.convert("RGB")
    # The traces were drawn in their family colours; a family with no rows (Monarch) has none of its colour.
    assert pixels_near(rgb, FAMILY_COLORS["unstructured"]) > 30
    assert pixels_near(rgb, FAMILY_COLORS["N:M"]) > 30
    assert pixels_near(rgb, FAMILY_COLORS["Monarch"]) == 0
    assert pixels_near(rgb, "#ffffff", tol=0) > 640 * 360 // 10  # white paper around the plot, not a blank page
    assert len(rgb.getcolors(640 * 360)) > 50


@needs_chromium
def test_points_round_trip_and_main_writes_both_views(tmp_path, capsys):
    points = tiny_points()
    saved = tmp_path / "points.json"
    saved.write_text(json.dumps(ff.points_json([points, tiny_points("lm:small")])))
    again = ff.load_points(str(saved))
    assert [p.model for p in again] == ["digits:vit", "lm:small"]
    assert again[0].rows == points.rows and again[0].skipped == points.skipped
    ff.main(["--points", str(saved), "--models", "digits:vit", "--out-dir", str(tmp_path / "figs")])
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == ["families_digits_vit.png", "families_digits_vit_bytes.png"]  # lm:small not asked for
    for name in written:
        with Image.open(tmp_path / "figs" / name) as image:
            assert image.size == (ff.WIDTH, ff.HEIGHT)
        assert (tmp_path / "figs" / name).stat().st_size < ff.MAX_PNG_BYTES
    assert "families_digits_vit_bytes.png" in capsys.readouterr().out


def test_figures_title_the_model_and_label_the_metric():
    figs = ff.figures(tiny_points())
    assert set(figs) == {"params", "bytes"}
    for view, fig in figs.items():
        assert fig.layout.title.text.startswith("digits:vit: held-out accuracy (%) vs ")
        assert "SliceGPT" in fig.layout.title.text and "Monarch 4 blocks" in fig.layout.title.text
        assert fig.layout.yaxis.title.text == "held-out accuracy (%) (higher is better)"
        assert ("MB" in fig.layout.xaxis.title.text) == (view == "bytes")


def test_bad_models_and_bad_points_get_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        ff.main(["--models", "digits:vit", "digits:nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'digits:nope'" in err and all(m in err.split("draws")[-1] for m in ("lm:small", "digits:vit"))
    bad = tmp_path / "bad.json"
    for text, message in (("not json", "not a file written by --json"), ('{"rows": []}', "not a file written"),
                          ('{"models": [{"model": "x", "rows": [{"family": 1}], "skipped": []}]}', "TypeError")):
        bad.write_text(text)
        with pytest.raises(SystemExit) as info:
            ff.main(["--points", str(bad)])
        assert info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ff.main(["--points", str(tmp_path / "missing.json")])
    assert "cannot read it" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ff.points_json([tiny_points("lm:small")])))
    with pytest.raises(SystemExit):
        ff.main(["--points", str(good), "--models", "digits:vit"])
    assert "holds none of digits:vit" in capsys.readouterr().err


def test_missing_chromium_is_said_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr(ff.shutil, "which", lambda name: None)
    with pytest.raises(ff.RenderError, match="chromium is not installed"):
        ff.render_png(family_cost_figure(tiny_points(), "accuracy"), tmp_path / "x.png")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ff.points_json([tiny_points()])))
    with pytest.raises(SystemExit) as info:
        ff.main(["--points", str(good), "--out-dir", str(tmp_path)])
    assert "chromium is not installed" in str(info.value.code) and not (tmp_path / "families_digits_vit.png").exists()
    with pytest.raises(ValueError, match="at least 100 px"):
        ff.render_png(family_cost_figure(tiny_points(), "accuracy"), tmp_path / "x.png", width=50, chromium="/bin/true")


def test_compact_png_falls_back_to_a_palette(tmp_path):
    src = tmp_path / "src.png"
    Image.new("RGB", (60, 40), (217, 95, 2)).save(src)
    ff.compact_png(src, tmp_path / "rgb.png")
    ff.compact_png(src, tmp_path / "pal.png", limit=1)
    with Image.open(tmp_path / "rgb.png") as a, Image.open(tmp_path / "pal.png") as b:
        assert a.mode == "RGB" and b.mode == "P"
        assert a.size == b.size == (60, 40) and b.convert("RGB").getpixel((5, 5)) == (217, 95, 2)


def test_labels_at_the_same_point_are_kept_apart_and_log_ticks_are_full():
    # unstructured 50% and 2:4 keep the same count at nearly the same quality: "top center" twice would overprint.
    rows = [row("dense", "dense", 1000, 145.0), row("unstructured", "50%", 710, 146.0),
            row("unstructured", "90%", 480, 330.0), row("N:M", "2:4", 710, 147.0), row("N:M", "1:4", 560, 190.0),
            row("Monarch", "16 blocks", 520, 1320.0)]
    fig = family_cost_figure(rows, "accuracy", higher_is_better=False, log_y=True)
    where = {(t.meta, s): p for t in fig.data for s, p in zip(t.text, t.textposition)}
    assert where[("unstructured", "50%")] != where[("N:M", "2:4")]
    assert all(p in {"top", "bottom", "middle"} for p in {w.split()[0] for w in where.values()})
    # 1-2-5 ticks from 145 to 1320 (within a factor 1.6 of the ends): 100 200 500 1000 2000, written in full.
    assert list(fig.layout.yaxis.tickvals) == pytest.approx([100, 200, 500, 1000, 2000])
    assert list(fig.layout.yaxis.ticktext) == ["100", "200", "500", "1000", "2000"]
    assert family_cost_figure(rows, "accuracy").layout.yaxis.tickvals is None  # linear axis: plotly's own ticks
