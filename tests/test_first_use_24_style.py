"""Issue #24, One style (audit round): a SAD figure's title names the same unit as its value axis (the
axis is in % of weights; the title said 'fraction of weights')."""
from __future__ import annotations

import numpy as np
import pytest

from sparsekit.viz.recovery import recovery_sad_figure
from sparsekit.viz.training import sad_series_figure
from tests.test_style import _train_run


def _units(fig) -> tuple[str, str]:
    title, axis = fig.layout.title.text, fig.layout.yaxis.title.text
    return title[title.rindex("("):], axis[axis.rindex("("):]


@pytest.mark.parametrize("kind", ["interval", "cumulative", "from_first", "to_final"])
@pytest.mark.parametrize("fraction", [True, False])
def test_training_sad_title_and_axis_name_one_unit(kind, fraction):
    run, report = _train_run("ste")
    title, axis = _units(sad_series_figure([run], reports=[report], kind=kind, fraction=fraction))
    assert title == axis == ("(% of weights)" if fraction else "(weights)")


class _Recovery:
    """What the recovery SAD figure reads of a run: label, evaluation steps and SAD series."""
    label = "STE 2:4"
    run_id = "r1"

    def steps(self):
        return np.array([0, 10, 20])

    def sad_series(self, layer=None, *, from_start=False, fraction=False):
        counts = np.array([0.0, 30.0, 40.0 if from_start else 10.0])
        return counts / 1000 if fraction else counts


@pytest.mark.parametrize("from_start", [True, False])
@pytest.mark.parametrize("fraction", [True, False])
def test_recovery_sad_title_and_axis_name_one_unit(from_start, fraction):
    run = _Recovery()
    fig = recovery_sad_figure([run], from_start=from_start, fraction=fraction, colors={"r1": "#000000"})
    title, axis = _units(fig)
    assert title == axis == ("(% of weights)" if fraction else "(weights)")
