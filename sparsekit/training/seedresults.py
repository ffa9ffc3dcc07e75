"""A seed study's numbers: the metrics of one training run (``SeedRun``, ``run_metrics``) and what is
computed over the seeds (per-method intervals, paired SR-STE − STE differences, the λ_w sweep,
CSV/JSON/Markdown). The runs themselves are made by ``sparsekit.training.seedstudy``."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, fields

import numpy as np

from .. import serial
from ..display import Card, Shown
from ..models.digits import ARCH_LABELS
from ..stats import Interval, PairedDifference, describe_difference, mean_interval, paired_difference
from ..store import finite_json
from .records import RunRecord
from .seedconfig import SeedStudyConfig

STUDY_VERSION = 1
"""Part of every cached run's key: bump when a metric's definition changes."""

METRICS = {
    "late_sad_pct": ("late SAD", "% of sparse weights", "summed interval SAD over the second half of training"),
    "accuracy": ("final accuracy", "%", "held-out digits accuracy after the last epoch"),
    "late_flipped_pct": ("late flips", "% of sparse weights", "weights whose keep bit changed at least once in "
                         "the second half"),
    "early_sad_pct": ("early SAD", "% of sparse weights", "summed interval SAD over the first half of training"),
}
"""metric -> (name, unit, definition)."""
LOWER_IS_BETTER = {"late_sad_pct": True, "accuracy": False, "late_flipped_pct": True, "early_sad_pct": True}


@dataclass(frozen=True)
class SeedRun:
    """The numbers of one training run of a study."""

    method: str
    """``ste`` or ``srste``."""
    n: int
    m: int
    lambda_w: float
    """SR-STE's decay (0 for STE)."""
    seed: int
    accuracy: float
    """Held-out accuracy after the last epoch, %."""
    late_sad_pct: float
    """Interval SAD summed over the epochs of the second half, % of the sparse weights."""
    early_sad_pct: float
    """Interval SAD summed over the epochs of the first half, % of the sparse weights."""
    late_flipped_pct: float
    """Sparse weights whose keep bit changed at least once in the second half, %."""
    sparse_weights: int
    """Weights in the sparse layers."""
    seconds: float
    """Wall time of the training run (where it was computed)."""


def run_metrics(record: RunRecord) -> SeedRun:
    """A study's numbers from a finished training run (epoch snapshots, 0..E).

    Args:
        record: a ``RunRecord`` with one mask snapshot per epoch.

    Returns:
        The ``SeedRun``.
    """
    cfg = record.config
    hist = record.history
    epochs = len(hist) - 1
    if record.status != "complete" or epochs < 2:
        raise ValueError(f"run {record.label!r} is {record.status} with {epochs} epoch snapshot(s); a study needs "
                         "complete runs of at least 2 epochs")
    accuracy = record.final_accuracy
    if accuracy is None:
        raise ValueError(f"run {record.label!r} has no evaluation; a study needs its final accuracy")
    half = epochs // 2
    iv = record.sad().series("interval", fraction=True)
    total = sum(hist.numel(layer) for layer in hist.layers)
    flipped = 0
    for layer in hist.layers:
        blobs = hist.packed[layer]
        changed = np.zeros(len(blobs[0]), dtype=np.uint8)
        for prev, cur in zip(blobs[half:], blobs[half + 1:]):
            changed |= np.bitwise_xor(np.frombuffer(prev, np.uint8), np.frombuffer(cur, np.uint8))
        flipped += int(np.unpackbits(changed, count=hist.numel(layer)).sum())
    return SeedRun(
        method=cfg.method, n=cfg.n, m=cfg.m, lambda_w=cfg.lambda_w if cfg.method == "srste" else 0.0,
        seed=cfg.seed, accuracy=float(accuracy), late_sad_pct=100.0 * float(iv[half + 1:].sum()),
        early_sad_pct=100.0 * float(iv[1:half + 1].sum()), late_flipped_pct=100.0 * flipped / total,
        sparse_weights=int(total), seconds=float(record.seconds),
    )


