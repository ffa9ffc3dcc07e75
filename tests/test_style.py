"""Issue #24, "One style" and "Messages": one number style, one colour per method/mode, clear messages."""
from __future__ import annotations

import sparsekit
from sparsekit.sparsify import SparsifyConfig, sparsify


def test_owl_2_4_on_digits_cnn_leaves_conv1_dense():
    # Uniform 2:4 leaves conv1 (1 input channel × 3×3) dense by itself; OWL now does the same.
    cnn = sparsekit.load_model("digits:cnn")
    res = sparsify(cnn, SparsifyConfig(pattern="nm", n=2, m=4, allocation="owl", method="magnitude"), progress=False)
    reasons = {r.name: r.skipped_reason for r in res.report}
    assert "not a multiple of M=4" in reasons["conv1"]
    assert "conv1" not in res.masks and len(res.masks) >= 2
    assert "left dense, as M does not fit: conv1" in res.allocation_note
