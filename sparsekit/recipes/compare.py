"""The Compare page's recipe: a sweep of methods x patterns on the loaded model, and the channel
permutation search for one N:M pattern.

``compare_headline`` computes what the page shows (the dense value, the pattern x method table, the
ranking, the permutation's recovered share and qualities); the page and the notebook both call it.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..compare import best_first, pivot
from ..config import SparsifyConfig
from ..evaluate import CompareRow, PermutedRow
from ..structured.equal_cost import FamilyPoints
from .base import Recipe, code, literal, md
from .pages import load_cell


def compare_headline(metric: str, *, configs: Sequence[SparsifyConfig] = (), rows: Sequence[CompareRow] | None = None,
                     dense: CompareRow | None = None, higher_is_better: bool = True,
                     permuted: PermutedRow | None = None, plain: CompareRow | None = None,
                     families: FamilyPoints | None = None) -> dict[str, Any]:
    """What the Compare page shows for ``metric``.

    Args:
        metric: the quality metric the page ranks by.
        configs: the sweep's settings (their count is shown before the sweep runs).
        rows: the sweep's rows (``compare.compare``), None when it has not run.
        dense: ``compare.dense_row(model)`` (with ``rows``).
        higher_is_better: whether a larger ``metric`` is better.
        permuted: a finished ``compare.permuted_nm_row``, None when no search is shown.
        plain: the plain magnitude row of the same N:M pattern (with ``permuted``).
        families: the structure families the page measured (``structured.equal_cost.family_points``).

    Returns:
        ``metric`` and ``settings``; with rows also ``dense`` (its value), ``table`` (pattern ->
        method -> value) and ``best_first`` (pattern -> ``[method, value]`` pairs, best first); with a
        permutation also ``recovered_share`` (None when no layer was permuted), ``plain``,
        ``permuted`` and ``permuted_layers``.
    """
    head: dict[str, Any] = {"metric": metric, "settings": len(configs)}
    if families is not None:
        head["families"] = [[r.family, r.setting, r.kept_params, float(r.quality[metric])] for r in families.rows]
    if rows:
        if dense is None:
            raise ValueError("give the dense row with the sweep's rows")
        patterns, methods, values = pivot(rows, metric)
        head["dense"] = float(dense.quality[metric])
        head["table"] = {p: dict(zip(methods, vals)) for p, vals in zip(patterns, values)}
        head["best_first"] = {p: [[method, float(value)] for method, value in ranked]
                              for p, ranked in best_first(rows, metric, higher_is_better=higher_is_better).items()}
    if permuted is not None:
        if plain is None:
            raise ValueError("give the plain N:M row with the permuted row")
        head["recovered_share"] = float(permuted.recovered_share) if permuted.layers else None
        head["plain"] = float(plain.quality[metric])
        head["permuted"] = float(permuted.quality[metric])
        head["permuted_layers"] = [str(row["layer"]) for row in permuted.layers]
    return head


def compare_recipe(spec: str, methods: Sequence[str], nm_patterns: Sequence[tuple[int, int]],
                   sparsities: Sequence[float], metric: str, *, swept: bool,
                   permutation: tuple[int, int, float] | None = None, permutation_note: str = "",
                   upload_sha256: str = "",
                   families: tuple[Sequence[float], Sequence[tuple[int, int]], Sequence[float], Sequence[int]]
                   | None = None) -> Recipe:
    """The Compare page: the sweep it showed, the permutation search and the structure families it showed.

    Args:
        spec: the model spec.
        methods: the chosen methods.
        nm_patterns: the chosen ``(n, m)`` patterns.
        sparsities: the chosen unstructured fractions pruned.
        metric: the chosen quality metric.
        swept: whether the page showed the sweep's results (otherwise the notebook only builds the
            settings, and says how to run them).
        permutation: ``(n, m, max_seconds_per_layer)`` of a finished permutation search the page showed.
        permutation_note: why a permutation the page showed is left out (e.g. a stopped search).
        upload_sha256: set when the model's weights were uploaded in the browser.
        families: ``(unstructured, nm, slicegpt, monarch_blocks)`` of the structure families the page showed.
    """
    methods, sparsities = list(methods), list(sparsities)
    nm_patterns = [(int(n), int(m)) for n, m in nm_patterns]
    has_configs = bool(methods) and bool(nm_patterns or sparsities)
    cells = [
        md("## The model"),
        code(load_cell(spec, upload_sha256)),
        code("from sparsekit import SparsifyConfig\nfrom sparsekit import compare as cmp\n\n"
             f"metric = {literal(metric)}\nlabel = model.metric_names.get(metric, metric)\n"
             "higher = model.higher_is_better.get(metric, True)"),
    ]
    if has_configs:
        cells += [
            md("## The sweep\nEvery method at every N:M pattern and unstructured sparsity; each setting prunes a "
               "fresh copy and measures it (results are cached on disk, so a sweep runs once per model)."),
            code(f"configs = cmp.sweep_configs({literal(methods)}, {literal(nm_patterns)}, {literal(sparsities)})\n"
                 "[c.label() for c in configs]"),
        ]
    else:
        cells.append(code("configs = []"))
    if has_configs and swept:
        cells += [
            code("rows = cmp.compare(model, configs)\ndense = cmp.dense_row(model)\n"
                 "cmp.best_first(rows, metric, higher_is_better=higher)"),
            code("viz.compare_figure([dense, *rows], metric, x='sparsity', metric_label=label, "
                 "higher_is_better=higher)"),
            code("viz.compare_figure([dense, *rows], metric, x='memory', metric_label=label, "
                 "higher_is_better=higher)"),
            code("import pandas as pd\n\npatterns, methods, values = cmp.pivot(rows, metric)\n"
                 "pd.DataFrame(values, index=patterns, columns=methods)"),
        ]
    else:
        cells.append(md("The page had not run this sweep: `rows = cmp.compare(model, configs)` runs it."))
        cells.append(code("rows, dense = None, None"))
    if permutation is not None:
        n, m, seconds = permutation
        cells += [
            md(f"## Channel permutation for {n}:{m}\nReordering input channels (and the producing layer's outputs) "
               "keeps the function and regroups the weights; the recovered share is how much of the gap in kept "
               "|w| between plain N:M and unstructured pruning the search closes."),
            code(f"permuted = cmp.permuted_nm_row(model, {n}, {m}, max_seconds_per_layer={literal(float(seconds))})\n"
                 f"plain = cmp.compare(model, [SparsifyConfig(pattern='nm', n={n}, m={m})])[0]\n"
                 "[{k: v for k, v in row.items() if k != 'perm'} for row in permuted.layers]"),
        ]
    else:
        if permutation_note:
            cells.append(md(permutation_note))
        cells.append(code("permuted = plain = None"))
    if families is not None:
        unstructured, fam_nm, slices, blocks = families
        cells += [
            md("## Structure families at equal cost\nUnstructured and N:M masks (magnitude), SliceGPT and Monarch "
               "on one axis: the parameters the whole model keeps, counted the same way for every family."),
            code("from sparsekit.structured.equal_cost import family_points\n\n"
                 f"families = family_points(model, unstructured={literal([float(v) for v in unstructured])}, "
                 f"nm={literal([(int(n), int(m)) for n, m in fam_nm])},\n"
                 f"                         slicegpt={literal([float(v) for v in slices])}, "
                 f"monarch_blocks={literal([int(b) for b in blocks])})\n"
                 "viz.family_cost_figure(families, metric, metric_label=label, higher_is_better=higher)"),
        ]
    else:
        cells.append(code("families = None"))
    cells += [
        md("## Headline values (the ranking, the table and the permutation's figures)"),
        code("from sparsekit.recipes.compare import compare_headline\n\n"
             "headline = compare_headline(metric, configs=configs, rows=rows, dense=dense, higher_is_better=higher,\n"
             "                            permuted=permuted, plain=plain, families=families)\nheadline"),
    ]
    shown = (f"It compared pruning methods on `{spec}` by {metric}"
             + (" (the sweep)" if has_configs and swept else "")
             + (f" and searched a channel permutation for {permutation[0]}:{permutation[1]}" if permutation else "")
             + ".")
    return Recipe("Compare", shown, spec, tuple(cells))


__all__ = ["compare_headline", "compare_recipe"]
