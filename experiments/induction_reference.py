"""Independent reference for the induction-head phase change (issue 17), in plain JAX + optax.

Nothing from ``archcmp`` is imported: this is a second implementation to tell a task-design problem
from a bug in the framework's model / training / scoring path. A two-layer attention-only transformer
(learned positions, pre-LayerNorm, optional tied embeddings) is trained as a language model on
sequences holding a random segment and its repeat, and at every ``--eval-every`` steps it prints the
loss on the first and on the repeated occurrence and each head's prefix-matching and previous-token
score (scored here with its own code, not the analysis package's).

Layouts (``--layout``):
  * ``archcmp``: ``BOS SEP x x EOS``, x of L symbols (L uniform in [lmin, lmax]), padded to the
    longest; the layout of ``task=induction``.
  * ``filler``: a fixed-length row of random symbols in which a segment of L symbols is copied right
    after itself at a random offset (the repeat's position varies from row to row).

  python experiments/induction_reference.py --vocab 26 --layout archcmp --steps 2000
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


# ----------------------------------------------------------------------------- data
def make_batch(rng: np.random.Generator, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens [B, T], loss mask [B, T-1] (valid next-token targets), repeat mask [B, T-1]: the
    predictions of repeat tokens 2..L (their input is repeat token 1..L-1)."""
    B, V = args.batch, args.vocab
    bos, sep, eos, pad = V, V + 1, V + 2, V + 3
    if args.layout == "archcmp":
        T = 2 * args.lmax + 3
        tok = np.full((B, T), pad, np.int32)
        valid = np.zeros((B, T - 1), bool)
        rep = np.zeros((B, T - 1), bool)
        for b in range(B):
            n = int(rng.integers(args.lmin, args.lmax + 1))
            x = rng.integers(0, V, n)
            row = np.concatenate([[bos, sep], x, x, [eos]])
            tok[b, :len(row)] = row
            valid[b, :len(row) - 1] = True
            # input at position p predicts row[p+1]; repeat token i (i=1..n-1, 0-based) sits at 2+n+i
            rep[b, 2 + n:2 + 2 * n - 1] = True
        return tok, valid, rep
    T = args.seq_len
    if args.layout == "pairs":
        return _pairs_batch(rng, args)
    tok = rng.integers(0, V, (B, T)).astype(np.int32)
    rep = np.zeros((B, T - 1), bool)
    for b in range(B):
        n = int(rng.integers(args.lmin, args.lmax + 1))
        s = int(rng.integers(0, T - 2 * n + 1))
        tok[b, s + n:s + 2 * n] = tok[b, s:s + n]
        rep[b, s + n:s + 2 * n - 1] = True
    return tok, np.ones((B, T - 1), bool), rep


def _pairs_batch(rng: np.random.Generator, args):
    """``pairs`` layout: per row, K fresh trigger symbols (distinct), each with a random answer drawn
    from the other symbols; each trigger-answer pair sits at n random non-overlapping places in a row
    of random filler symbols (fillers never equal a trigger). Only the token right before an answer
    (its trigger) says what it is, so a look-back other than 1 does not help. rep marks the inputs
    that are a trigger's 2nd..n-th occurrence (their target is a predictable answer)."""
    B, V, T, K, n = args.batch, args.vocab, args.seq_len, args.pairs, args.occurrences
    tok = np.zeros((B, T), np.int32)
    rep = np.zeros((B, T - 1), bool)
    first = np.zeros((B, T - 1), bool)
    for b in range(B):
        perm = rng.permutation(V)
        trig, rest = perm[:K], perm[K:]
        ans = rng.choice(rest, K)
        row = rng.choice(rest, T)
        # K*n slots of width 2 at random non-overlapping places: choose gaps
        slots = K * n
        free = T - 2 * slots
        cuts = np.sort(rng.integers(0, free + 1, slots))
        starts = cuts + 2 * np.arange(slots)
        order = rng.permutation(np.repeat(np.arange(K), n))
        seen = set()
        for s0, j in zip(starts, order):
            row[s0], row[s0 + 1] = trig[j], ans[j]
            (rep if j in seen else first)[b, s0] = True
            seen.add(j)
        tok[b] = row
    return tok, np.ones((B, T - 1), bool), rep, first


# ----------------------------------------------------------------------------- model
def init_params(key, args, n_tok: int, T: int) -> dict:
    D, H, L = args.d, args.heads, 2
    K = D // H
    ks = jax.random.split(key, 4 + 2 * L)
    s = 0.02
    p = {"emb": jax.random.normal(ks[0], (n_tok, D)) * s, "pos": jax.random.normal(ks[1], (T, D)) * s,
         "ln_f": (jnp.ones(D), jnp.zeros(D)), "layers": []}
    if not args.tied:
        p["unemb"] = jax.random.normal(ks[2], (D, n_tok)) * s
    for i in range(L):
        p["layers"].append({"ln": (jnp.ones(D), jnp.zeros(D)),
                            "qkv": jax.random.normal(ks[4 + 2 * i], (3, D, H, K)) * D ** -0.5,
                            "o": jax.random.normal(ks[5 + 2 * i], (H, K, D)) * (H * K) ** -0.5 / np.sqrt(2 * L)})
    return p


def layer_norm(x, gb):
    g, b = gb
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / jnp.sqrt(v + 1e-5) * g + b


