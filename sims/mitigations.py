"""Variants and mitigations: E[V] against the optimisation budget, light against heavy error.

Methods: "kl_penalty" (max E[U] - beta KL on a fixed beta grid, the baseline),
"kl_target" (beta solved per KL target), "bounded" (max E[sigmoid(U)] - beta KL,
the companion post's bounded reward), "quantilizer" (odds ratio pi/pi0 <= 1/q).
On the continuous model and on a token tree with X, V drawn per terminal
state. Budget = KL(P || Q) reached (trajectory KL on the tree).

    python sims/mitigations.py                 # defaults, ~1 minute
    python sims/mitigations.py --json | jq .

Families are used exactly as specified unless --center is given.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import cli, mdp, mitigations, tails


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    error: tuple[str, ...] = cli.arg(("normal", "student_t:df=3"), "error families X", metavar="FAMILY")
    utility: str = cli.arg("normal", "utility family V", metavar="FAMILY")
    kl: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(0.05, 8.0, 12)),
                                    "KL budgets (targets; quantilizer q = e^-D; baseline beta = 1/D) (default: 12 "
                                    "points from 0.05 to 8, log-spaced)", metavar="D", show_default=False,
                                    check=cli.positive("KL budget"))
    bounded_betas: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(0.03, 3.0, 10)),
                                               "betas of the bounded proxies (default: 10 points from 0.03 to 3, "
                                               "log-spaced)", metavar="B", show_default=False,
                                               check=cli.positive("beta"))
    vocab: int = cli.arg(8, "tree tokens per state", metavar="A")
    depth: int = cli.arg(5, "tree depth", metavar="L")
    seed: int = cli.arg(0, "PRNG seed", metavar="S")
    mc_samples: int = cli.arg(200_000, "draws for the continuous bounded proxy", metavar="N",
                              check=cli.at_least("--mc-samples", 100))
    center: bool = cli.arg(False, "shift every family to mean 0")


def validate(cfg: Config) -> tuple[list[tails.Family], tails.Family, mdp.TreeSpec]:
    """Error families, utility family and tree shape, parsed once; bad input raises `cli.InputError`."""
    with cli.inputs():
        if not cfg.error:
            raise ValueError("give at least one --error family")
        errors = [tails.parse(s, center=cfg.center) for s in cfg.error]
        utility, spec = tails.parse(cfg.utility, center=cfg.center), mdp.TreeSpec(cfg.vocab, cfg.depth)
        if cfg.vocab**cfg.depth > 2**22:
            raise ValueError(f"a tree with {cfg.vocab ** cfg.depth} leaves is too large here (max 2^22)")
    return errors, utility, spec


def _tree(tree, kls, penalty_betas, qs, betas):
    """Every method on one tree, exact: {method: [K] Budgeted}."""
    def soft(tree, beta):  # the KL-penalised optimum at a given beta always exists
        r = mdp.soft_optimum(tree, beta)
        return mitigations.Budgeted(r.E_U, r.E_V, r.KL, beta, jnp.ones_like(beta, bool))
    return dict(kl_penalty=jax.vmap(soft, (None, 0))(tree, penalty_betas),
                kl_target=jax.vmap(mitigations.kl_target_tree, (None, 0))(tree, kls),
                bounded=jax.vmap(soft, (None, 0))(mitigations.bounded_tree(tree), betas),
                quantilizer=jax.vmap(mitigations.quantilizer_tree, (None, 0))(tree, qs))


def _continuous(error, utility, kls):
    """KL target and quantilizer on the continuous model (run in float64): {method: [K] Budgeted}."""
    return dict(kl_target=jax.vmap(mitigations.kl_target_tilt, (None, None, 0))(error, utility, kls),
                quantilizer=jax.vmap(mitigations.quantilizer_continuous, (None, None, 0))(error, utility, kls))


tree_methods, continuous_methods = jax.jit(_tree), jax.jit(_continuous)  # jit once, at the boundary
bounded_mc = jax.jit(jax.vmap(mitigations.bounded_tilt_mc, (None, None, None, 0, None)), static_argnums=4)


def _rows(model, method, res, budget, common, **extra):
    """One row per budget from a [K] Budgeted; the continuous quantilizer's E_U (t_q, a lower bound) is not kept."""
    quant = model == "continuous" and method == "quantilizer"
    val = lambda a, j, ok: float(a[j]) if ok else None  # noqa: E731
    return [dict(kind="mitigation", model=model, method=method, **common, budget=float(b), exists=bool(ok),
                 KL=val(res.KL, j, ok), E_V=val(res.E_V, j, ok), E_U=val(res.E_U, j, ok and not quant),
                 **{"t_q" if quant else "param": float(res.param[j])}, **{k: float(v[j]) for k, v in extra.items()})
            for j, (b, ok) in enumerate(zip(budget, res.exists))]


def main(cfg: Config) -> list[dict]:
    errors, utility, spec = validate(cfg)
    kls, betas = np.asarray(cfg.kl, float), np.asarray(cfg.bounded_betas, float)
    budget = dict(kl_penalty=1 / kls, bounded=betas)  # the row's budget: beta for these, the KL target D for the rest
    key = jax.random.key(cfg.seed)
    with cli.Run("mitigations", cfg) as run:
        for i, (spec_x, error) in enumerate(run.progress(list(zip(cfg.error, errors)), "error families")):
            k_tree, k_mc = jax.random.split(jax.random.fold_in(key, i))
            tree = mdp.make_tree(k_tree, spec, error, utility)
            f32 = [jnp.asarray(a, jnp.float32) for a in (kls, 1 / kls, np.exp(-kls), betas)]  # beta = 1/D, q = e^-D
            t = jax.device_get(tree_methods(tree, *f32))
            with jax.enable_x64(True):
                c = jax.device_get(continuous_methods(error, utility, jnp.asarray(kls)))
            c["bounded"], se = jax.device_get(bounded_mc(k_mc, error, utility, f32[3], cfg.mc_samples))
            common = dict(error=spec_x, utility=cfg.utility)
            rows = [r for model, res in (("tree", t), ("continuous", c)) for m, b in res.items()
                    for r in _rows(model, m, b, budget.get(m, kls), common,
                                   **({"E_V_se": se} if (model, m) == ("continuous", "bounded") else {}))]
            for r in rows:
                if any(r[k] is not None and not np.isfinite(r[k]) for k in ("E_V", "KL")):
                    raise FloatingPointError(f"{r['model']}/{r['method']}/{r['error']}: E_V or KL is not finite")
            run.emit(rows)
        from goodhart_jax.plots import mitigations as plots

        if cfg.plots:
            run.figure("mitigations.png", plots.figure(run.rows, list(cfg.error)))
        run.log("\n" + plots.summary(run.rows))
        run.log(f"wrote {run.dir}: {', '.join(run.files)}")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
