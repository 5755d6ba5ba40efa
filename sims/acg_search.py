"""Search token sequences that maximise a reward model: GCG / ACG (paper Section 4-5, Figure 6).

Objective: reward(x) + lambda log pi0(x) (--penalty lambda, default 0). With --base-model each restart's best
sequence also gets log pi0 (Figure 6) and the Section 5 mixture KL. Writes config.json, best.json (after every
chunk of steps), results.json, rows.jsonl, traces.npz, reward_vs_iteration.png; with a base model also
mixture_kl.csv and reward_vs_logprob.png.

    python sims/acg_search.py --model DIR [--base-model DIR] --length 16 --iters 200 --restarts 8 [--json]
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
import math

import jax
import numpy as np

from goodhart_jax import io, models
from goodhart_jax.models.loading import load_reward_and_base, load_tokenizer, special_token_ids
from goodhart_jax.models.scoring import max_length
from goodhart_jax.search import SearchConfig, best_record, rescore, retokenize_filter, run_chunks, search_chunks
from goodhart_jax.search.schedules import SCHEDULES

_ONE = cli.at_least("value", 1)
_NONNEG = cli.each("--penalty", lambda x: math.isfinite(x) and x >= 0, "finite and >= 0")
_UNIT = cli.within("--alphas", 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    model: str = cli.arg("", "reward-model checkpoint (GPT-NeoX or Llama/Starling)", metavar="DIR", required=True)
    base_model: str | None = cli.arg(None, "base causal LM (log pi0, Figure 6, mixture KL), or a Starling RM's "
                                     "config", metavar="DIR")
    search: SearchConfig = cli.nest(
        SearchConfig, hide=("banned_ids", "from_best", "exclude_current", "share_prefix", "dedup_first_layer"),
        length=cli.arg(32, "L, tokens per sequence (the paper: 133)", metavar="L", check=_ONE),
        num_iters=cli.arg(100, "I, steps per restart (the paper: 1000)", flag="--iters", metavar="I", check=_ONE),
        topk=cli.arg(3, "k, tokens kept per position from the gradient (the paper: 3)", metavar="K", check=_ONE),
        num_candidates=cli.arg(64, "C, candidates scored per step in one batch", flag="--candidates", metavar="C",
                               check=_ONE),
        schedule=cli.arg("paper", "n(i): gcg = constant --edits, linear --edits-start -> --edits-end, "
                         "paper = int((1e5/(i+1))**0.3)//4 + 2 (9 -> 2)", choices=SCHEDULES),
        edits=cli.arg(1, "n of the gcg schedule", metavar="N", check=_ONE),
        edits_start=cli.arg(9, "first n of the linear schedule", metavar="N", check=_ONE),
        edits_end=cli.arg(2, "last n of the linear schedule", metavar="N", check=_ONE))
    """The search's settings, flags of their own (--length, --iters, --topk, --candidates, --schedule, --edits,
    --edits-start, --edits-end); the banned ids are --banned, resolved when the models are loaded."""
    restarts: int = cli.arg(4, "R, independent searches, vmapped", metavar="R", check=_ONE)
    penalty: float = cli.arg(0.0, "lambda: objective reward + lambda log pi0 (needs --base-model)", metavar="LAMBDA",
                             check=_NONNEG)
    banned: tuple[int, ...] | None = cli.arg(None, "banned ids (default: the configs' bos/eos/pad)", metavar="ID",
                                             nargs="*")
    retokenize: bool = cli.arg(False, "keep only sequences with encode(decode(x)) == x (tokenizer in --model)")
    dtype: str | None = cli.arg(None, "parameter dtype (default: as stored)", choices=("float32", "bfloat16"))
    chunk: int = cli.arg(0, "steps per jitted call, then progress and best.json (0: about I/50)", metavar="N",
                         check=cli.at_least("value", 0))
    alphas: tuple[float, ...] = cli.arg((1e-4, 1e-3, 1e-2, 1e-1), "mixture weights of the Section 5 mixture KL",
                                        metavar="A", check=_UNIT)
    seed: int = cli.arg(0, "PRNG seed", metavar="S", check=cli.seed)


def load(cfg: Config):
    """-> (reward Scorer, base Scorer or None, banned ids, token filter or None); bad input raises InputError."""
    rm, lm = load_reward_and_base(cfg.model, cfg.base_model, cfg.dtype)  # CheckpointError: bad input
    if cfg.base_model is not None and lm is None:
        io.log(f"note: {cfg.base_model} holds only the config of {cfg.model}; no base log-probabilities")
    if cfg.penalty != 0.0 and lm is None:
        raise cli.InputError("--penalty needs --base-model DIR with a causal LM")
    length = cfg.search.length
    if (m := min(filter(None, (max_length(rm), lm and max_length(lm))), default=None)) and length > m:
        raise cli.InputError(f"--length {length}: the models take at most {m} tokens")
    banned = special_token_ids((cfg.model, cfg.base_model), rm.vocab_size) if cfg.banned is None else cfg.banned
    token_filter = retokenize_filter(load_tokenizer(cfg.model), banned) if cfg.retokenize else None
    return models.reward_scorer(rm), None if lm is None else models.logprob_scorer(lm), banned, token_filter


def main(cfg: Config) -> dict:
    """Run the search; returns results.json's dict {"rows", "mixture_kl", "iterations", ...} and "traces"."""
    reward, base, banned, token_filter = load(cfg)
    with cli.inputs():  # sizes or banned ids the vocabulary cannot serve
        scfg = dataclasses.replace(cfg.search, banned_ids=banned)
        chunks = search_chunks(jax.random.key(cfg.seed), scfg, reward, base if cfg.penalty else None,
                               penalty=cfg.penalty, num_restarts=cfg.restarts, token_filter=token_filter,
                               chunk=cfg.chunk)
    with cli.Run("acg_search", cfg, results=None) as run:
        run.save_json("config.json", cli.flag_values(cfg) | {"banned_resolved": list(banned)})
        with run.progress(None, "acg", total=scfg.num_iters) as bar:
            def after_chunk(state, info):  # info: every step so far, [R, steps]
                run.save_json("best.json", best_record(state.best_tokens, state.best_reward, state.best_objective,
                                                       state.iteration[0]))
                bar.update(info.active.shape[1] - bar.n)
                bar.set_postfix(best=f"{np.max(state.best_reward):.4g}")
            done = run_chunks(chunks, after_chunk)  # Ctrl-C before the first chunk: only config.json is on disk
        steps, traces = done.steps, done.traces()  # traces: [R, steps] each
        found = rescore(done.state.best_tokens, reward, base, cfg.alphas)  # the models' own scores of the tokens
        rows, kl_rows = found.rows(), found.kl_rows()
        run.save_json("best.json", best_record(found.tokens, found.reward, done.state.best_objective, steps,
                                               done.interrupted))
        run.write("rows.jsonl", io.jsonl_text(rows))
        run.write("traces.npz", io.npz_bytes(tokens=found.tokens, **traces))
        if kl_rows:
            run.write("mixture_kl.csv", io.csv_text(kl_rows))
        if cfg.plots:
            from goodhart_jax.plots import acg_search as plots
            run.figure("reward_vs_iteration.png", plots.reward_vs_iteration(traces["best_reward"], traces["reward"]))
            if base is not None:
                run.figure("reward_vs_logprob.png", plots.reward_vs_logprob(found.logprob, found.reward))
        results = dict(rows=rows, mixture_kl=kl_rows, iterations=steps, seconds=done.seconds,
                       iters_per_s=done.iters_per_s, interrupted=done.interrupted, banned=list(banned),
                       plots=[f for f in run.files if f.endswith(".png")], penalty=cfg.penalty, out=str(run.dir),
                       final_reward=found.reward.tolist())
        run.save_json("results.json", results)
        if done.interrupted:
            run.log(f"interrupted after {steps} of {scfg.num_iters} iterations: best.json holds each restart's best "
                    "sequence of those steps")
            raise KeyboardInterrupt
        run.emit(rows)  # stdout with --json
        if not cfg.json:
            print(found.text() + f"{steps} iterations x {cfg.restarts} restarts in {done.seconds:.1f} s (incl. "
                  f"compile); outputs in {run.dir}")
    return results | {"traces": traces}


if __name__ == "__main__":
    cli.main(Config, main)
