"""Kernel suites: 2:4 semi-structured Linear, CSR/BSR matmul, FlexAttention block-sparse, whole model.

The FlexAttention suite lives in ``attention_suite`` (it times attention patterns, not pruned
weights) and is re-exported here with its helpers.

Each suite returns ``CaseResult``s: a dense baseline and the sparse variants of the same case, every
one checked against the dense result before it is timed.
"""
from __future__ import annotations

import copy
import math
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import nm_mask
from ..models import LoadedModel
from ..models.sentences import SENTENCES
from ..progress import ProgressFn
from ..sparsify import SparsifyConfig, is_2_4, sparsify
from .attention_suite import (
    MAX_SEQ,
    AttentionPattern,
    attention_cases,
    attention_suite,
    block_mask_density,
    default_attention_patterns,
)
from .harness import (
    Case,
    CaseResult,
    attach_baseline,
    budget_spent,
    case_seed,
    check_fits,
    check_positive_ints,
    run_case,
    run_cases,
    skipped,
)

if TYPE_CHECKING:
    from transformers import BertConfig

__all__ = [
    "MAX_BATCH", "MAX_DIM", "MAX_SEQ", "AttentionPattern", "ProgressFn", "attention_cases", "attention_suite",
    "block_mask_density",
    "CONFIG_MODELS", "check_densities", "config_model", "default_attention_patterns",
    "formats_cases", "formats_suite", "ideal_speedup", "linear_cases", "linear_suite", "model_cases", "model_suite",
    "semi_structured_available", "verdicts",
]


MAX_BATCH = 65536
MAX_DIM = 65536


def check_densities(densities: Iterable[float]) -> list[float]:
    """Densities (kept fraction) must lie in (0, 1]."""
    out = []
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0.0 < float(d) <= 1.0):
            raise ValueError(f"density (kept fraction) must be in (0, 1], got {d!r}")
        out.append(float(d))
    if not out:
        raise ValueError("give at least one density")
    return out


def semi_structured_available(device: str) -> str:
    """'' when 2:4 semi-structured kernels can run on ``device``, else the reason they cannot."""
    if not device.startswith("cuda"):
        return "2:4 semi-structured kernels run on CUDA only"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    if major < 8:
        return "2:4 sparse tensor cores need compute capability 8.0 (Ampere) or newer"
    return ""


def _backends(device: str) -> list[str]:
    names = ["cutlass"]
    if getattr(torch.backends, "cusparselt", None) is not None and torch.backends.cusparselt.is_available():
        names.insert(0, "cusparselt")
    return names


def _to_semi_structured(weight: torch.Tensor, backend: str) -> torch.Tensor:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    previous = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        return to_sparse_semi_structured(weight)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = previous


