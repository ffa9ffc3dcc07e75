"""Every attention pattern against a plain Python loop over (i, j), on small sizes including
lengths that are not a multiple of the block size; FlexAttention accepts every mask_mod."""
import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from sparsekit.attention import patterns as P
from sparsekit.attention.patterns import AttentionPlan, PatternContext, PatternSpec

SIZES = [(1, 1), (7, 7), (13, 13), (37, 37), (5, 11)]  # (q_len, kv_len); 13 and 37 are not multiples of 4 or 16


def loop(q_len, kv_len, keep):
    return torch.tensor([[bool(keep(i, j)) for j in range(kv_len)] for i in range(q_len)], dtype=torch.bool).reshape(q_len, kv_len)


def check(mask_mod, q_len, kv_len, keep, head=0):
    got = P.materialize(mask_mod, q_len, kv_len, head=head)
    want = loop(q_len, kv_len, keep)
    assert got.dtype == torch.bool and got.shape == (q_len, kv_len)
    assert torch.equal(got, want), (got.int(), want.int())


@pytest.mark.parametrize("q_len,kv_len", SIZES)
def test_static_patterns_match_loops(q_len, kv_len):
    check(P.full(), q_len, kv_len, lambda i, j: True)
    check(P.causal(), q_len, kv_len, lambda i, j: j <= i)
    for w in (0, 1, 3, 50):
        check(P.sliding_window(w), q_len, kv_len, lambda i, j: abs(i - j) <= w)
        check(P.sliding_window(w, causal=True), q_len, kv_len, lambda i, j: 0 <= i - j <= w)
        check(P.diagonal(w), q_len, kv_len, lambda i, j: abs(i - j) <= w)
    for w, d in ((4, 2), (9, 3), (6, 1)):
        check(P.dilated_window(w, d), q_len, kv_len, lambda i, j: abs(i - j) <= w and abs(i - j) % d == 0)
        check(P.dilated_window(w, d, causal=True), q_len, kv_len, lambda i, j: 0 <= i - j <= w and (i - j) % d == 0)
    for w, g in ((1, [0]), (2, [0, 5]), (0, [3, 40])):
        check(P.longformer(w, g), q_len, kv_len, lambda i, j: abs(i - j) <= w or i in g or j in g)
    for l in (1, 3, 4):
        check(P.strided(l, part="local"), q_len, kv_len, lambda i, j: i - l < j <= i)
        check(P.strided(l, part="stride"), q_len, kv_len, lambda i, j: (i - j) % l == 0)
        check(P.strided(l), q_len, kv_len, lambda i, j: i - l < j <= i or (i - j) % l == 0)
    for l, c in ((4, 1), (5, 2), (3, 3)):
        check(P.fixed(l, c, part="block"), q_len, kv_len, lambda i, j: j // l == i // l)
        check(P.fixed(l, c, part="summary"), q_len, kv_len, lambda i, j: j % l >= l - c)
        check(P.fixed(l, c), q_len, kv_len, lambda i, j: j // l == i // l or j % l >= l - c)
    for s, w in ((0, 1), (2, 3), (4, 1)):
        check(P.a_shape(s, w), q_len, kv_len, lambda i, j: j < s or abs(i - j) < w)
    for w, f in ((0, 4), (1, 5), (2, 3), (1, 1)):
        check(P.multi_diagonal(w, f), q_len, kv_len,
              lambda i, j: any(abs(i - j - k * f) <= w for k in range(-60, 61)))
    for cols in ([0], [2, 9, 10], [100]):
        check(P.vertical_stripe(cols), q_len, kv_len, lambda i, j: j in cols)


@pytest.mark.parametrize("q_len,kv_len,block", [(13, 13, 4), (37, 37, 16), (37, 37, 4), (9, 9, 3), (1, 1, 4)])
def test_bigbird_matches_loop_and_random_blocks_are_valid(q_len, kv_len, block):
    g, r = 1, 2
    mm = P.bigbird(q_len, kv_len, block=block, global_blocks=g, random_blocks=r, seed=7)
    n_q, n_kv = math.ceil(q_len / block), math.ceil(kv_len / block)
    table = P.bigbird_random_blocks(n_q, n_kv, g, r, 7)
    check(mm, q_len, kv_len,
          lambda i, j: abs(i // block - j // block) <= 1 or i // block < g or j // block < g or bool(table[i // block, j // block]))
    for row in range(n_q):
        free = [c for c in range(n_kv) if abs(c - row) > 1 and c >= g]
        drawn = [c for c in range(n_kv) if table[row, c]]
        assert set(drawn) <= set(free)
        assert len(drawn) == (0 if row < g else min(r, len(free)))
    assert torch.equal(table, P.bigbird_random_blocks(n_q, n_kv, g, r, 7))  # seeded


def test_bigbird_seed_changes_random_blocks():
    a = P.bigbird_random_blocks(20, 20, 1, 2, 0)
    b = P.bigbird_random_blocks(20, 20, 1, 2, 1)
    assert not torch.equal(a, b)


def random_probs(h, q, kv, seed=0, causal=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(h, q, kv, generator=g) * 2
    if causal:
        s = s.masked_fill(~torch.ones(q, kv, dtype=torch.bool).tril(), -math.inf)
    return s.softmax(-1)


def vertical_slash_loop(A, vertical, slash, last_q, sink, local, causal):
    """Keep-function of one head, straight from the definition."""
    q, kv = len(A), len(A[0])
    rows = range(max(q - last_q, 0), q)
    col = {j: sum(A[i][j] for i in rows) for j in range(kv)}
    diag = {o: sum(A[i][i - o] for i in rows if 0 <= i - o < kv) for o in range(-(kv - 1), q)}
    V = set(range(min(sink, kv)))
    V |= set(sorted((j for j in range(kv) if j not in V), key=lambda j: (-col[j], j))[:vertical])
    forced = {o for o in diag if (0 <= o <= local if causal else abs(o) <= local)}
    cands = [o for o in diag if o not in forced and (o >= 0 or not causal)]
    S = forced | set(sorted(cands, key=lambda o: (-diag[o], o))[:slash])
    return lambda i, j: j in V or (i - j) in S


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (13, 13), (37, 37), (6, 9)])
@pytest.mark.parametrize("causal", [False, True])
def test_vertical_slash_matches_loop(q_len, kv_len, causal):
    if causal and q_len != kv_len:
        pytest.skip("causal attention here is square")
    probs = random_probs(2, q_len, kv_len, seed=q_len, causal=causal)
    for vertical, slash, last_q, sink, local in ((3, 2, 64, 1, 1), (0, 4, 5, 2, 0), (5, 0, 8, 0, 2), (40, 80, 64, 1, 1)):
        mm = P.vertical_slash(probs, vertical=vertical, slash=slash, last_q=last_q, sink_columns=sink, local=local,
                              causal=causal)
        for head in range(2):
            keep = vertical_slash_loop(probs[head].tolist(), vertical, slash, last_q, sink, local, causal)
            check(mm, q_len, kv_len, keep, head=head)


def test_vertical_slash_ties_go_to_lower_index():
    probs = torch.full((1, 6, 6), 1 / 6)
    cols, diags = P.vertical_slash_sets(probs, vertical=2, slash=1, sink_columns=0, local=0, last_q=1)
    assert cols[0].nonzero().flatten().tolist() == [0, 1]
    # Only the last query counts: diagonals o = 5 - j for j = 0..5 all score 1/6; besides the
    # forced o = 0 (index 5) the lowest offset wins: o = 1 (index 6).
    assert diags[0].nonzero().flatten().tolist() == [5, 6]


def block_topk_loop(Q, K, block, topk, causal):
    q, kv = len(Q), len(K)
    nq, nk = math.ceil(q / block), math.ceil(kv / block)

    def pooled(X, n, b):
        rows = X[b * block: (b + 1) * block]
        return [sum(r[t] for r in rows) / len(rows) for t in range(len(X[0]))]

    qp = [pooled(Q, q, b) for b in range(nq)]
    kp = [pooled(K, kv, b) for b in range(nk)]
    keep = {}
    for I in range(nq):
        cands = [J for J in range(nk) if J != I and (J <= I or not causal)]
        score = {J: sum(a * b for a, b in zip(qp[I], kp[J])) for J in cands}
        chosen = set(sorted(cands, key=lambda J: (-score[J], J))[:topk])
        if I < nk:
            chosen.add(I)
        keep[I] = chosen
    return lambda i, j: (j // block) in keep[i // block]


@pytest.mark.parametrize("q_len,kv_len,block", [(13, 13, 4), (37, 37, 16), (37, 37, 4), (1, 1, 4), (10, 10, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_block_topk_matches_loop(q_len, kv_len, block, causal):
    g = torch.Generator().manual_seed(q_len + block)
    Q, K = torch.randn(2, q_len, 5, generator=g), torch.randn(2, kv_len, 5, generator=g)
    for topk in (0, 1, 2, 5):
        mm = P.block_topk(Q, K, block=block, topk=topk, causal=causal)
        for head in range(2):
            check(mm, q_len, kv_len, block_topk_loop(Q[head].double().tolist(), K[head].double().tolist(), block, topk, causal),
                  head=head)


def test_composition_and_per_head():
    a, b = P.sliding_window(2), P.vertical_stripe([0, 7])
    check(P.and_masks(a, b), 13, 13, lambda i, j: abs(i - j) <= 2 and j in (0, 7))
    check(P.or_masks(a, b), 13, 13, lambda i, j: abs(i - j) <= 2 or j in (0, 7))
    check(P.and_masks(), 5, 5, lambda i, j: True)
    check(P.or_masks(), 5, 5, lambda i, j: False)
    both = P.per_head([a, b])
    check(both, 13, 13, lambda i, j: abs(i - j) <= 2, head=0)
    check(both, 13, 13, lambda i, j: j in (0, 7), head=1)
    heads = P.materialize_heads(both, 3, 13, 13)
    assert torch.equal(heads[0], P.materialize(a, 13, 13)) and not heads[2].any()
    spec = PatternSpec.of("sliding_window", window=2) | PatternSpec.of("vertical_stripe", columns="0, 7")
    check(spec.build(PatternContext(13, 13)), 13, 13, lambda i, j: abs(i - j) <= 2 or j in (0, 7))
    spec = PatternSpec.of("sliding_window", window=2) & PatternSpec.of("causal")
    check(spec.build(PatternContext(13, 13)), 13, 13, lambda i, j: 0 <= i - j <= 2)


def all_default_specs():
    return [PatternSpec.of(name) for name in P.PATTERNS] + [
        PatternSpec.of("a_shape", sink=2, local=3) & PatternSpec.of("causal"),
        PatternSpec.of("vertical_slash", vertical=3, slash=3) | PatternSpec.of("sliding_window", window=1),
    ]


def test_every_mask_mod_is_accepted_by_create_block_mask():
    n, heads, block = 37, 2, 16  # 37 is not a multiple of the block size
    probs = random_probs(heads, n, n, seed=3)
    g = torch.Generator().manual_seed(5)
    ctx = PatternContext(n, n, probs=probs, query=torch.randn(heads, n, 8, generator=g), key=torch.randn(heads, n, 8, generator=g))
    for spec in all_default_specs():
        mm = spec.build(ctx)
        bm = create_block_mask(mm, 1, heads, n, n, device="cpu", BLOCK_SIZE=block)
        blocks = bm.to_dense()[0]  # [heads, q blocks, kv blocks]: 1 where a block has any kept cell
        dense = P.materialize_heads(mm, heads, n, n)
        nb = math.ceil(n / block)
        want = torch.zeros(heads, nb, nb, dtype=torch.int32)
        for h in range(heads):
            for I in range(nb):
                for J in range(nb):
                    want[h, I, J] = int(dense[h, I * block:(I + 1) * block, J * block:(J + 1) * block].any())
        assert torch.equal(blocks.int(), want), spec.label


def test_spec_defaults_json_and_labels():
    for spec in all_default_specs():
        assert PatternSpec.from_json(spec.to_json()) == spec
    s = PatternSpec.of("sliding_window", window=5)
    assert s.params == (("window", 5), ("causal", False)) and s.label == "sliding_window(window=5)"
    assert PatternSpec.of("vertical_slash").needs == {"probs"} and PatternSpec.of("block_topk").needs == {"qk"}
    assert (PatternSpec.of("full") | PatternSpec.of("block_topk")).needs == {"qk"}
    plan = AttentionPlan.uniform(s, 2, 3, layers=[1], heads=[0, 2])
    assert plan.labels() == [["dense"] * 3, [s.label, "dense", s.label]]
    assert AttentionPlan.from_json(plan.to_json()) == plan


def test_bad_parameters_get_clear_messages():
    with pytest.raises(ValueError, match="larger than the sequence .17 tokens.: use at most 16"):
        PatternSpec.of("sliding_window", window=40).validate(17)
    with pytest.raises(ValueError, match="larger than the sequence"):
        PatternSpec.of("sliding_window", window=40).build(PatternContext(17, 17), strict=True)
    # Not strict: a window longer than a short sentence simply covers it.
    assert P.materialize(PatternSpec.of("sliding_window", window=40).build(PatternContext(5, 5)), 5, 5).all()
    with pytest.raises(ValueError, match="topk 9 is larger than the sequence"):
        PatternSpec.of("block_topk", block=4, topk=9).validate(17)
    with pytest.raises(ValueError, match="column 30 is larger"):
        PatternSpec.of("vertical_stripe", columns="0,30").validate(17)
    with pytest.raises(ValueError, match="unknown attention pattern"):
        PatternSpec.of("nope")
    with pytest.raises(ValueError, match="has no parameter wnidow"):
        PatternSpec.of("sliding_window", wnidow=3)
    with pytest.raises(ValueError, match="dilation must be at least 1"):
        PatternSpec.of("dilated_window", dilation=0)
    with pytest.raises(ValueError, match="must be an integer"):
        PatternSpec.of("sliding_window", window=2.5)
    with pytest.raises(ValueError, match="summary .5. must be at most stride .4."):
        PatternSpec.of("fixed", stride=4, summary=5)
    with pytest.raises(ValueError, match="part must be one of"):
        PatternSpec.of("strided", part="sideways")
    with pytest.raises(ValueError, match="cannot read"):
        P.parse_columns("a-b")
    with pytest.raises(ValueError, match="capture it first"):
        PatternSpec.of("vertical_slash").build(PatternContext(8, 8))
    with pytest.raises(ValueError, match="layers \\[5\\] do not exist"):
        AttentionPlan.uniform(None, 2, 2, layers=[5])
    assert P.parse_columns("3, 0-2, 3") == [0, 1, 2, 3]


def test_layer_mask_per_head():
    n = 11
    probs = random_probs(3, n, n, seed=1)
    ctx = PatternContext(n, n, probs=probs)
    w, vs = PatternSpec.of("sliding_window", window=1), PatternSpec.of("vertical_slash", vertical=2, slash=1)
    plan = AttentionPlan(((w, None, vs),))
    got = P.layer_mask(plan, 0, ctx)
    assert torch.equal(got[0], loop(n, n, lambda i, j: abs(i - j) <= 1))
    assert got[1].all()
    keep = vertical_slash_loop(probs[2].tolist(), 2, 1, 64, 1, 1, False)
    assert torch.equal(got[2], loop(n, n, keep))
