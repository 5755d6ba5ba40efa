"""Score token sequences with a ported reward model (or a base LM's log-probability).

    python sims/score_rewards.py --model DIR [--base-model DIR]
        (--input TOKENS.npy [--mask MASK.npy] | --random-tokens N --length L)
        [--logprob] [--batch B] [--dtype float32|bfloat16] [--seed S] [--out FILE] [--json]

Random-token mode draws ids uniformly from the vocabulary, as the paper did
(30000 x 1024 tokens). Bad input prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from goodhart_jax import models
from goodhart_jax.io import atomic_write


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = ""                 # checkpoint directory
    base_model: str | None = None   # config (Starling) or causal LM for --logprob
    input: str | None = None        # TOKENS.npy, int [B, T]
    mask: str | None = None         # MASK.npy, [B, T], 1 for real tokens
    random_tokens: int = 0          # N random sequences instead of --input
    length: int = 0                 # L, their length
    logprob: bool = False           # causal-LM log-probability instead of the reward head
    batch: int = 8
    dtype: str = "float32"
    seed: int = 0
    out: str | None = None          # .npy (scores) or .json (rows); config written beside it
    json: bool = False              # print one JSON row per sequence


class InputError(ValueError):
    """Bad command-line input (reported in one line, exit status 2)."""


def _load(cfg: Config) -> models.LoadedModel:
    model = models.load_model(cfg.model, base_model=cfg.base_model, dtype=cfg.dtype)
    if cfg.logprob and not model.has_lm_head:
        if cfg.base_model is None:
            raise InputError(f"--logprob: {cfg.model} has no language-model head; pass --base-model DIR "
                             "with the base causal LM")
        model = models.load_model(cfg.base_model, dtype=cfg.dtype)
        if not model.has_lm_head:
            raise InputError(f"--logprob: neither {cfg.model} nor {cfg.base_model} has a language-model head")
    if not cfg.logprob and model.reward_head is None:
        raise InputError(f"{cfg.model} is a causal LM with no reward head; use --logprob")
    return model


def _tokens(cfg: Config, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    if (cfg.input is None) == (cfg.random_tokens <= 0):
        raise InputError("give exactly one of --input TOKENS.npy or --random-tokens N --length L")
    if cfg.input is None:
        if cfg.length <= 0:
            raise InputError("--random-tokens needs --length L > 0")
        key = jax.random.key(cfg.seed)
        tokens = np.asarray(jax.random.randint(key, (cfg.random_tokens, cfg.length), 0, vocab))
        return tokens, np.ones_like(tokens, dtype=np.int32)
    try:
        tokens = np.load(cfg.input)
    except (OSError, ValueError) as e:
        raise InputError(f"--input {cfg.input}: cannot read a .npy array ({e})") from e
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise InputError(f"--input must be an integer array [B, T]; got {tokens.dtype} {tokens.shape}")
    if tokens.size == 0:
        raise InputError(f"--input has no tokens (shape {tokens.shape})")
    bad = np.argwhere((tokens < 0) | (tokens >= vocab))
    if len(bad):
        i, j = bad[0]
        raise InputError(f"token id {tokens[i, j]} at [{i}, {j}] is outside the vocabulary [0, {vocab})"
                         + (f" ({len(bad)} such ids)" if len(bad) > 1 else ""))
    if cfg.mask is None:
        return tokens, np.ones_like(tokens, dtype=np.int32)
    try:
        mask = np.load(cfg.mask)
    except (OSError, ValueError) as e:
        raise InputError(f"--mask {cfg.mask}: cannot read a .npy array ({e})") from e
    if mask.shape != tokens.shape:
        raise InputError(f"--mask has shape {mask.shape} but the tokens have shape {tokens.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise InputError("--mask must hold only 0 and 1")
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if len(empty):
        raise InputError(f"--mask row {empty[0]} has no real tokens")
    return tokens, mask.astype(np.int32)


def main(cfg: Config) -> dict:
    """Load, score, write; returns {"kind", "scores" [N], "tokens_per_s", "seconds", ...}."""
    if cfg.batch <= 0:
        raise InputError("--batch must be positive")
    model = _load(cfg)
    tokens, mask = _tokens(cfg, model.vocab_size)
    kind = "logprob" if cfg.logprob else "reward"
    fn = models.make_logprob_fn(model) if cfg.logprob else models.make_reward_fn(model)
    mesh = models.data_mesh()
    params = models.shard_params(model.params, mesh)
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(tokens), desc=f"scoring ({kind})", unit="seq", file=sys.stderr,
              disable=cfg.input is not None and len(tokens) <= cfg.batch) as bar:
        scores = models.score_array(fn, params, tokens, mask, batch_size=cfg.batch, mesh=mesh,
                                    progress=bar.update)
    seconds = time.perf_counter() - start
    result = {"kind": kind, "scores": scores, "seconds": seconds, "tokens": int(mask.sum()),
              "tokens_per_s": float(mask.sum() / seconds), "arch": model.arch, "layout": model.layout,
              "devices": len(mesh.devices.reshape(-1))}
    if cfg.out:
        out = Path(cfg.out)
        if out.suffix == ".npy":
            buf = io.BytesIO()
            np.save(buf, scores)
            atomic_write(out, buf.getvalue())
        else:
            atomic_write(out, json.dumps([{"index": i, kind: float(s)} for i, s in enumerate(scores)]))
        atomic_write(out.with_suffix(".config.json"), json.dumps(dataclasses.asdict(cfg), indent=1))
    return result


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None) -> Config:
    p = _Parser(prog="score_rewards.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--base-model", help="Llama config dir for Starling; base causal LM for --logprob")
    p.add_argument("--input", help="TOKENS.npy: integer array [B, T]")
    p.add_argument("--mask", help="MASK.npy: [B, T], 1 for real tokens")
    p.add_argument("--random-tokens", type=int, default=0, metavar="N")
    p.add_argument("--length", type=int, default=0, metavar="L")
    p.add_argument("--logprob", action="store_true", help="causal-LM log-probability instead of the reward")
    p.add_argument("--batch", type=int, default=Config.batch)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=Config.dtype)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--out", help=".npy for scores, else JSON rows")
    p.add_argument("--json", action="store_true", help="print one JSON row per sequence")
    return Config(**vars(p.parse_args(argv)))


def cli(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        result = main(cfg)
    except (InputError, models.CheckpointError, NotImplementedError) as e:
        print(f"score_rewards.py: error: {e}", file=sys.stderr)
        return 2
    s, kind = result["scores"], result["kind"]
    if cfg.json:
        for i, v in enumerate(s):
            print(json.dumps({"index": i, kind: float(v)}))
    else:
        print(f"{kind}: n={len(s)} mean={s.mean():.6g} std={s.std():.6g} min={s.min():.6g} max={s.max():.6g} "
              f"({result['tokens_per_s']:.0f} tokens/s incl. compile, {result['devices']} device(s))")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
