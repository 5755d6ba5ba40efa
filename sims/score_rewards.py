"""Score token sequences with a ported reward model (or a base LM's log-probability).

    python sims/score_rewards.py --model DIR [--base-model DIR]
        (--input TOKENS.npy [--mask MASK.npy] | --random-tokens N --length L)
        [--logprob] [--batch B] [--dtype float32|bfloat16] [--seed S] [--out FILE] [--json]

Random-token mode draws ids uniformly from the vocabulary, as the paper did (30000 x 1024 tokens).
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from goodhart_jax import io, models
from goodhart_jax.models.scoring import check_batch, max_length


@dataclasses.dataclass(frozen=True)
class Config(cli.Checked):  # not a cli.RunConfig: --out is one FILE, and there are no figures
    model: str = cli.arg("", "checkpoint directory", metavar="DIR", required=True)
    base_model: str | None = cli.arg(None, "Llama config dir for Starling; base causal LM for --logprob", metavar="DIR")
    input: str | None = cli.arg(None, "integer token ids [B, T]", metavar="TOKENS.npy")
    mask: str | None = cli.arg(None, "[B, T], 1 for real tokens (left or right padding)", metavar="MASK.npy")
    random_tokens: int = cli.arg(0, "N random sequences instead of --input", metavar="N", check=cli.at_least("N", 0))
    length: int = cli.arg(0, "their length L", metavar="L", check=cli.at_least("L", 0))
    logprob: bool = cli.arg(False, "causal-LM log-probability instead of the reward")
    batch: int = cli.arg(8, "sequences per batch", metavar="B", check=cli.at_least("batch size", 1))
    dtype: str = cli.arg("float32", "parameter dtype", choices=("float32", "bfloat16"))
    seed: int = cli.arg(0, "PRNG seed of --random-tokens", metavar="S", check=cli.seed)
    out: str | None = cli.arg(None, ".npy: the scores [N]; else JSON rows; FILE.config.json: the flags", metavar="FILE")
    json: bool = cli.arg(False, "print one JSON row per sequence")


def load(cfg: Config) -> models.LoadedModel:
    """The model to score with: its reward head, or (--logprob) its LM head or else --base-model's."""
    model = models.load_model(cfg.model, base_model=cfg.base_model, dtype=cfg.dtype)  # CheckpointError: bad input
    if cfg.logprob and not model.has_lm_head:
        if cfg.base_model is None:
            raise cli.InputError(f"--logprob: {cfg.model} has no language-model head; pass --base-model DIR "
                                 "with the base causal LM")
        model = models.load_model(cfg.base_model, dtype=cfg.dtype)
        if not model.has_lm_head:
            raise cli.InputError(f"--logprob: neither {cfg.model} nor {cfg.base_model} has a language-model head")
    if not cfg.logprob and model.reward_head is None:
        raise cli.InputError(f"{cfg.model} is a causal LM with no reward head; use --logprob")
    return model


def tokens_and_mask(cfg: Config, vocab: int, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [N, T] and mask [N, T]: N x L uniform ids (key --seed), or --input / --mask, checked."""
    if cfg.input is None:
        if max_len is not None and cfg.length > max_len:
            raise cli.InputError(f"--length {cfg.length}: the model takes at most {max_len} tokens")
        tokens = np.asarray(jax.random.randint(jax.random.key(cfg.seed), (cfg.random_tokens, cfg.length), 0, vocab))
        return tokens, np.ones_like(tokens, dtype=np.int32)
    tokens = io.check_token_ids(io.load_array(cfg.input, npy_only=True), vocab)  # UsageError naming the file
    mask = np.ones_like(tokens, dtype=np.int32) if cfg.mask is None else io.load_array(cfg.mask, npy_only=True)
    if mask.shape != tokens.shape:
        raise cli.InputError(f"--mask has shape {mask.shape} but the tokens have shape {tokens.shape}")
    with cli.inputs():  # only 0/1, no holes, no row longer than the model's positions
        check_batch(mask, max_len)
    return tokens, mask.astype(np.int32)


def validate(cfg: Config) -> None:
    """The flags together, and --out, before any work (each field checks itself); bad input raises InputError."""
    if (cfg.input is None) == (cfg.random_tokens <= 0):
        raise cli.InputError("give exactly one of --input TOKENS.npy or --random-tokens N --length L")
    if cfg.input is None and cfg.length <= 0:
        raise cli.InputError("--random-tokens needs --length L > 0")
    if cfg.out:  # before the work: fail now if FILE cannot be written
        if Path(cfg.out).is_dir():
            raise cli.InputError(f"--out {cfg.out} is a directory; give a FILE (.npy, or JSON rows)")
        cli.prepare_out_dir(Path(cfg.out).parent)


def main(cfg: Config) -> dict:
    """Load, score, write; returns {"kind", "scores" [N], "seconds", "tokens", "tokens_per_s", "arch", ...}."""
    validate(cfg)
    model = load(cfg)
    tokens, mask = tokens_and_mask(cfg, model.vocab_size, max_length(model))
    kind = "logprob" if cfg.logprob else "reward"
    fn = models.make_logprob_fn(model) if cfg.logprob else models.make_reward_fn(model)
    mesh = models.data_mesh()
    start = time.perf_counter()
    with cli.Run.progress(None, f"scoring ({kind})", total=len(tokens)) as bar:
        scores = models.score_array(fn, models.shard_params(model.params, mesh), tokens, mask, batch_size=cfg.batch,
                                    mesh=mesh, progress=bar.update)
    seconds, n_tok = time.perf_counter() - start, int(mask.sum())
    rows = [{"index": i, kind: float(s)} for i, s in enumerate(scores)]
    if cfg.out:
        out = Path(cfg.out)
        io.atomic_write(out, io.npy_bytes(scores)) if out.suffix == ".npy" else io.save_json(out, rows)
        io.save_json(out.with_suffix(".config.json"), cfg)
    if cfg.json:
        print(io.jsonl_text(rows), end="", flush=True)
    else:
        print(f"{kind}: n={len(scores)} mean={scores.mean():.6g} std={scores.std():.6g} min={scores.min():.6g} "
              f"max={scores.max():.6g} ({n_tok / seconds:.0f} tokens/s incl. compile, {mesh.devices.size} device(s))")
    return {"kind": kind, "scores": scores, "seconds": seconds, "tokens": n_tok, "tokens_per_s": n_tok / seconds,
            "arch": model.arch, "layout": model.layout, "devices": mesh.devices.size}


if __name__ == "__main__":
    cli.main(Config, main)
