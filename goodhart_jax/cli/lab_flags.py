"""The flags the lab's drivers share (sims/overoptimization.py, sims/ensembles.py, sims/rm_scaling.py).

A driver's Config subclasses `LabConfig` (or `LabRLConfig`, which adds RL's flags) in place of `cli.RunConfig`:

    @dataclasses.dataclass(frozen=True)
    class Config(lab_flags.LabRLConfig):
        vocab: int = lab_flags.vocab(8)     # another default: the same field again, from the same helper
        noise: tuple[str, ...] = cli.arg(("normal",), "annotator error families", metavar="FAMILY")

In `--help` the runner's flags come first, then these, then the driver's own; a field given again keeps its
place. Every check runs when the Config is made, from flags or in code (`cli.Checked`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from goodhart_jax import best_of_n
from goodhart_jax.cli import flags as cli
from goodhart_jax.lab import lm

__all__ = ["N_MAX", "LabConfig", "LabRLConfig", "vocab", "rl_betas"]

N_MAX = 2**24  # best-of-n sizes are float32 inside the exact law: integers above 2^24 would round
_check_n = cli.count("n", N_MAX, "2^24: n is float32 in the exact law")


def _check_ns(ns) -> None:
    best_of_n.check_ns(ns)
    _check_n(ns)


def vocab(default: int):
    """The `--vocab` field with a driver's default.

    Args:
      default: the lab vocabulary A, EOS included.
    """
    return cli.arg(default, "lab tokens A, the last EOS (the tree has sum_k (A-1)^k sequences)", metavar="A",
                   check=cli.count("--vocab"))


def rl_betas(default: tuple[float, ...], help: str = "KL coefficients of RL (none: no RL)"):
    """The `--rl-betas` field with a driver's default and help.

    Args:
      default: the KL coefficients RL runs at (empty: no RL).
      help: the flag's help line.
    """
    return cli.arg(default, help, metavar="B", nargs="*")


@dataclasses.dataclass(frozen=True)
class LabConfig(cli.RunConfig):
    """The lab's tree (vocabulary, depth, the LM's source and training), its misspecification map and noise scale, the exact
    methods' grids (betas of pi*, best-of-n sizes) and the seeds."""
    vocab: int = vocab(16)
    depth: int = cli.arg(4, "maximum length L", metavar="L", check=cli.count("--depth"))
    error_map: str = cli.arg("iid", "how eps depends on the sequence (lab.error_maps): iid, feature, length, "
                             "token:id=I[+J..]", metavar="MAP")
    noise_scale: float = cli.arg(1.0, "scale of the annotator error (gold has sd 1 under pi0)", metavar="S",
                                 check=cli.positive("--noise-scale"))
    betas: tuple[float, ...] = cli.arg(tuple(float(b) for b in np.geomspace(0.05, 10.0, 12)),
                                       "KL coefficients of the exact optimum (default: 12, log grid 0.05 .. 10)",
                                       metavar="B", show_default=False, check=cli.positive("beta"))
    ns: tuple[int, ...] = cli.arg(tuple(4**k for k in range(9)), "best-of-n sizes", metavar="N", check=_check_ns)
    lm_steps: int = cli.arg(600, "training steps of the lab LM", metavar="S", check=cli.count("--lm-steps"))
    sharpness: float = cli.arg(lm.SHARPNESS, "inverse temperature of the lab LM's Markov source (0: uniform rows; "
                               "larger: a more peaked pi0)", metavar="S",
                               check=lambda s: lm.check_source(s, lm.EOS_BIAS))
    eos_bias: float = cli.arg(lm.EOS_BIAS, "shift of EOS's logit in the source's rows (larger: shorter sequences; "
                              "0: lengths spread out; the defaults keep pi0 spread over sequences)", metavar="B",
                              check=lambda b: lm.check_source(lm.SHARPNESS, b))
    seed: int = cli.arg(0, "PRNG seed of the first seed", metavar="S", check=cli.seed)
    seeds: int = cli.arg(3, "seeds S, S + 1, .., S + N - 1 (mod 2^32): every row carries its seed; the summary "
                            "gives the mean and a 95%% interval over them", metavar="N",
                         check=cli.count("--seeds", 1000, "1000"))

    @property
    def seed_values(self) -> list[int]:
        """S, S + 1, .., S + N - 1, modulo 2^32 (past 2^32 - 1 the seeds go on from 0)."""
        return [(self.seed + i) % (cli.SEED_MAX + 1) for i in range(self.seeds)]


@dataclasses.dataclass(frozen=True)
class LabRLConfig(LabConfig):
    """`LabConfig` and RL's flags: its betas, steps and the steps between exact evaluations."""
    rl_betas: tuple[float, ...] = rl_betas(())
    rl_steps: int = cli.arg(250, "RL steps (batch 1024)", metavar="S", check=cli.count("--rl-steps"))
    eval_every: int = cli.arg(50, "RL steps between exact evaluations (divides --rl-steps)", metavar="E",
                              check=cli.count("--eval-every"))

    def __post_init__(self):
        super().__post_init__()
        if any(not (np.isfinite(b) and b > 0) for b in self.rl_betas):
            raise cli.InputError(f"--rl-betas: beta must be finite and > 0, got {list(self.rl_betas)}")
        if self.rl_steps % self.eval_every:
            raise cli.InputError(f"--eval-every {self.eval_every} must divide --rl-steps {self.rl_steps}")
