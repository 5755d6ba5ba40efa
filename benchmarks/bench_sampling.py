"""Sampling speed per tail family: goodhart_jax (jit) against NumPy's Generator and jax.random.

    python benchmarks/bench_sampling.py [--n 10000000] [--repeats 5] [--no-jax-random]

All three draw the same law in the same process. goodhart_jax samples by exact
transforms of uniforms built from XLA's Threefry bit generator
(`goodhart_jax/variates.py`); the jax.random column is JAX's own sampler for
the family (the gamma-based `jax.random.t` is the slow one). Ratios > 1 mean
goodhart_jax is faster.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import cli, tails
from timing import machine, median_time  # noqa: E402  (benchmarks/timing.py)

NUMPY = {
    "normal": lambda g, n: g.standard_normal(n, dtype=np.float32),
    "laplace": lambda g, n: g.laplace(size=n),
    "exponential": lambda g, n: g.standard_exponential(n, dtype=np.float32),
    "gumbel": lambda g, n: g.gumbel(size=n),
    "logistic": lambda g, n: g.logistic(size=n),
    "student_t:df=3": lambda g, n: g.standard_t(3, n),
    "lognormal": lambda g, n: g.lognormal(size=n),
    "pareto:alpha=2": lambda g, n: g.pareto(2.0, n) + 1.0,
    "weibull:concentration=0.5": lambda g, n: g.weibull(0.5, n),
}

JAX_RANDOM = {
    "normal": lambda k, n: jax.random.normal(k, (n,)),
    "laplace": lambda k, n: jax.random.laplace(k, (n,)),
    "exponential": lambda k, n: jax.random.exponential(k, (n,)),
    "gumbel": lambda k, n: jax.random.gumbel(k, (n,)),
    "logistic": lambda k, n: jax.random.logistic(k, (n,)),
    "student_t:df=3": lambda k, n: jax.random.t(k, 3.0, (n,)),
    "lognormal": lambda k, n: jnp.exp(jax.random.normal(k, (n,))),
    "pareto:alpha=2": lambda k, n: jax.random.pareto(k, 2.0, (n,)),
    "weibull:concentration=0.5": lambda k, n: jax.random.weibull_min(k, 1.0, 0.5, (n,)),
}


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = cli.arg(10_000_000, "draws per family", metavar="N")
    repeats: int = cli.arg(5, "timed repeats (median)", metavar="R")
    jax_random: bool = cli.arg(True, "also time jax.random's samplers (jax.random.t takes ~10 s per call)")


def main(argv=None):
    a = cli.parse_config(Config, argv, description=__doc__)
    g = np.random.default_rng(0)
    key = jax.random.key(1)
    print(f"{a.n:.0e} draws, median of {a.repeats} after a warm-up; {machine()}")
    print("| family | NumPy ms | goodhart_jax ms | vs NumPy | jax.random ms | vs jax.random |")
    print("|---|---|---|---|---|---|")
    for spec, np_fn in NUMPY.items():
        fam = tails.parse(spec)
        draw = jax.jit(lambda key, fam: fam.sample(key, (a.n,)))
        t_np = median_time(lambda: np_fn(g, a.n), a.repeats)
        t_ours = median_time(lambda: draw(key, fam).block_until_ready(), a.repeats)
        if a.jax_random:
            theirs = jax.jit(lambda k: JAX_RANDOM[spec](k, a.n))
            reps = 1 if spec.startswith("student_t") else a.repeats
            t_jr = median_time(lambda: theirs(key).block_until_ready(), reps)
            jr = f"{t_jr * 1e3:.0f} | {t_jr / t_ours:.2f}x"
        else:
            jr = "- | -"
        print(f"| {spec} | {t_np * 1e3:.0f} | {t_ours * 1e3:.0f} | {t_np / t_ours:.2f}x | {jr} |")


if __name__ == "__main__":
    main()