def forward(p, tok):
    """tok [B, T] -> logits [B, T, V], attention patterns [L, B, H, T, T]."""
    B, T = tok.shape
    x = p["emb"][tok] + p["pos"][:T]  # [B, T, D]
    causal = jnp.tril(jnp.ones((T, T), bool))
    pats = []
    for lp in p["layers"]:
        h = layer_norm(x, lp["ln"])
        q, k, v = (jnp.einsum("btd,dhk->bhtk", h, lp["qkv"][j]) for j in range(3))  # [B, H, T, K]
        s = jnp.einsum("bhqk,bhsk->bhqs", q, k) / np.sqrt(q.shape[-1])
        a = jax.nn.softmax(jnp.where(causal, s, -1e30), axis=-1)
        pats.append(a)
        x = x + jnp.einsum("bhqs,bhsk,hkd->bqd", a, v, lp["o"])
    x = layer_norm(x, p["ln_f"])
    logits = x @ (p["emb"].T if "unemb" not in p else p["unemb"])
    return logits, jnp.stack(pats)


def token_loss(p, tok):
    logits, pats = forward(p, tok[:, :-1])
    lp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(lp, tok[:, 1:, None], -1)[..., 0], pats  # [B, T-1]


# ----------------------------------------------------------------------------- scores
def head_scores(pats, tok, rep):
    """Per layer and head: prefix matching (mass from each repeat query on the positions right after
    earlier occurrences of its token) and previous-token (mass on the position before). -> 2 x [L, H]"""
    pats, tok = np.asarray(pats, np.float64), np.asarray(tok)[:, :-1]  # inputs [B, T-1]
    B, T = tok.shape
    qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
    prev = np.concatenate([np.full((B, 1), -1), tok[:, :-1]], 1)
    tgt = (prev[:, None, :] == tok[:, :, None]) & (ki >= 1) & (ki <= qi) & rep[:, :, None]
    has = tgt.any(-1)
    pm = np.einsum("lbhqk,bqk->lbhq", pats, tgt).transpose(0, 2, 1, 3)[..., has].mean(-1)
    pt = np.diagonal(pats, -1, 3, 4)  # [L, B, H, T-1]
    pt = pt.transpose(0, 2, 1, 3)[..., rep[:, 1:]].mean(-1)
    return pm, pt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--layout", choices=("archcmp", "filler", "pairs"), default="filler")
    ap.add_argument("--pairs", type=int, default=6, help="pairs layout: trigger-answer pairs per row")
    ap.add_argument("--occurrences", type=int, default=3, help="pairs layout: places each pair appears")
    ap.add_argument("--lmin", type=int, default=8)
    ap.add_argument("--lmax", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON lines file for the per-eval numbers")
    ap.add_argument("--save", default=None, help="pickle the latest parameters here (at every evaluation)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    T = 2 * args.lmax + 3 if args.layout == "archcmp" else args.seq_len
    params = init_params(jax.random.PRNGKey(args.seed), args, args.vocab + 4, T)
    sched = optax.join_schedules([optax.linear_schedule(0.0, args.lr, args.warmup), optax.constant_schedule(args.lr)],
                                 [args.warmup])
    opt = optax.adamw(sched, b1=0.9, b2=0.98, weight_decay=0.0)
    state = opt.init(params)

    def loss_fn(p, tok, valid):
        l, _ = token_loss(p, tok)
        return (l * valid).sum() / valid.sum()

    @jax.jit
    def step(p, s, tok, valid):
        loss, g = jax.value_and_grad(loss_fn)(p, tok, valid)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    eval_batch = make_batch(np.random.default_rng(10_000 + args.seed), argparse.Namespace(**{**vars(args), "batch": 256}))
    eval_tok, eval_valid, eval_rep = eval_batch[:3]
    ev = jax.jit(token_loss)
    first = eval_batch[3] if len(eval_batch) > 3 else np.zeros_like(eval_rep)
    if args.layout == "archcmp":  # first occurrence tokens 2..L: inputs at 2..L
        for b in range(len(first)):
            n = int(eval_rep[b].sum()) + 1
            first[b, 2:1 + n] = True
    out = open(args.out, "w") if args.out else None
    t0 = time.time()
    for i in range(args.steps + 1):
        if i % args.eval_every == 0:
            l, pats = ev(params, eval_tok)
            l = np.asarray(l)
            pm, pt = head_scores(pats, eval_tok, eval_rep)
            rec = {"step": i, "repeat_loss": float(l[eval_rep].mean()),
                   "other_loss": float(l[first].mean() if first.any() else l[eval_valid & ~eval_rep].mean()),
                   "pm": pm.round(3).tolist(), "pt": pt.round(3).tolist(), "sec": round(time.time() - t0, 1)}
            print(f"{i:5d} rep {rec['repeat_loss']:.3f} other {rec['other_loss']:.3f} "
                  f"L2 pm max {pm[1].max():.2f} L1 pt max {pt[0].max():.2f} ({rec['sec']}s)", flush=True)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if args.save:  # the latest parameters, for a look at the heads mid-run
                import pickle
                with open(args.save, "wb") as f:
                    pickle.dump(jax.tree.map(np.asarray, params), f)
        if i == args.steps:
            break
        tok, valid = make_batch(rng, args)[:2]
        params, state, _ = step(params, state, tok, valid)


if __name__ == "__main__":
    main()
