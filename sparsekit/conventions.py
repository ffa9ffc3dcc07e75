"""How many weights an unstructured sparsity prunes: sparsekit's rule next to the reference code's.

sparsekit prunes ``round(s · count)`` entries of every unit it compares within (the layer for
magnitude/random/Taylor, each row for Wanda, each block of 128 columns for SparseGPT). The
authors' code counts differently:

- Wanda (``prune_wanda``): ``int(cols · s)`` per row, rounding *down*;
- SparseGPT (``fasterprune``): the mask is ``score <= sorted[int(numel · s)]`` over each block of
  columns, so ``int(numel · s) + 1`` entries per block (ties aside);
- magnitude in the Wanda repository (``prune_magnitude``): ``W <= sorted[int(numel · s)]``,
  ``int(numel · s) + 1`` per layer.

The differences are a few weights per layer; ``pruned_counts`` gives them for any shape.
Run ``python -m sparsekit.conventions`` for a table at common sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

from .methods.sparsegpt import SPARSEGPT_BLOCK


@dataclass(frozen=True)
class CountingRule:
    """Pruned weights of one layer under one method, by sparsekit's rule and by the reference code's."""

    method: str
    """``magnitude``, ``wanda`` or ``sparsegpt``."""
    unit: str
    """What the count is taken over: ``layer``, ``row`` or ``block of 128 columns``."""
    sparsekit: int
    """Weights sparsekit prunes in the whole layer."""
    reference: int
    """Weights the reference code prunes in the whole layer."""
    numel: int
    """Weights in the layer."""

    @property
    def difference(self) -> int:
        """sparsekit − reference, in weights."""
        return self.sparsekit - self.reference

    @property
    def difference_pct(self) -> float:
        """The difference in percentage points of the layer's weights."""
        return 100.0 * self.difference / self.numel


def pruned_counts(rows: int, cols: int, sparsity: float, *, block: int = SPARSEGPT_BLOCK) -> list[CountingRule]:
    """Weights pruned in a ``[rows, cols]`` layer at unstructured ``sparsity``, sparsekit vs reference.

    Args:
        rows: output features.
        cols: input features (Wanda compares within rows of this length; SparseGPT works in blocks of
            ``block`` columns).
        sparsity: fraction pruned, ``0 <= sparsity < 1``.
        block: SparseGPT's block width (128 in the paper and in sparsekit).

    Returns:
        One ``CountingRule`` for magnitude, Wanda and SparseGPT.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be positive, got {rows}x{cols}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    numel = rows * cols
    widths = [min(block, cols - start) for start in range(0, cols, block)]
    return [
        CountingRule("magnitude", "layer", int(round(sparsity * numel)), int(numel * sparsity) + 1, numel),
        CountingRule("wanda", "row", rows * int(round(sparsity * cols)), rows * int(cols * sparsity), numel),
        CountingRule("sparsegpt", f"block of {block} columns",
                     sum(int(round(sparsity * rows * w)) for w in widths),
                     sum(min(int(rows * w * sparsity) + 1, rows * w) for w in widths), numel),
    ]


def markdown_table(shapes: list[tuple[int, int]], sparsities: list[float]) -> str:
    """The counting differences as a markdown table (sparsekit − reference, weights per layer)."""
    lines = ["| layer [out×in] | sparsity | magnitude (per layer) | Wanda (per row) | SparseGPT (per 128-col block) |",
             "|---|---|---|---|---|"]
    for rows, cols in shapes:
        for s in sparsities:
            cells = []
            for rule in pruned_counts(rows, cols, s):
                cells.append(f"{rule.difference:+d} ({rule.difference_pct:+.4f} pp)")
            lines.append(f"| {rows}×{cols} | {s:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COMMON_SHAPES = [(384, 384), (1536, 384), (384, 1536), (768, 3072), (3072, 768), (4096, 4096)]
COMMON_SPARSITIES = [0.5, 0.6, 0.7]

if __name__ == "__main__":
    print("Pruned weights, sparsekit minus the reference code (negative: sparsekit prunes fewer)\n")
    print(markdown_table(COMMON_SHAPES, COMMON_SPARSITIES))