def linear_suite(
    shapes: Sequence[tuple[int, int]],
    batches: Sequence[int],
    *,
    device: str,
    dtype: torch.dtype = torch.float16,
    repeats: int = 20,
    n_inputs: int = 3,
    progress: ProgressFn | None = None,
    sparse_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[CaseResult]:
    """Dense ``F.linear`` vs 2:4 semi-structured weight, for each (out, in) shape and batch size.

    Args:
        shapes: Linear weight shapes ``(out_features, in_features)``.
        batches: rows of the input (tokens).
        sparse_fn: replaces the semi-structured kernel (tests use it to feed a wrong kernel to the
            correctness gate, and to run the suite's logic on CPU).

    Returns:
        Per (shape, batch): a ``dense`` baseline and one result per 2:4 backend (``skipped`` with the
        reason where 2:4 kernels are unavailable).
    """
    return run_cases(linear_cases(shapes, batches, device=device, dtype=dtype, repeats=repeats, n_inputs=n_inputs,
                                  sparse_fn=sparse_fn), progress)


def linear_cases(shapes: Sequence[tuple[int, int]], batches: Sequence[int], *, device: str,
                 dtype: torch.dtype = torch.float16, repeats: int = 20, n_inputs: int = 3,
                 sparse_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[Case]:
    """``linear_suite``'s cases, one per (shape, batch), validated but not measured."""
    shapes = [(int(o), int(i)) for o, i in shapes]
    for o, i in shapes:
        check_positive_ints([o, i], "layer dimensions", MAX_DIM)
        if i % 4:
            raise ValueError(f"in_features {i} of shape ({o}, {i}) is not a multiple of 4 (2:4 groups)")
    batches = check_positive_ints(batches, "batch sizes", MAX_BATCH)
    element = torch.finfo(dtype).bits // 8
    for o, i in shapes:
        for b in batches:
            check_fits((n_inputs * b * i + b * o + o * i) * element * 2, device, f"linear {o}×{i} at batch {b}")
    why = "" if sparse_fn is not None else semi_structured_available(device)
    # The weight of the shape being measured and its 2:4 forms, made once for all its batch sizes.
    prepared: dict[tuple[int, int], tuple[torch.Tensor, dict[str, torch.Tensor | Exception]]] = {}

    def weights(o: int, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor | Exception]]:
        if (o, i) not in prepared:
            prepared.clear()
            gen = torch.Generator(device="cpu").manual_seed(case_seed("linear", o, i))
            w = torch.randn(o, i, generator=gen).to(device=device, dtype=dtype)
            w = w * nm_mask(w, 2, 4)
            sparse_weights: dict[str, torch.Tensor | Exception] = {}
            if not why and sparse_fn is None:
                for backend in _backends(device):
                    try:
                        sparse_weights[backend] = _to_semi_structured(w, backend)
                    except (RuntimeError, ValueError) as err:
                        sparse_weights[backend] = err
            prepared[(o, i)] = (w, sparse_weights)
        return prepared[(o, i)]

    def measure(o: int, i: int, b: int) -> list[CaseResult]:
        w, sparse_weights = weights(o, i)
        params = {"out_features": o, "in_features": i, "batch": b, "density": 0.5}
        gen = torch.Generator(device="cpu").manual_seed(case_seed("linear", o, i, b))
        xs = [torch.randn(b, i, generator=gen).to(device=device, dtype=dtype) for _ in range(n_inputs)]
        flops = 2.0 * b * o * i
        bytes_moved = float((b * i + b * o + o * i) * element)
        case = f"linear {o}x{i} b{b}"

        def dense(x: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
            return F.linear(x, w)

        base = run_case(suite="linear", case=case, backend="dense", device=device, dtype=dtype, params=params,
                        fn=dense, reference=dense, inputs=xs, flops=flops, bytes_moved=bytes_moved, repeats=repeats)
        variants: list[CaseResult] = []
        if sparse_fn is not None:
            def custom(x: torch.Tensor, w: torch.Tensor = w,
                       fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = sparse_fn) -> torch.Tensor:
                return fn(x, w)

            variants.append(run_case(suite="linear", case=case, backend="custom", device=device, dtype=dtype,
                                     params=params, fn=custom, reference=dense, inputs=xs,
                                     flops=flops, bytes_moved=bytes_moved, repeats=repeats))
        elif why:
            variants.append(skipped("linear", case, "2:4", device, dtype, params, why))
        else:
            for backend, ws in sparse_weights.items():
                if isinstance(ws, Exception):
                    variants.append(skipped("linear", case, f"2:4 {backend}", device, dtype, params,
                                            f"cannot convert: {str(ws).splitlines()[0][:200]}"))
                    continue

                def semi(x: torch.Tensor, ws: torch.Tensor = ws) -> torch.Tensor:
                    return F.linear(x, ws)

                variants.append(run_case(suite="linear", case=case, backend=f"2:4 {backend}", device=device,
                                         dtype=dtype, params=params, fn=semi, reference=dense, inputs=xs,
                                         flops=flops, bytes_moved=bytes_moved, repeats=repeats))
        attach_baseline(variants, base)
        return [base, *variants]

    return [Case("linear", f"linear {o}×{i}, batch {b}", partial(measure, o, i, b)) for o, i in shapes for b in batches]


def formats_suite(
    shape: tuple[int, int],
    n_cols: int,
    densities: Sequence[float],
    *,
    device: str,
    dtype: torch.dtype = torch.float32,
    block: int = 32,
    repeats: int = 10,
    n_inputs: int = 3,
    progress: ProgressFn | None = None,
) -> list[CaseResult]:
    """Dense matmul vs CSR (unstructured mask) and BSR (block mask) at each density.

    ``A [rows, cols]`` holds the sparse weight, ``X [cols, n_cols]`` the activations; the dense
    baseline multiplies the same pruned ``A`` stored densely.
    """
    return run_cases(formats_cases(shape, n_cols, densities, device=device, dtype=dtype, block=block,
                                   repeats=repeats, n_inputs=n_inputs), progress)


def formats_cases(shape: tuple[int, int], n_cols: int, densities: Sequence[float], *, device: str,
                  dtype: torch.dtype = torch.float32, block: int = 32, repeats: int = 10,
                  n_inputs: int = 3) -> list[Case]:
    """``formats_suite``'s cases, one per density, validated but not measured."""
    rows, cols = (int(shape[0]), int(shape[1]))
    check_positive_ints([rows, cols], "matrix dimensions", MAX_DIM)
    n_cols = check_positive_ints([n_cols], "columns of X", MAX_BATCH)[0]
    densities = check_densities(densities)
    if rows % block or cols % block:
        raise ValueError(f"shape ({rows}, {cols}) must be a multiple of the BSR block size {block}")
    element = torch.finfo(dtype).bits // 8
    check_fits((rows * cols * 3 + n_inputs * cols * n_cols + rows * n_cols) * element, device,
               f"a {rows}×{cols} matrix times {cols}×{n_cols}")
    inputs: list[torch.Tensor] = []  # X, drawn once for every density

    def measure(d: float) -> list[CaseResult]:
        if not inputs:
            gen_x = torch.Generator(device="cpu").manual_seed(1)
            inputs.extend(torch.randn(cols, n_cols, generator=gen_x).to(device=device, dtype=dtype)
                          for _ in range(n_inputs))
        xs = list(inputs)
        gen = torch.Generator(device="cpu").manual_seed(case_seed("formats", rows, cols, d))
        params = {"rows": rows, "cols": cols, "n_cols": n_cols, "density": d, "block": block}
        a = torch.randn(rows, cols, generator=gen)
        keep = torch.rand(rows, cols, generator=gen) < d
        a_unstructured = (a * keep).to(device=device, dtype=dtype)
        blocks = torch.rand(rows // block, cols // block, generator=gen) < d
        block_keep = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)
        a_block = (a * block_keep).to(device=device, dtype=dtype)
        case = f"{rows}x{cols}@{cols}x{n_cols} d{d:g}"
        flops = 2.0 * rows * cols * n_cols

        def dense_u(x: torch.Tensor, a: torch.Tensor = a_unstructured) -> torch.Tensor:
            return a @ x

        def dense_b(x: torch.Tensor, a: torch.Tensor = a_block) -> torch.Tensor:
            return a @ x

        def sparse_at(s: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: s @ x

        base = run_case(suite="formats", case=case, backend="dense", device=device, dtype=dtype, params=params,
                        fn=dense_u, reference=dense_u, inputs=xs, flops=flops, repeats=repeats)
        variants = []
        try:
            csr = a_unstructured.to_sparse_csr()
            variants.append(run_case(suite="formats", case=case, backend="CSR", device=device, dtype=dtype,
                                     params={**params, "actual_density": float(keep.float().mean())},
                                     fn=sparse_at(csr), reference=dense_u, inputs=xs, flops=flops,
                                     repeats=repeats))
        except (RuntimeError, NotImplementedError) as err:
            variants.append(skipped("formats", case, "CSR", device, dtype, params, str(err).splitlines()[0][:200]))
        base_b = run_case(suite="formats", case=case, backend="dense (block mask)", device=device, dtype=dtype,
                          params=params, fn=dense_b, reference=dense_b, inputs=xs, flops=flops, repeats=repeats)
        try:
            bsr = a_block.to_sparse_bsr((block, block))
            bsr_res = run_case(suite="formats", case=case, backend=f"BSR {block}×{block}", device=device, dtype=dtype,
                               params={**params, "actual_density": float(blocks.float().mean())},
                               fn=sparse_at(bsr), reference=dense_b, inputs=xs, flops=flops, repeats=repeats)
        except (RuntimeError, NotImplementedError) as err:
            bsr_res = skipped("formats", case, f"BSR {block}×{block}", device, dtype, params,
                              str(err).splitlines()[0][:200])
        attach_baseline(variants, base)
        attach_baseline([bsr_res], base_b)
        return [base, *variants, base_b, bsr_res]

    return [Case("formats", f"CSR/BSR at density {d:g}", partial(measure, d)) for d in densities]


# Encoders built from a config with seeded random weights, for the whole-model forward where no
# weight files are at hand (a GPU machine whose image lacks the 83 MB MiniLM package). Timing and
# the dense-vs-2:4 output difference do not depend on trained weights.
class _BertSize(TypedDict):
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


CONFIG_MODELS: dict[str, _BertSize] = {
    # BERT-base: 12 layers, hidden 768, FFN 3072, 110M parameters (GPT-2 small's size, but with
    # nn.Linear layers, which the 2:4 conversion takes; GPT-2's Conv1D would not be converted).
    "config:bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                         "intermediate_size": 3072},
    # all-MiniLM-L6-v2's architecture: 6 layers, hidden 384, FFN 1536.
    "config:minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                      "intermediate_size": 1536},
}


def config_model(spec: str, seed: int = 0) -> LoadedModel:
    """A BERT encoder of one of ``CONFIG_MODELS``' sizes with seeded random weights (no files read).

    It has no tokenizer: ``model_suite`` feeds it seeded random token ids (``info["random_inputs"]``).
    """
    if spec not in CONFIG_MODELS:
        raise ValueError(f"unknown config model {spec!r}; choose one of {sorted(CONFIG_MODELS)}")
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **CONFIG_MODELS[spec])
    torch.manual_seed(seed)
    module = BertModel(config, add_pooling_layer=False).eval()
    return LoadedModel(spec=spec, name=spec.removeprefix("config:") + " (config, random weights)", kind="encoder",
                       module=module, quality_fn=lambda m: {}, calibration=None,
                       info={"source": "config", "random_inputs": True, "architecture": type(module).__name__})


def _model_inputs(loaded: LoadedModel, batch: int, seq_len: int, device: str) -> dict[str, torch.Tensor]:
    """Token inputs for the whole-model forward: real sentences, or seeded random ids for a config model."""
    if loaded.tokenizer is not None:
        texts = [SENTENCES[j % len(SENTENCES)] for j in range(batch)]
        enc = loaded.tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}
    gen = torch.Generator(device="cpu").manual_seed(batch)
    vocab_size = cast("BertConfig", loaded.module.config).vocab_size  # a ``config_model``
    ids = torch.randint(1000, vocab_size, (batch, seq_len), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def model_suite(loaded: LoadedModel, batches: Sequence[int], *, device: str, dtype: torch.dtype = torch.float16,
                seq_len: int = 128, repeats: int = 10, progress: ProgressFn | None = None) -> list[CaseResult]:
    """Whole-model forward: dense vs 2:4-accelerated, for a text model (e.g. the bundled MiniLM).

    Both models carry the same 2:4-pruned weights; the sparse one stores every eligible Linear
    weight as a semi-structured tensor. CUDA only.
    """
    return run_cases(model_cases(loaded, batches, device=device, dtype=dtype, seq_len=seq_len, repeats=repeats),
                     progress)


def model_cases(loaded: LoadedModel | Callable[[], LoadedModel], batches: Sequence[int], *, device: str,
                dtype: torch.dtype = torch.float16, seq_len: int = 128, repeats: int = 10) -> list[Case]:
    """``model_suite``'s cases, one per batch size; ``loaded`` may be a loader, called at the first measurement
    (a run whose model cases are all stored does not load the model)."""
    batches = check_positive_ints(batches, "batch sizes", 4096)
    why_not = semi_structured_available(device)
    state: dict[str, object] = {}  # the model, and its dense and 2:4 copies, made once for every batch size

    def model() -> LoadedModel:
        if "loaded" not in state:
            state["loaded"] = loaded if isinstance(loaded, LoadedModel) else loaded()
        return cast(LoadedModel, state["loaded"])

    def prepare(m: LoadedModel) -> tuple[nn.Module, nn.Module, dict]:
        if m.tokenizer is None and not m.info.get("random_inputs"):
            raise ValueError(f"{m.name} has no tokenizer; the model suite times text models")
        if "models" not in state:
            pruned = sparsify(m, SparsifyConfig(pattern="nm", n=2, m=4), progress=None).model
            dense_model = copy.deepcopy(pruned).to(device=device, dtype=dtype).eval()
            sparse_model = copy.deepcopy(dense_model)
            converted, not_converted = 0, []
            backend = _backends(device)[0]
            for name, mod in sparse_model.named_modules():
                if isinstance(mod, nn.Linear):
                    w = mod.weight.detach()
                    if not is_2_4(w):  # the compressor would silently drop weights that break the pattern
                        not_converted.append(f"{name}: not 2:4")
                        continue
                    try:
                        mod.weight = nn.Parameter(_to_semi_structured(w, backend), requires_grad=False)
                        converted += 1
                    except (RuntimeError, ValueError) as err:
                        not_converted.append(f"{name}: {str(err).splitlines()[0][:120]}")
            state["models"] = (dense_model, sparse_model, {
                "backend": backend, "converted_linears": converted, "unconverted_linears": len(not_converted),
                "unconverted": "; ".join(not_converted)[:300]})
        return cast("tuple[nn.Module, nn.Module, dict]", state["models"])

    def measure(b: int) -> list[CaseResult]:
        m = model()
        params0 = {"model": m.name, "seq_len": seq_len}
        why = why_not or budget_spent()
        if why:
            return [skipped("model", f"{m.name} b{b}", "2:4", device, dtype, {**params0, "batch": b}, why)]
        dense_model, sparse_model, info = prepare(m)
        enc = _model_inputs(m, b, seq_len, device)
        params = {**params0, **info, "batch": b}

        def run(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
            return lambda e: model(**e).last_hidden_state

        base = run_case(suite="model", case=f"{m.name} b{b}", backend="dense", device=device, dtype=dtype,
                        params=params, fn=run(dense_model), reference=run(dense_model), inputs=[enc], repeats=repeats)
        res = run_case(suite="model", case=f"{m.name} b{b}", backend="2:4", device=device, dtype=dtype,
                       params=params, fn=run(sparse_model), reference=run(dense_model), inputs=[enc],
                       repeats=repeats, tolerance=2e-2)
        attach_baseline([res], base)
        return [base, res]

    return [Case("model", f"whole model, batch {b}", partial(measure, b)) for b in batches]


def verdicts(results: Sequence[CaseResult]) -> list[dict]:
    """Per Linear shape: from which batch size 2:4 is faster than dense on this device.

    Returns:
        Rows ``{shape, backend, verdict, best_speedup, batches}``; "faster from batch N" means
        faster at N and at every larger batch measured.
    """
    by_key: dict[tuple, list[CaseResult]] = {}
    for r in results:
        if r.suite != "linear" or r.backend == "dense":
            continue
        key = (r.params.get("out_features"), r.params.get("in_features"), r.backend)
        by_key.setdefault(key, []).append(r)
    rows = []
    for (o, i, backend), rs in sorted(by_key.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0, kv[0][2])):
        rs = sorted(rs, key=lambda r: r.params.get("batch", 0))
        timed = [(r, r.speedup) for r in rs if r.status == "ok" and r.speedup is not None]
        if not timed:
            reasons = sorted({r.message or r.status for r in rs})
            verdict = "not measured: " + "; ".join(reasons)[:200]
            best = None
        else:
            best = max(speedup for _, speedup in timed)
            start = None
            for j in range(len(timed)):
                if all(speedup > 1.0 for _, speedup in timed[j:]):
                    start = timed[j][0].params["batch"]
                    break
            if start is None:
                verdict = "slower at every size measured" if best <= 1.0 else "faster only at some sizes"
            else:
                verdict = f"2:4 faster from batch {start} on this device"
        rows.append({"shape": f"{o}×{i}", "backend": backend, "verdict": verdict,
                     "best_speedup": best, "batches": [r.params.get("batch") for r in rs]})
    return rows


def ideal_speedup(density: float) -> float:
    """The FLOP-count ideal 1/density (what a kernel would give if time followed FLOPs)."""
    return math.inf if density <= 0 else 1.0 / density
