"""The lab's RL against its exact optimum: share of the gap J(pi*) - J(pi0) closed per (policy, batch, steps, lr).

For each pi0 (`today`: `experiment.build_base`'s source, before issue 22 the former degenerate one; `spread`:
the same source with EOS bias -2 instead of -3), seed, light-noise proxy ("normal", scale 1: `direct` and
`learned` on 4000 pairs, 600 Bradley-Terry steps, standardised to mean 0 / sd 1 under pi0) and RL beta, one
`experiment.rl_points` run per setting; printed: its final share closed (1 - gap / gap at step 0) and its CPU
seconds (process time, both cores; compile excluded by a warm-up run of each setting's shape).

Settings are "policy:batch:steps:lr[:pass]" with policy `table` (pi0 x exp(fresh LM + 30 x table), the default
of `experiment.rl_policy`), `residual` (pi0 x exp(fresh LM)) or `finetune` (pi0's own LM), and pass `auto`
(default), `rows` or `tree` (`rl.RLConfig.policy_pass`). The bases and proxies are cached in --cache (rebuilt
when absent; delete it after changing the lab's defaults).

    python benchmarks/rl_sweep.py [--depth 4] [--seeds 0 1 2] [--pi0 today spread] [--betas 0.3 1]
        [--settings table:1024:250:3e-3 residual:128:500:3e-3 ...] [--cache /tmp/rl_sweep]
"""
from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax.lab import experiment, lm, rewards
from goodhart_jax.lab import tree as lab_tree


def build(key, vocab: int, depth: int, pi0: str):
    """(Base, {kind: standardised normal proxy [N]}) for the default lab at (vocab, depth)."""
    kb = jax.random.fold_in(key, 0)
    if pi0 == "today":
        base = experiment.build_base(kb, vocab, depth, lm_steps=600)
    else:
        k_src, k_lm, k_gold = jax.random.split(kb, 3)
        cfg = lm.LMConfig(vocab, depth)
        params = lm.train_lm(k_lm, cfg, lm.markov_source(k_src, vocab, eos_bias=-2.0), 600).params
        tree = lab_tree.exact_tree(lm.make_logits(cfg), params, depth)
        base = experiment.Base(lm.make_logits(cfg), params, tree, rewards.gold_reward(
            k_gold, rewards.gold_config(vocab, depth), tree), cfg)
    kp = jax.random.fold_in(jax.random.fold_in(key, 1), 0)
    proxies = {}
    for kind in ("direct", "learned"):
        b = experiment.build_proxy(kp, base, "normal", 1.0, kind, 4000 if kind == "learned" else None, 600)
        proxies[kind] = np.asarray(rewards.standardise(b.proxy.reward, base.tree.log_p))
    return base, proxies


def cached(cache: Path, vocab: int, depth: int, pi0: str, seed: int):
    path = cache / f"{pi0}_A{vocab}_L{depth}_s{seed}.pkl"
    if path.exists():
        d = pickle.loads(path.read_bytes())
        cfg = lm.LMConfig(vocab, depth)
        tree = lab_tree.LMTree(tuple(jnp.asarray(x) for x in d["log_pi0"]), jnp.asarray(d["tokens"]),
                               jnp.asarray(d["log_p"]))
        g = jnp.asarray(d["gold"])
        gold = rewards.Gold(g, g, jnp.float32(0), jnp.float32(1))  # RL reads the standardised reward only
        return experiment.Base(lm.make_logits(cfg), jax.tree.map(jnp.asarray, d["params"]), tree, gold, cfg), d["proxy"]
    base, proxies = build(jax.random.key(seed), vocab, depth, pi0)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(dict(params=jax.device_get(base.params), log_pi0=[np.asarray(x) for x in
                                       base.tree.log_pi0], tokens=np.asarray(base.tree.tokens),
                                       log_p=np.asarray(base.tree.log_p), gold=np.asarray(base.gold.reward),
                                       proxy=proxies)))
    return base, proxies


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pi0", nargs="+", default=["today"], choices=["today", "spread"])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--settings", nargs="+", default=["table:1024:250:3e-3"])
    ap.add_argument("--cache", default="/tmp/rl_sweep")
    a = ap.parse_args()
    for setting in a.settings:
        policy, batch, steps, lr, *how = setting.split(":")
        batch, steps, lr = int(batch), int(steps), float(lr)
        shares, cpu = {}, []
        warm = False
        for pi0 in a.pi0:
            for seed in a.seeds:
                base, proxies = cached(Path(a.cache), a.vocab, a.depth, pi0, seed)
                for kind, proxy in proxies.items():
                    tree = lab_tree.mdp_tree(base.tree, base.gold.reward, jnp.asarray(proxy))
                    for j, beta in enumerate(a.betas):
                        key = jax.random.fold_in(jax.random.key(1000 + seed), j)
                        run = lambda: experiment.rl_points(key, base, tree, beta, steps, steps // 5, batch, lr,
                                                           residual=policy != "finetune",
                                                           table=policy == "table",
                                                           policy_pass=how[0] if how else "auto")
                        if not warm:
                            run()
                            warm = True
                        t0 = time.process_time()
                        rows = run()
                        cpu.append(time.process_time() - t0)
                        s = [r["share_closed"] for r in rows]
                        shares.setdefault(pi0, []).append(s[-1])
                        print(f"{setting} {pi0} seed {seed} {kind:7s} beta {beta:g}: share closed "
                              + " ".join(f"{x:.2f}" for x in s) + f"  ({cpu[-1]:.1f} s CPU)", flush=True)
        for pi0, s in shares.items():
            s = np.asarray(s)
            print(f"SUMMARY {setting} pi0 {pi0}: final share min {s.min():.3f} mean {s.mean():.3f} "
                  f">= 0.9 in {np.sum(s >= 0.9)}/{s.size}; CPU a run {np.median(cpu):.1f} s (median)", flush=True)


if __name__ == "__main__":
    main()
