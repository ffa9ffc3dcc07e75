"""Recipe of the Attention page's KV-cache view: one text's cache pruned or evicted under a setting, its
metrics, the pruned K and V of the head shown, the per-head attention-output error and the generations.

``kv_headline`` computes the numbers the view shows from ``evaluate_kv``'s result; the page and the notebook
both call it.
"""
from __future__ import annotations

from typing import Any

from .base import Recipe, code, literal, md
from .pages import load_cell

__all__ = ["kv_headline", "kv_recipe"]


def kv_headline(result: Any) -> dict[str, Any]:
    """The KV view's headline values: perplexity (and dense), agreement, cache bytes in the method's own layout
    (Mustafar's bitmap, the kept tokens dense for eviction) and dense, kept entries, greedy tokens as dense."""
    own = result.bytes["bitmap"] if result.config.method == "mustafar" else result.bytes["dense"]
    same = sum(a == b for a, b in zip(result.generated, result.dense_generated))
    return {"perplexity": float(result.perplexity), "dense_perplexity": float(result.dense_perplexity),
            "agreement": float(result.agreement), "cache_bytes": int(own), "dense_bytes": int(result.bytes["full"]),
            "kept_fraction": float(result.kept_fraction), "generated_equal": int(same)}


def kv_recipe(spec: str, method: str, k_sparsity: float, v_sparsity: float, window: int, *, text_index: int | None,
              tokens: int, text: str, new_tokens: int, layer: int, head: int, upload_sha256: str = "") -> Recipe:
    """The KV view as a notebook.

    Args:
        spec: the model spec (a causal LM).
        method: one of ``sparsekit.kvcache.SWEEP_METHODS``.
        k_sparsity: key sparsity in [0, 1).
        v_sparsity: value sparsity in [0, 1).
        window: the residual (dense) window.
        text_index: the held-out text shown, or None for ``text``.
        tokens: tokens per held-out text.
        text: the user's text (when ``text_index`` is None).
        new_tokens: greedy tokens generated.
        layer: the layer shown.
        head: the KV head shown.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    if text_index is not None:
        ids_code = ("from sparsekit.study.kvcells import kv_text_ids\n\n"
                    f"ids = kv_text_ids(model, {int(text_index)}, {int(tokens)})  # held-out text {int(text_index)}")
        where = f"held-out text {int(text_index)} ({int(tokens)} tokens)"
    else:
        ids_code = ("import torch\n\n"
                    f"ids = torch.tensor(model.tokenizer({literal(text)}, verbose=False)['input_ids'])")
        where = "your text"
    cells = [
        md("## The model"),
        code(load_cell(spec, upload_sha256)),
        md(f"## The text: {where}"),
        code(ids_code + "\nlen(ids)"),
        md(f"## The setting: `{method}`, K {k_sparsity:.0%}, V {v_sparsity:.0%}, window {int(window)}\n"
           "A vector of D entries at sparsity s keeps N = D - floor(s*D) (N = kept); StreamingLLM and H2O keep "
           "as many tokens as hold that many entries (`kvcache.sweep_config`)."),
        code("from sparsekit.kvcache import evaluate_kv, run_kv\n"
             "from sparsekit.study.kvcells import head_dim_of, kv_config_for\n\n"
             f"config = kv_config_for({literal(method)}, {float(k_sparsity)!r}, {float(v_sparsity)!r}, {int(window)}, "
             "len(ids) - 1, head_dim_of(model.module))\n"
             "prompt = max(1, min(32, len(ids) // 4))\n"
             f"result = evaluate_kv(model, ids, config, prompt=prompt, new_tokens={int(new_tokens)}, "
             "generation_prompt=len(ids))\nresult"),
        md(f"## Pruned K and V of layer {int(layer)}, head {int(head)} (grey = zeroed; the box = the dense window)"),
        code("from sparsekit.viz.kvview import kv_cache_heatmap\n\n"
             f"layer, head = {int(layer)}, {int(head)}\n"
             "cache = run_kv(model, ids, config, prompt).cache\n"
             "tokens = [f'{i} {t}' for i, t in enumerate(model.tokenizer.convert_ids_to_tokens(ids[:-1].tolist()))]\n"
             "window = min(config.dense_tokens, len(tokens))\n"
             "kv_cache_heatmap(cache.layers[layer].keys[0, head], tokens=tokens, window=window, colorbar='K',\n"
             "                 title=f'pruned keys, layer {layer} head {head}')"),
        code("kv_cache_heatmap(cache.layers[layer].values[0, head], tokens=tokens, window=window, colorbar='V',\n"
             "                 title=f'pruned values, layer {layer} head {head}')"),
        code("import numpy as np\n\n"
             "viz.head_grid_figure(np.array(result.attention_error),\n"
             "                      title='attention-output error per layer and head', colorbar='error',\n"
             "                      zmax=None, colorscale='Reds', text_format='.3f')"),
        md("## Generations, dense and pruned"),
        code("print('dense: ', model.tokenizer.decode(result.dense_generated))\n"
             "print('pruned:', model.tokenizer.decode(result.generated))"),
        md("## Headline values (the numbers the page shows)"),
        code("from sparsekit.recipes.kvcache import kv_headline\n\nheadline = kv_headline(result)\nheadline"),
    ]
    shown = (f"It ran `{spec}` token by token over {where} with its key/value cache under `{method}` "
             f"(K {k_sparsity:.0%}, V {v_sparsity:.0%}, window {int(window)}) and showed layer {int(layer)}, "
             f"head {int(head)}.")
    return Recipe("Attention KV cache", shown, spec, tuple(cells))
