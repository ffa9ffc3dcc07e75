"""The Benchmarks page runs the KV-cache decode suite at a tiny size and shows its verdict; bad settings are named."""
import pytest

from devtools.apptest import page_app

SMALL = "4 heads × 32 (lm:small)"


@pytest.fixture
def page(tmp_cache):
    at = page_app("benchmarks", "digits:mlp", 300)
    at.run()
    assert not at.exception, at.exception
    at.multiselect(key="bench_suites").set_value(["kv"]).run()
    assert not at.exception, at.exception
    return at


def test_kv_suite_runs_on_the_page_and_shows_a_verdict(page):
    at = page
    assert any("One decode step" in c.value for c in at.caption)  # what is timed, said beside the settings
    at.multiselect(key="bench_kv_lens").set_value([64, 256])
    at.multiselect(key="bench_kv_shapes").set_value([SMALL])
    at.multiselect(key="bench_kv_sparsities").set_value([0.5])
    at.number_input(key="bench_repeats").set_value(3)
    at.button(key="bench_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("KV-cache decode: verdict per case" in h.value for h in at.subheader)
    verdicts = next(df.value for df in at.dataframe if "verdict" in df.value.columns)
    assert list(verdicts["tokens"]) == [64, 64, 256, 256]
    assert set(verdicts["backend"]) == {"masked dense", "CSR"}
    assert set(verdicts["verdict"]) <= {"faster", "slower", "no clear difference"}
    assert (verdicts["dense MiB"] > verdicts["bitmap MiB"]).all()
    assert any("CSR: faster than dense SDPA in" in m.value for m in at.markdown)
    table = at.dataframe[-1].value  # every case
    assert set(table["suite"]) == {"kv"}
    assert set(table["backend"]) == {"SDPA dense", "CSR batched (bmm)", "masked dense", "CSR"}
    ok = table[table["status"] == "ok"]
    assert (ok["rel_error"] < 1e-5).all()


def test_bad_kv_settings_are_named(page):
    at = page
    at.multiselect(key="bench_kv_lens").set_value([])
    at.button(key="bench_run").click().run()
    assert any("at least one cache length" in e.value for e in at.error)
    at.multiselect(key="bench_kv_lens").set_value([64])
    at.number_input(key="bench_kv_window").set_value(128).run()
    assert any("L=64 is shorter than the dense window of 128" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not at.exception
