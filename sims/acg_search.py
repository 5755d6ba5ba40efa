"""Search token sequences that maximise a reward model: GCG / ACG (paper Section 4-5, Figure 6).

    python sims/acg_search.py --model DIR [--base-model DIR] --length L --iters I
        --topk K --candidates C --restarts R --schedule gcg|linear|paper --seed S
        [--penalty LAMBDA] [--edits N] [--edits-start N --edits-end N] [--banned ID ...]
        [--retokenize] [--chunk N] [--out DIR] [--json]

The objective is reward(x) + lambda * log pi0(x) (lambda = --penalty, default
0: pure reward). With --base-model the base LM's log-probability of every
restart's best sequence is reported (and plotted against reward, Figure 6),
together with the Section 5 mixture KL of pi0 mixed with that sequence.

Writes to --out (default runs/acg_search/<time>/): config.json, best.json
(rewritten atomically after every chunk, so an interrupt keeps the best
sequences found so far), results.json, rows.jsonl, traces.npz,
mixture_kl.csv (with a base model), reward_vs_iteration.png,
reward_vs_logprob.png (with a base model). Bad input prints one line and
exits with status 2; Ctrl-C writes what was found and exits with status 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from io import BytesIO
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax.io import (UsageError, atomic_write, log, save_csv, save_figure, save_json, save_jsonl,
                             start_run)
from goodhart_jax.search import (SearchConfig, make_scan, make_search, mixture_kl,
                                 mixture_kl_approx, retokenize_filter, search_params)
from goodhart_jax.search.schedules import SCHEDULES


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = ""                  # reward-model checkpoint directory
    base_model: str | None = None    # base causal LM (log pi0); or the Llama config dir of a Starling RM
    length: int = 32                 # L, tokens per sequence (the paper: 133)
    iters: int = 100                 # I, steps per restart (the paper: 1000)
    topk: int = 3                    # tokens kept per position (the paper's k = 3)
    candidates: int = 64             # C, candidates scored per step
    restarts: int = 4                # R, independent searches (vmapped)
    schedule: str = "paper"          # n(i): gcg (constant --edits), linear, paper (9 -> 2)
    edits: int = 1                   # n of the gcg schedule
    edits_start: int = 9             # linear schedule from ...
    edits_end: int = 2               # ... to
    penalty: float = 0.0             # lambda: objective = reward + lambda * log pi0 (needs --base-model)
    banned: tuple[int, ...] | None = None   # banned ids; default: the config's bos/eos/pad ids
    retokenize: bool = False         # keep only sequences with encode(decode(x)) == x (tokenizer in --model)
    dtype: str | None = None         # float32 | bfloat16 (default: as stored)
    chunk: int = 0                   # steps per jitted call between progress updates (0: about I/50)
    alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)   # mixture weights for the mixture KL
    seed: int = 0
    out: str | None = None
    json: bool = False               # print one JSON row per restart on stdout


def _special_ids(model_dir: str, base_dir: str | None, vocab: int) -> tuple[int, ...]:
    ids = set()
    for d in (model_dir, base_dir):
        if d is None or not (Path(d) / "config.json").is_file():
            continue
        cfg = json.loads((Path(d) / "config.json").read_text())
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = cfg.get(name)
            for i in (v if isinstance(v, list) else [v]):
                if isinstance(i, int) and 0 <= i < vocab:
                    ids.add(i)
    return tuple(sorted(ids))


def _load(cfg: Config):
    """-> (reward Scorer, base Scorer or None, banned ids, token filter or None)."""
    try:
        from goodhart_jax import models
    except ImportError as e:  # pragma: no cover - the models package is part of the repo
        raise UsageError(f"goodhart_jax.models is not available ({e}); cannot load --model") from e
    if not cfg.model:
        raise UsageError("--model DIR is required")
    try:
        needs_config = not (Path(cfg.model) / "config.json").is_file()
        rm = models.load_model(cfg.model, base_model=cfg.base_model if needs_config else None,
                               dtype=cfg.dtype)
        if rm.reward_head is None:
            raise UsageError(f"{cfg.model} is a causal LM with no reward head; --model needs a reward model")
        reward = models.reward_scorer(rm)
        base = None
        if cfg.base_model is not None:
            try:
                lm = models.load_model(cfg.base_model, dtype=cfg.dtype)
            except models.CheckpointError:
                if not needs_config:
                    raise
                lm = None   # a config-only directory for a Starling RM: no base LM weights
                log(f"note: {cfg.base_model} holds only the config of {cfg.model}; "
                    "no base log-probabilities")
            if lm is not None:
                if not lm.has_lm_head:
                    raise UsageError(f"--base-model {cfg.base_model} has no language-model head")
                if lm.vocab_size != rm.vocab_size:
                    raise UsageError(f"--base-model vocab {lm.vocab_size} != --model vocab {rm.vocab_size}")
                base = models.logprob_scorer(lm)
    except models.CheckpointError as e:
        raise UsageError(str(e)) from e
    except NotImplementedError as e:
        raise UsageError(str(e)) from e
    if cfg.penalty != 0.0 and base is None:
        raise UsageError("--penalty needs --base-model DIR with a causal LM")
    banned = (_special_ids(cfg.model, cfg.base_model, reward.vocab_size)
              if cfg.banned is None else tuple(cfg.banned))
    bad = [b for b in banned if not 0 <= b < reward.vocab_size]
    if bad:
        raise UsageError(f"--banned id {bad[0]} is outside the vocabulary [0, {reward.vocab_size})")
    token_filter = None
    if cfg.retokenize:
        try:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        except Exception as e:
            raise UsageError(f"--retokenize: no tokenizer could be loaded from {cfg.model} ({e})") from e
        token_filter = retokenize_filter(tok, banned)
    return reward, base, banned, token_filter


def _validate(cfg: Config) -> None:
    for name in ("length", "iters", "topk", "candidates", "restarts", "edits", "edits_start",
                 "edits_end"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.chunk < 0:
        raise UsageError(f"--chunk must be >= 0, got {cfg.chunk}")
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"--schedule {cfg.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if cfg.dtype not in (None, "float32", "bfloat16"):
        raise UsageError(f"--dtype {cfg.dtype!r}; expected float32 or bfloat16")
    if any(not 0.0 < a < 1.0 for a in cfg.alphas):
        raise UsageError("--alphas must lie in (0, 1)")
    if not math.isfinite(cfg.penalty) or cfg.penalty < 0:
        raise UsageError(f"--penalty must be finite and >= 0, got {cfg.penalty}")


def _write_best(out: Path, tokens, reward, objective, iteration, interrupted=False) -> None:
    rows = [{"restart": r, "reward": float(reward[r]), "objective": float(objective[r]),
             "tokens": [int(t) for t in tokens[r]]} for r in range(len(tokens))]
    save_json(out / "best.json", {"iteration": int(iteration), "interrupted": interrupted,
                                  "restarts": rows})


def _plots(out: Path, traces: dict, rewards, logprobs) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    best, cur = traces["best_reward"], traces["reward"]
    it = np.arange(1, best.shape[1] + 1)
    for r in range(best.shape[0]):
        line, = ax.plot(it, best[r], lw=1.5, label=f"restart {r}" if best.shape[0] <= 8 else None)
        ax.plot(it, cur[r], lw=0.5, alpha=0.35, color=line.get_color())
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_title("coordinate-gradient search: best so far (thick), current (thin)")
    if best.shape[0] <= 8:
        ax.legend(fontsize=7)
    save_figure(fig, out / "reward_vs_iteration.png")
    written.append("reward_vs_iteration.png")
    if logprobs is not None:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(logprobs, rewards, s=25)
        ax.set_xlabel("base log-probability log pi0(x) (nats)")
        ax.set_ylabel("reward r(x)")
        ax.set_title("searched sequences (paper Figure 6)")
        save_figure(fig, out / "reward_vs_logprob.png")
        written.append("reward_vs_logprob.png")
    return written


def main(cfg: Config) -> dict:
    """Run the search; returns {"rows": [...], "traces": {...}, "mixture_kl": [...], ...}."""
    from tqdm import tqdm

    _validate(cfg)
    reward, base, banned, token_filter = _load(cfg)
    out = start_run("acg_search", cfg.out, dataclasses.asdict(cfg) | {"banned_resolved": list(banned)})

    try:
        scfg = SearchConfig(length=cfg.length, topk=cfg.topk, num_candidates=cfg.candidates,
                            num_iters=cfg.iters, schedule=cfg.schedule, edits=cfg.edits,
                            edits_start=cfg.edits_start, edits_end=cfg.edits_end, banned_ids=banned)
        in_objective = base if cfg.penalty else None
        init, step = make_search(scfg, reward, in_objective, token_filter)
    except ValueError as e:
        raise UsageError(str(e)) from e
    params = search_params(reward, in_objective, cfg.penalty)
    chunk = cfg.chunk or max(1, math.ceil(cfg.iters / 50))
    chunk = min(chunk, cfg.iters)
    n_chunks = math.ceil(cfg.iters / chunk)

    keys = jax.random.split(jax.random.key(cfg.seed), cfg.restarts)
    k_init, k_run = jax.vmap(jax.random.split, out_axes=1)(keys)   # as in goodhart_jax.search.search
    state = jax.jit(jax.vmap(init, in_axes=(0, None)))(k_init, params)
    run = jax.jit(jax.vmap(make_scan(step, chunk, cfg.iters), in_axes=(0, 0, None)))

    names = ("reward", "objective", "best_reward", "best_objective", "best_logprob", "num_edits")
    pieces = {k: [] for k in names}
    interrupted = False
    start = time.perf_counter()
    bar = tqdm(total=cfg.iters, desc="acg", unit="it", file=sys.stderr)
    try:
        for _ in range(n_chunks):
            state, info = run(k_run, state, params)
            live = np.asarray(info.active[0])
            for k in names:
                pieces[k].append(np.asarray(getattr(info, k))[:, live])
            _write_best(out, np.asarray(state.best_tokens), np.asarray(state.best_reward),
                        np.asarray(state.best_objective), int(state.iteration[0]))
            bar.update(int(live.sum()))
            bar.set_postfix(best=f"{float(jnp.max(state.best_reward)):.4g}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    traces = {k: (np.concatenate(v, axis=1) if v else np.zeros((cfg.restarts, 0)))
              for k, v in pieces.items()}

    # Report the models' own scores of the returned tokens (one batch of R rows).
    best_tokens = np.asarray(state.best_tokens)
    ids = jnp.asarray(best_tokens)
    mask = jnp.ones(ids.shape, jnp.int32)
    rewards = np.asarray(jax.jit(reward.score_tokens)(reward.params, ids, mask), np.float64)
    logprobs = (np.asarray(jax.jit(base.score_tokens)(base.params, ids, mask), np.float64)
                if base is not None else None)

    rows = []
    for r in range(cfg.restarts):
        row = {"kind": "acg", "restart": r, "reward": float(rewards[r]),
               "tokens": [int(t) for t in best_tokens[r]]}
        if logprobs is not None:
            row["logprob"] = float(logprobs[r])
        rows.append(row)
    kl_rows = []
    if logprobs is not None:
        alphas = np.asarray(cfg.alphas, np.float64)
        for r in range(cfg.restarts):
            exact = np.asarray(mixture_kl(jnp.asarray(logprobs[r], jnp.float32),
                                          jnp.asarray(alphas, jnp.float32)))
            approx = np.asarray(mixture_kl_approx(jnp.asarray(logprobs[r], jnp.float32),
                                                  jnp.asarray(alphas, jnp.float32)))
            kl_rows += [{"restart": r, "alpha": float(a), "logprob": float(logprobs[r]),
                         "kl_exact": float(e), "kl_approx": float(p)}
                        for a, e, p in zip(alphas, exact, approx)]

    _write_best(out, best_tokens, rewards, np.asarray(state.best_objective),
                int(state.iteration[0]), interrupted)
    save_jsonl(out / "rows.jsonl", rows)
    buf = BytesIO()
    np.savez(buf, tokens=best_tokens, **traces)
    atomic_write(out / "traces.npz", buf.getvalue())
    if kl_rows:
        save_csv(out / "mixture_kl.csv", kl_rows)
    plots = _plots(out, traces, rewards, logprobs) if traces["best_reward"].shape[1] else []
    steps = int(state.iteration[0])
    results = {"rows": rows, "mixture_kl": kl_rows, "iterations": steps, "seconds": seconds,
               "iters_per_s": steps / seconds if seconds > 0 else None,
               "interrupted": interrupted, "banned": list(banned), "plots": plots,
               "penalty": cfg.penalty, "out": str(out),
               "final_reward": rewards.tolist(), "traces": traces}
    save_json(out / "results.json", {k: v for k, v in results.items() if k != "traces"})
    if interrupted:
        log(f"interrupted after {steps} iterations: best sequences written to {out}")
        raise KeyboardInterrupt
    return results


# ---------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


HELP = {
    "model": "reward-model checkpoint directory (GPT-NeoX or Llama/Starling, PyTorch weights)",
    "base_model": "base causal LM directory: log pi0 of the best sequences, Figure 6, mixture KL",
    "length": "L, tokens per sequence (the paper: 133)",
    "iters": "I, steps per restart (the paper: 1000)",
    "topk": "k, tokens kept per position from the gradient (the paper: 3)",
    "candidates": "C, candidates scored per step in one batch",
    "restarts": "R, independent searches, vmapped",
    "schedule": "n(i): gcg = constant --edits, linear --edits-start -> --edits-end, "
                "paper = int((1e5/(i+1))**0.3)//4 + 2 (9 -> 2)",
    "edits": "n of the gcg schedule",
    "edits_start": "first n of the linear schedule",
    "edits_end": "last n of the linear schedule",
    "penalty": "lambda: objective = reward + lambda * log pi0 (needs --base-model)",
    "banned": "banned token ids (default: bos/eos/pad ids of the configs)",
    "retokenize": "keep only sequences with encode(decode(x)) == x (tokenizer in --model; host side)",
    "dtype": "float32 or bfloat16 (default: as stored)",
    "chunk": "steps per jitted call between progress updates and best.json writes (0: about I/50)",
    "alphas": "mixture weights of the Section 5 mixture KL",
    "seed": "PRNG seed",
    "out": "output directory (default: runs/acg_search/<time>)",
    "json": "print one JSON row per restart on stdout",
}


def _parser() -> argparse.ArgumentParser:
    """argparse built from the Config fields (types and defaults)."""
    p = _Parser(prog="acg_search.py", description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.type in ("bool", bool) or f.name == "banned" else " (default: %(default)s)"
        kw = {"help": HELP[f.name] + default}
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", default=f.default, **kw)
        elif f.name == "banned":
            p.add_argument(flag, type=int, nargs="*", default=None, metavar="ID", **kw)
        elif f.name == "alphas":
            p.add_argument(flag, type=float, nargs="+", default=f.default, metavar="A", **kw)
        elif f.name == "schedule":
            p.add_argument(flag, choices=SCHEDULES, default=f.default, **kw)
        elif f.name in ("model", "base_model", "out", "dtype"):
            p.add_argument(flag, default=f.default, metavar="DIR" if f.name != "dtype" else "DTYPE",
                           **kw)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, **kw)
    return p


def parse_args(argv=None) -> Config:
    ns = vars(_parser().parse_args(argv))
    for k in ("banned", "alphas"):
        if ns[k] is not None:
            ns[k] = tuple(ns[k])
    return Config(**ns)


def cli(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        results = main(cfg)
    except UsageError as e:
        print(f"acg_search.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acg_search.py: interrupted: the best sequences found so far are on disk", file=sys.stderr)
        return 130
    if cfg.json:
        for row in results["rows"]:
            print(json.dumps(row))
    else:
        for row in results["rows"]:
            extra = f" logprob={row['logprob']:.6g}" if "logprob" in row else ""
            print(f"restart {row['restart']}: reward={row['reward']:.6g}{extra}")
        print(f"{results['iterations']} iterations x {cfg.restarts} restarts in {results['seconds']:.1f} s "
              f"(incl. compile); outputs in {results['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
