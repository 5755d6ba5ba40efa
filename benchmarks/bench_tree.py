"""Beta sweep on the 8^7 tree: goodhart_jax against plain NumPy and against its own floor, same process.

The floor is the unavoidable work of the leaf level: one `exp` of U / beta per
leaf and one row sum per state above the leaves, per beta (`lax.map` over beta,
jitted, float32). The tree's float32 leaves (8 MB) fit in cache, so `exp`
bounds the sweep, not memory bandwidth. Prints both times and the ratio
(target <= 2x), the NumPy ratio, checks the results agree, and relates the
achieved traffic to this machine's memory-copy bandwidth (`np.copyto`).
`--no-numpy` skips the NumPy twin (float64 on the host: minutes at 16^7) and
its check; `--json` prints one JSON line instead of the text.

    python benchmarks/bench_tree.py [--vocab 8] [--depth 7] [--betas 64] [--repeats 5] [--no-numpy] [--json]
"""
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_tree import numpy_sweep  # noqa: E402

from goodhart_jax import cli, mdp, tails  # noqa: E402
from timing import machine, median_time  # noqa: E402  (benchmarks/timing.py)


def copy_bandwidth(nbytes=512 << 20, repeats=5):
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    t = median_time(lambda: np.copyto(b, a), repeats)
    return 2 * nbytes / t  # read + write


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = cli.arg(8, "tokens per state", metavar="A")
    depth: int = cli.arg(7, "tree depth", metavar="L")
    betas: int = cli.arg(64, "number of betas", metavar="K")
    repeats: int = cli.arg(5, "timed repeats (median)", metavar="R")
    numpy: bool = cli.arg(True, "also time the NumPy twin and check the sweep against it")
    json: bool = cli.arg(False, "print one JSON line")


def main(argv=None):
    a = cli.parse_config(Config, argv, description=__doc__)
    spec = mdp.TreeSpec(a.vocab, a.depth)
    tree = mdp.make_tree(jax.random.key(0), spec, tails.parse("normal"), tails.parse("normal"))
    betas = jnp.geomspace(0.05, 20.0, a.betas)
    jax.block_until_ready(tree)

    ours = lambda: jax.block_until_ready(mdp.sweep_tree(tree, betas))  # noqa: E731
    np_args = ([np.asarray(x) for x in tree.log_pi0], [np.asarray(x) for x in tree.X],
               [np.asarray(x) for x in tree.V], np.asarray(betas), spec.eos)
    base = lambda: numpy_sweep(*np_args)  # noqa: E731

    n = spec.n
    U = tree.X[-1] + tree.V[-1]
    floor_fn = jax.jit(lambda u, b: jax.lax.map(
        lambda x: jnp.sum(jnp.log(jnp.sum(jnp.exp(u.reshape(-1, n) / x), axis=1))), b))
    floor = lambda: jax.block_until_ready(floor_fn(U, betas))  # noqa: E731

    t_floor = median_time(floor, a.repeats)
    t_ours = median_time(ours, a.repeats)
    t_np = err = None
    if a.numpy:
        t_np = median_time(base, max(1, a.repeats // 2))
        r = np.stack(jax.device_get(mdp.sweep_tree(tree, betas)), 1)
        ref = numpy_sweep(*np_args)
        err = float(np.max(np.abs(r - ref) / np.maximum(np.abs(ref), 1e-3)))
        assert err < 1e-3, f"results differ: max relative error {err:.2e}"  # float32 sums in different orders

    states = sum(spec.n**k for k in range(spec.depth))
    # Per beta: read the leaves' X and V and every level's pi0 logits (float32).
    touched = 4 * (2 * spec.num_terminals + states * spec.vocab)
    bw = copy_bandwidth()
    achieved = touched * a.betas / t_ours
    if a.json:
        print(json.dumps({
            "vocab": a.vocab, "depth": a.depth, "leaves": spec.num_terminals, "betas": a.betas,
            "floor_ms": 1e3 * t_floor, "ours_ms": 1e3 * t_ours, "ratio_to_floor": t_ours / t_floor,
            "numpy_ms": None if t_np is None else 1e3 * t_np,
            "numpy_over_ours": None if t_np is None else t_np / t_ours, "max_rel_diff_vs_numpy": err,
            **({} if a.numpy else {"reason": "--no-numpy: the NumPy twin was not run"}),
            "gb_per_s": achieved / 1e9, "host_copy_gb_per_s": bw / 1e9,
            "machine": machine(), "devices": [str(d) for d in jax.devices()]}))
        return
    print(f"machine: {machine()} x {jax.device_count()}, numpy {np.__version__}")
    print(f"tree {a.vocab}^{a.depth} = {spec.num_terminals} leaves x {a.betas} betas (E_U, E_V, KL, KL_per_state)")
    print(f"floor (exp + row sum)  : {t_floor * 1e3:8.1f} ms")
    print(f"goodhart_jax sweep_tree: {t_ours * 1e3:8.1f} ms   {t_ours / t_floor:.2f}x the floor (target <= 2x)")
    if a.numpy:
        print(f"numpy baseline         : {t_np * 1e3:8.1f} ms   ratio {t_np / t_ours:.2f}x")
        print(f"max relative difference: {err:.1e}")
    else:
        print("numpy baseline         : not run (--no-numpy)")
    print(f"bytes touched/s {achieved / 1e9:.2f} GB/s; memory-copy bandwidth {bw / 1e9:.2f} GB/s; "
          f"bandwidth-bound time {touched * a.betas / bw * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