@dataclass(frozen=True)
class SummaryRow:
    """One method at one pattern (and λ_w) over the seeds."""

    n: int
    m: int
    method: str
    lambda_w: float
    metrics: dict[str, Interval]

    @property
    def label(self) -> str:
        return "STE" if self.method == "ste" else f"SR-STE λ={self.lambda_w:g}"


@dataclass(frozen=True)
class Comparison:
    """SR-STE − STE at one pattern for one metric, paired by seed."""

    n: int
    m: int
    metric: str
    paired: PairedDifference
    sentence: str


@dataclass(repr=False)
class SeedStudyResult(Shown):
    """The runs of a study and everything computed from them."""

    config: SeedStudyConfig
    runs: list[SeedRun] = field(default_factory=list)
    computed: int = 0
    """Runs trained in this call (the rest came from the cache)."""
    complete: bool = True
    """False when the study was stopped before its last run."""

    FIGURE = "seed_study_figure"
    _CARD_METRICS = ("late_sad_pct", "accuracy", "late_flipped_pct")

    def summary_card(self) -> Card:
        """Per pattern: STE and SR-STE as mean [interval] over the seeds, then SR-STE − STE paired by seed."""
        cfg = self.config
        head = {"runs": f"{len(self.runs)} of {len(cfg.run_configs())}" + ("" if self.complete else " (stopped)"),
                "trained now": str(self.computed)}
        diffs = {(c.n, c.m, c.metric): c.paired for c in self.comparisons()}
        for n, m in cfg.patterns:
            pd = diffs[(n, m, "late_sad_pct")]
            head[f"{n}:{m} late SAD, SR-STE − STE"] = f"{pd.diff.text()} pp (SR-STE lower in {pd.a_lower} of {pd.n})"
        rows: list[dict[str, str]] = []
        for row in self.summary():
            rows.append({"N:M": f"{row.n}:{row.m}", "run": row.label, "seeds": str(row.metrics["accuracy"].n),
                         **{f"{METRICS[k][0]} %": row.metrics[k].text() for k in self._CARD_METRICS}})
            if row.method == "srste":
                rows.append({"N:M": f"{row.n}:{row.m}", "run": "SR-STE − STE", "seeds": str(diffs[(row.n, row.m,
                             "accuracy")].n), **{f"{METRICS[k][0]} %": diffs[(row.n, row.m, k)].diff.text()
                                                 for k in self._CARD_METRICS}})
        arch = ARCH_LABELS[cfg.train.arch]
        return Card(f"SeedStudyResult ({arch}, {cfg.train.epochs} epochs, K = {cfg.seeds} seeds)",
                    head, rows, f"mean [{cfg.confidence:.0%} t-interval] over seeds; differences paired by seed; SAD "
                    "and flips in % of the sparse weights.")

    def values(self, method: str, n: int, m: int, lam: float, metric: str) -> dict[int, float]:
        """seed -> value of one metric for one cell (λ is ignored for STE)."""
        out = {}
        for r in self.runs:
            if r.method == method and (r.n, r.m) == (n, m) and (method == "ste" or r.lambda_w == lam):
                out[r.seed] = getattr(r, metric)
        return dict(sorted(out.items()))

    def summary(self) -> list[SummaryRow]:
        """STE and SR-STE (main λ_w) per pattern: mean and interval of every metric."""
        rows = []
        for n, m in self.config.patterns:
            for method, lam in (("ste", 0.0), ("srste", self.config.lambda_w)):
                rows.append(self._row(n, m, method, lam))
        return rows

    def _row(self, n: int, m: int, method: str, lam: float) -> SummaryRow:
        return SummaryRow(n, m, method, lam, {
            k: mean_interval(list(self.values(method, n, m, lam, k).values()), self.config.confidence)
            for k in METRICS})

    def comparisons(self) -> list[Comparison]:
        """SR-STE − STE per pattern and metric, over the seeds where both runs exist."""
        out = []
        for n, m in self.config.patterns:
            for metric, (name, unit, _) in METRICS.items():
                ste = self.values("ste", n, m, 0.0, metric)
                sr = self.values("srste", n, m, self.config.lambda_w, metric)
                seeds = [s for s in ste if s in sr]
                pd = paired_difference([sr[s] for s in seeds], [ste[s] for s in seeds], self.config.confidence)
                unit_text = " pp" if unit.startswith("%") else ""
                sentence = describe_difference(pd, f"{n}:{m} {name}", "SR-STE", "STE", unit_text)
                out.append(Comparison(n, m, metric, pd, sentence))
        return out

    def lambda_rows(self) -> list[SummaryRow]:
        """The λ_w sweep at the first pattern (λ_w = 0 is the STE run), in increasing λ_w."""
        if not self.config.lambda_sweep:
            return []
        n, m = self.config.patterns[0]
        return [self._row(n, m, "ste" if lam == 0 else "srste", lam) for lam in sorted(self.config.lambda_sweep)]

    def runs_csv(self) -> str:
        """Every run's numbers, one row each."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(SeedRun)])
        writer.writeheader()
        for r in self.runs:
            writer.writerow(serial.to_json(r))
        return buf.getvalue()

    def to_json(self) -> str:
        """Config, runs, summaries and comparisons as one JSON document."""
        def interval_dict(row: SummaryRow) -> dict:
            return {"n": row.n, "m": row.m, "method": row.method, "lambda_w": row.lambda_w,
                    **{k: finite_json(v.as_dict()) for k, v in row.metrics.items()}}

        return json.dumps({
            "format": "sparsekit-seed-study", "version": STUDY_VERSION,
            "config": json.loads(self.config.to_json()), "complete": self.complete,
            "runs": [serial.to_json(r) for r in self.runs],
            "summary": [interval_dict(r) for r in self.summary()],
            "lambda_sweep": [interval_dict(r) for r in self.lambda_rows()],
            "comparisons": [{"n": c.n, "m": c.m, "metric": c.metric, "srste_lower": c.paired.a_lower,
                             "ties": c.paired.ties, **finite_json(c.paired.diff.as_dict()), "sentence": c.sentence}
                            for c in self.comparisons()],
        }, indent=1)

    def markdown(self) -> str:
        """Tables for a README: per method, paired differences, λ_w sweep."""
        cfg = self.config
        t = cfg.train
        pct = f"{cfg.confidence:.0%}"
        lines = [f"{ARCH_LABELS[t.arch]}, {t.epochs} epochs, {t.optimizer.upper()} lr {t.lr:g} {t.schedule}, batch "
                 f"{t.batch_size}, seeds {cfg.first_seed}–{cfg.first_seed + cfg.seeds - 1} (K = {cfg.seeds}); "
                 f"mean [{pct} t-interval]. SAD and flips in % of the sparse weights.", "",
                 "| N:M | run | late SAD % | early SAD % | late flips % | accuracy % |", "|---|---|---|---|---|---|"]
        for row in self.summary():
            mt = row.metrics
            lines.append(f"| {row.n}:{row.m} | {row.label} | {mt['late_sad_pct'].text()} | "
                         f"{mt['early_sad_pct'].text()} | {mt['late_flipped_pct'].text()} | {mt['accuracy'].text()} |")
        lines += ["", f"| N:M | SR-STE − STE | mean [{pct} CI] | SR-STE lower in |", "|---|---|---|---|"]
        for c in self.comparisons():
            d = c.paired.diff
            note = " (includes 0)" if d.includes_zero else ""
            lines.append(f"| {c.n}:{c.m} | {METRICS[c.metric][0]} | {d.text()}{note} | {c.paired.a_lower} of {d.n} |")
        sweep = self.lambda_rows()
        if sweep:
            n, m = cfg.patterns[0]
            lines += ["", f"λ_w sweep at {n}:{m} (λ_w = 0 is STE):", "",
                      "| λ_w | late SAD % | accuracy % |", "|---|---|---|"]
            for row in sweep:
                lines.append(f"| {row.lambda_w:g} | {row.metrics['late_sad_pct'].text()} | "
                             f"{row.metrics['accuracy'].text()} |")
        return "\n".join(lines)
