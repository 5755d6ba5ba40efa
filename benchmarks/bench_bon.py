"""Best-of-n speed on the authors' grid: `bon_mc` against plain vectorised NumPy, and `bon_exact` per pair.

For each (utility, error) pair of `best_of_n.authors_grid()` (100 trials,
n = 4^0 .. 4^8 by default):

* Monte Carlo: `best_of_n.bon_mc` (jitted, float32) against NumPy drawing the
  same laws as [trials, n_max] arrays (float64, `numpy.random.Generator`) and
  taking the argmax of each prefix, the authors' way. Timed interleaved
  (round-robin over repeats, medians), so load drifts hit both alike. Ratio
  > 1: goodhart_jax is faster (goal >= 2x).
* Exact: `best_of_n.bon_exact` (jitted, float64) for all n of the pair in one
  call (goal <= 0.2 s a pair); its compile time is listed apart.

One JSON line per pair, then a table; `--no-exact` skips the quadrature.

    python benchmarks/bench_bon.py [--trials 100] [--max-power 8] [--repeats 7] [--pairs 8] [--no-exact]
"""
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goodhart_jax import best_of_n, cli  # noqa: E402
from timing import interleaved_medians, machine  # noqa: E402  (benchmarks/timing.py)


def numpy_draw(family, g: np.random.Generator, shape) -> np.ndarray:
    """Draws of a normal, Student-t or log-normal `tails.Family` with NumPy's generator (float64)."""
    p = {k: float(v) for k, v in family.params.items()}
    shift = float(family.shift)
    if family.name == "normal":
        z = g.standard_normal(shape)
    elif family.name == "student_t":
        z = g.standard_t(p["df"], shape)
    elif family.name == "lognormal":
        return np.exp(p["loc"] + p["scale"] * g.standard_normal(shape)) + shift
    else:
        raise ValueError(f"no NumPy twin for {family.name}")
    return p["loc"] + p["scale"] * z + shift


def numpy_bon(g, error, utility, ns, trials):
    """The authors' vectorised Monte Carlo: [T, n_max] draws, argmax of each prefix; E[V of the best] per n."""
    x = numpy_draw(error, g, (trials, max(ns)))
    v = numpy_draw(utility, g, (trials, max(ns)))
    u = x + v
    rows = np.arange(trials)
    return np.array([v[rows, np.argmax(u[:, :n], axis=1)].mean() for n in ns])


@dataclasses.dataclass(frozen=True)
class Config:
    trials: int = cli.arg(100, "Monte-Carlo trials", metavar="T", check=cli.at_least("trials", 2))
    max_power: int = cli.arg(8, "n = 4^0 .. 4^P", metavar="P", check=cli.at_least("max power", 0))
    repeats: int = cli.arg(7, "timed repeats (median)", metavar="R", check=cli.at_least("repeats", 1))
    pairs: int = cli.arg(8, "the first this many pairs of the grid", metavar="K", check=cli.at_least("pairs", 1))
    exact: bool = cli.arg(True, "also time the exact quadrature")


def main(argv=None):
    a = cli.parse_config(Config, argv, description=__doc__)
    utilities, errors = best_of_n.authors_grid()
    pairs = [(u, e) for u in utilities for e in errors][:a.pairs]
    ns = tuple(4**k for k in range(a.max_power + 1))
    mc = jax.jit(best_of_n.bon_mc, static_argnums=(3, 4))
    exact = jax.jit(best_of_n.bon_exact)
    g = np.random.default_rng(0)
    key = jax.random.key(0)
    rows = []
    print(f"best-of-n, {a.trials} trials, n = 4^0..4^{a.max_power}; {machine()}", file=sys.stderr)
    for (ulab, util), (elab, err) in pairs:
        t0 = time.perf_counter()
        jax.block_until_ready(mc(key, err, util, ns, a.trials))
        mc_compile = time.perf_counter() - t0
        t = interleaved_medians({"numpy": lambda: numpy_bon(g, err, util, ns, a.trials),
                         "jax": lambda: jax.block_until_ready(mc(key, err, util, ns, a.trials))}, a.repeats)
        row = dict(utility=ulab, error=elab, trials=a.trials, n_max=max(ns), numpy_mc_s=t["numpy"],
                   jax_mc_s=t["jax"], mc_ratio=t["numpy"] / t["jax"], jax_mc_compile_s=mc_compile)
        if a.exact:
            with jax.enable_x64(True):
                nsx = jnp.asarray(ns, jnp.float64)
                t0 = time.perf_counter()
                r = jax.block_until_ready(exact(err, util, nsx))
                row["exact_compile_s"] = time.perf_counter() - t0
                row["exact_s"] = interleaved_medians({"exact": lambda: jax.block_until_ready(exact(err, util, nsx))},
                                             max(1, a.repeats // 2))["exact"]
                row["exact_finite"] = bool(np.all(np.isfinite(r.E_V)))
        row["machine"] = machine()
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| utility | error | NumPy MC ms | bon_mc ms | vs NumPy | bon_exact s/pair | compile s (mc, exact) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ex = f"{r['exact_s']:.3f}" if "exact_s" in r else "-"
        cx = f"{r['exact_compile_s']:.0f}" if "exact_compile_s" in r else "-"
        print(f"| {r['utility']} | {r['error']} | {1e3 * r['numpy_mc_s']:.0f} | {1e3 * r['jax_mc_s']:.0f} | "
              f"{r['mc_ratio']:.2f}x | {ex} | {r['jax_mc_compile_s']:.1f}, {cx} |")
    ratios = [r["mc_ratio"] for r in rows]
    print(f"\nMonte Carlo vs NumPy: median {np.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x "
          f"(goal >= 2x)")
    if a.exact:
        ex = [r["exact_s"] for r in rows]
        print(f"exact: median {np.median(ex):.3f} s a pair, max {max(ex):.3f} s (goal <= 0.2 s)")
    return rows


if __name__ == "__main__":
    main()
