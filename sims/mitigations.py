"""Variants and mitigations: E[V] against the optimisation budget, light against heavy error.

Methods: "kl_penalty" (max E[U] - beta KL on a fixed beta grid, the baseline),
"kl_target" (beta solved per KL target), "bounded" (max E[sigmoid(U)] - beta KL,
the companion post's bounded reward), "bounded_mean" (max sigmoid(E[U]) - beta KL,
the paper's Section 6.1 variant), "quantilizer" (odds ratio pi/pi0 <= 1/q).
On the continuous model and on a token tree with X, V drawn per terminal
state. Budget = KL(P || Q) reached (trajectory KL on the tree). Families are
used exactly as specified unless --center is given. A continuous row's E_V
(E_V_se) is null with a reason where V has no finite mean (variance).

    python sims/mitigations.py                 # defaults, ~1 minute
    python sims/mitigations.py --json | jq .
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import mdp, mitigations, tails


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    error: tuple[str, ...] = cli.arg(("normal", "student_t:df=3"), "error families X", metavar="FAMILY")
    utility: str = cli.arg("normal", "utility family V", metavar="FAMILY")
    kl: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(0.05, 8.0, 12)), "KL budgets (targets; "
                                    "quantilizer: KL <= D; baseline beta = 1/D) (default: 12 points from 0.05 to 8, "
                                    "log-spaced)", metavar="D", show_default=False, check=cli.positive("KL budget"))
    bounded_betas: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(0.03, 3.0, 10)), "betas of "
                                               "the bounded methods (default: 10 points from 0.03 to 3, log-spaced)",
                                               metavar="B", show_default=False, check=cli.positive("beta"))
    vocab: int = cli.arg(8, "tree tokens per state", metavar="A")
    depth: int = cli.arg(5, "tree depth", metavar="L")
    seed: int = cli.arg(0, "PRNG seed", metavar="S", check=cli.seed)
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
        if cfg.depth * np.log2(cfg.vocab) > 22:  # in logs: --depth 1e18 is refused, not computed
            raise ValueError(f"a tree of {cfg.vocab}^{cfg.depth} leaves is too large here (max 2^22)")
    return errors, utility, spec


def _tree(tree, kls, penalty_betas, betas):
    """Every method on one tree, exact: {method: [K] results}."""
    per = lambda f, tree, x: jax.vmap(f, (None, 0))(tree, x)  # noqa: E731
    return dict(kl_penalty=per(mdp.soft_optimum, tree, penalty_betas),
                kl_target=per(mitigations.kl_target_tree, tree, kls),
                bounded=per(mdp.soft_optimum, mitigations.sigmoid_proxy_tree(tree), betas),
                bounded_mean=per(mitigations.sigmoid_of_mean_tree, tree, betas),
                quantilizer=per(mitigations.quantilizer_tree_kl, tree, kls))


def _continuous(error, utility, kls, betas):
    """KL target, bounded_mean and quantilizer on the continuous model (run in float64): {method: [K] results}."""
    per = lambda f, x: jax.vmap(f, (None, None, 0))(error, utility, x)  # noqa: E731
    return dict(kl_target=per(mitigations.kl_target_tilt, kls),
                bounded_mean=per(mitigations.sigmoid_of_mean_tilt, betas),
                quantilizer=per(mitigations.quantilizer_continuous, kls))


tree_methods, continuous_methods = jax.jit(_tree), jax.jit(_continuous)  # jit once, at the boundary
bounded_mc = jax.jit(jax.vmap(mitigations.sigmoid_proxy_tilt_mc, (None, None, None, 0, None)), static_argnums=4)


WHY_NOT = {m: why.replace("num_samples", "--mc-samples") for m, why in mitigations.WHY_NOT.items()}  # the flag
NOT_FINITE = mitigations.NOT_FINITE


def _rows(model, method, res, budget, common):
    """One row per budget from [K] results (param: the solved knob, else beta; exists: True unless a reason)."""
    quant = model == "continuous" and method == "quantilizer"  # its E_U holds t_q, a lower bound: not kept
    exists, param = getattr(res, "exists", np.ones(len(budget), bool)), getattr(res, "param", budget)
    val = lambda a, j, ok: float(a[j]) if ok else None  # noqa: E731
    return [dict(kind="mitigation", model=model, method=method, **common, budget=float(b), exists=bool(ok),
                 KL=val(res.KL, j, ok), E_V=val(res.E_V, j, ok), E_U=val(res.E_U, j, ok and not quant),
                 **{"t_q" if quant else "param": float(param[j])},
                 **{f: float(getattr(res, f)[j]) for f in ("E_V_se", "lam") if hasattr(res, f)},
                 **({"reason": WHY_NOT.get(method, "no optimum at this budget")} if not ok else
                    {"reason": "E_U not computed: t_q is only a lower bound on it"} if quant else {}))
            for j, (b, ok) in enumerate(zip(budget, exists))]


def _null_moments(row, infinite):
    """Null the fields of a continuous row that V's moments leave without a value (`mitigations.why_not_finite`:
    E_V, E_V_se), adding why to the row's reason. A row with no optimum (exists False) has them null already."""
    fields = [f for f in infinite if f in row]
    if row["exists"] and fields:
        row.update({f: None for f in fields})
        row["reason"] = "; ".join(filter(None, [row.get("reason"), *(infinite[f] for f in fields)]))


def main(cfg: Config) -> list[dict]:
    errors, utility, spec = validate(cfg)
    kls, betas = np.asarray(cfg.kl, float), np.asarray(cfg.bounded_betas, float)
    budget = dict(kl_penalty=1 / kls, bounded=betas, bounded_mean=betas)  # beta for these, the KL target D for the rest
    f32 = [jnp.asarray(a, jnp.float32) for a in (kls, 1 / kls, betas)]  # baseline beta = 1/D
    key = jax.random.key(cfg.seed)
    infinite = mitigations.why_not_finite(utility)  # {field: why}: E_V, E_V_se where V's moments are infinite
    with cli.Run("mitigations", cfg) as run:
        for i, (spec_x, error) in enumerate(run.progress(list(zip(cfg.error, errors)), "error families")):
            k_tree, k_mc = jax.random.split(jax.random.fold_in(key, i))
            tree = mdp.make_tree(k_tree, spec, error, utility)
            t = jax.device_get(tree_methods(tree, *f32))
            with jax.enable_x64(True):
                c = jax.device_get(continuous_methods(error, utility, jnp.asarray(kls), jnp.asarray(betas)))
            c["bounded"] = jax.device_get(bounded_mc(k_mc, error, utility, f32[2], cfg.mc_samples))
            rows = [r for model, res in (("tree", t), ("continuous", c)) for m, b in res.items()
                    for r in _rows(model, m, b, budget.get(m, kls), dict(error=spec_x, utility=cfg.utility))]
            for r in rows:
                if r["model"] == "continuous":  # V's moments (tree rows are finite sums)
                    _null_moments(r, infinite)
            for r in rows:  # a NaN is never printed as a number, nor does it stop the run: the row says why
                if any(r[k] is not None and not np.isfinite(r[k]) for k in ("E_U", "E_V", "KL")):
                    r.update(exists=False, E_U=None, E_V=None, KL=None, reason=NOT_FINITE)
            run.emit(rows)
        from goodhart_jax.plots import mitigations as plots
        if cfg.plots:
            run.figure("mitigations.png", plots.figure(run.rows, list(cfg.error)))
        run.log(f"\n{plots.summary(run.rows)}")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
