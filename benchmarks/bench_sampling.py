"""Sampling speed per tail family: goodhart_jax (jit) against NumPy's Generator.

    python benchmarks/bench_sampling.py [--n 10000000] [--repeats 5]

Both sides draw float32-or-better samples of the same law; the JAX side uses
the default threefry key and, separately, the faster 'rbg' key implementation.
"""
import argparse

import jax
import numpy as np

from goodhart_jax import tails
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    g = np.random.default_rng(0)
    print(f"{a.n:.0e} draws, median of {a.repeats}; {machine()}")
    print(f"{'family':<28}{'numpy ms':>10}{'jax ms':>10}{'ratio':>8}{'jax rbg ms':>12}{'ratio':>8}")
    for spec, np_fn in NUMPY.items():
        fam = tails.parse(spec)
        draw = jax.jit(lambda key, fam: fam.sample(key, (a.n,)))
        k0, k1 = jax.random.key(1), jax.random.key(1, impl="rbg")
        t_np = median_time(lambda: np_fn(g, a.n), a.repeats)
        t_j = median_time(lambda: draw(k0, fam).block_until_ready(), a.repeats)
        t_r = median_time(lambda: draw(k1, fam).block_until_ready(), a.repeats)
        print(f"{spec:<28}{t_np * 1e3:>10.0f}{t_j * 1e3:>10.0f}{t_np / t_j:>7.2f}x{t_r * 1e3:>12.0f}{t_np / t_r:>7.2f}x")


if __name__ == "__main__":
    main()
