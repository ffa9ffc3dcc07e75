"""Counting conventions: the table's sparsekit column equals what the library prunes, and its
reference column equals the reference code's rule written out (sort, threshold, count)."""
import pytest
import torch

import sparsekit
from sparsekit.conventions import markdown_table, pruned_counts
from sparsekit.methods.sparsegpt import sparsegpt_prune
from sparsekit.methods.wanda import row_unstructured_mask


def reference_threshold_count(scores: torch.Tensor, sparsity: float) -> int:
    # SparseGPT / magnitude reference: mask = score <= sorted(score)[int(numel * s)].
    flat = scores.flatten()
    thresh = torch.sort(flat)[0][int(flat.numel() * sparsity)]
    return int((flat <= thresh).sum())


@pytest.mark.parametrize("rows,cols", [(12, 300), (7, 128), (5, 384)])
@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.9])
def test_counts_match_library_and_reference_rules(rows, cols, sparsity):
    torch.manual_seed(rows * cols)
    w = torch.randn(rows, cols)  # continuous values: no ties
    rules = {r.method: r for r in pruned_counts(rows, cols, sparsity)}

    mag = rules["magnitude"]
    assert int((~sparsekit.unstructured_mask(w, sparsity)).sum()) == mag.sparsekit
    assert reference_threshold_count(w.abs(), sparsity) == mag.reference

    wanda = rules["wanda"]
    assert int((~row_unstructured_mask(w.abs(), sparsity)).sum()) == wanda.sparsekit
    per_row = torch.sort(w.abs(), dim=1, stable=True)[1][:, : int(cols * sparsity)]
    assert per_row.numel() == wanda.reference

    sgpt = rules["sparsegpt"]
    x = torch.randn(4 * cols, cols)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    _, keep, _ = sparsegpt_prune(w, h, sparsity=sparsity)
    assert int((~keep).sum()) == sgpt.sparsekit
    # Reference: per block of 128 columns, threshold on that block's own scores. Only the count
    # matters here, so any continuous scores of the block's size stand in for w²/d².
    ref = sum(reference_threshold_count(torch.rand(rows, min(128, cols - i)), sparsity) for i in range(0, cols, 128))
    assert ref == sgpt.reference
    assert all(r.difference == r.sparsekit - r.reference for r in rules.values())


def test_table_and_bad_input():
    table = markdown_table([(3072, 768)], [0.6])
    # 768 * 0.6 = 460.8: sparsekit rounds to 461 per row, Wanda's code truncates to 460.
    assert "| 3072×768 | 60% |" in table and "+3072" in table
    with pytest.raises(ValueError, match="positive"):
        pruned_counts(0, 8, 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        pruned_counts(4, 8, 1.0)
