"""Variants and mitigations: E[V] against the optimisation budget, light against heavy error.

Methods: "kl_penalty" (fixed beta grid, the baseline), "kl_target" (beta solved
per KL target), "bounded" (proxy sigmoid(U)), "quantilizer" (odds ratio
pi/pi0 <= 1/q). On the continuous model and on a token tree with X, V drawn
per terminal state. Budget = KL(P || Q) reached (trajectory KL on the tree).

    python sims/mitigations.py                 # defaults, ~1 minute
    python sims/mitigations.py --json | jq .

Families are used exactly as specified unless --center is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from goodhart_jax import io, mdp, mitigations, tails


@dataclasses.dataclass(frozen=True)
class Config:
    error: tuple[str, ...] = ("normal", "student_t:df=3")
    utility: str = "normal"
    kl: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.05, 8.0, 12))
    bounded_betas: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.03, 3.0, 10))
    vocab: int = 8
    depth: int = 5
    seed: int = 0
    mc_samples: int = 200_000
    center: bool = False
    out: str = ""
    json: bool = False
    plots: bool = True


def validate(cfg: Config) -> Config:
    if not cfg.error:
        raise io.UsageError("give at least one --error family")
    try:
        for spec in (*cfg.error, cfg.utility):
            tails.parse(spec, center=cfg.center)
        mdp.TreeSpec(cfg.vocab, cfg.depth)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    for name, vals in (("--kl", cfg.kl), ("--bounded-betas", cfg.bounded_betas)):
        a = np.asarray(vals, float)
        if a.size == 0 or not np.all(np.isfinite(a) & (a > 0)):
            raise io.UsageError(f"{name} values must be finite and > 0")
    if cfg.vocab**cfg.depth > 2**22:
        raise io.UsageError(f"a tree with {cfg.vocab ** cfg.depth} leaves is too large here (max 2^22)")
    if cfg.mc_samples < 100:
        raise io.UsageError(f"--mc-samples must be >= 100, got {cfg.mc_samples}")
    return cfg


def _row(model, method, error, utility, b, budget_param):
    ok = bool(b.exists)
    return dict(kind="mitigation", model=model, method=method, error=error, utility=utility, budget=budget_param,
                exists=ok, KL=float(b.KL) if ok else None, E_V=float(b.E_V) if ok else None,
                E_U=float(b.E_U) if ok and method != "quantilizer" or model == "tree" and ok else None,
                param=float(b.param))


def main(cfg: Config) -> list[dict]:
    cfg = validate(cfg)
    out = io.start_run("mitigations", cfg.out, cfg)
    spec = mdp.TreeSpec(cfg.vocab, cfg.depth)
    fam = lambda s: tails.parse(s, center=cfg.center)  # noqa: E731
    utility = fam(cfg.utility)
    kls = np.asarray(cfg.kl, float)
    betas = np.asarray(cfg.bounded_betas, float)
    qs = np.exp(-kls)
    rows = []
    key = jax.random.key(cfg.seed)
    v_target = jax.jit(jax.vmap(mitigations.kl_target_tree, (None, 0)))
    v_quant = jax.jit(jax.vmap(mitigations.quantilizer_tree, (None, 0)))
    v_soft = jax.jit(jax.vmap(mdp.soft_optimum, (None, 0)))
    for i, spec_x in enumerate(tqdm(cfg.error, desc="error families", file=sys.stderr, disable=None)):
        error = fam(spec_x)
        k_tree, k_mc = jax.random.split(jax.random.fold_in(key, i))
        tree = mdp.make_tree(k_tree, spec, error, utility)
        common = (spec_x, cfg.utility)
        # Tree: all four methods, exact.
        res = {
            "kl_target": jax.device_get(v_target(tree, jnp.asarray(kls, jnp.float32))),
            "quantilizer": jax.device_get(v_quant(tree, jnp.asarray(qs, jnp.float32))),
        }
        pen = jax.device_get(v_soft(tree, jnp.asarray(1.0 / kls, jnp.float32)))
        bnd = jax.device_get(v_soft(mitigations.bounded_tree(tree), jnp.asarray(betas, jnp.float32)))
        for j in range(len(kls)):
            for m in ("kl_target", "quantilizer"):
                b = jax.tree.map(lambda a: a[j], res[m])
                rows.append(_row("tree", m, *common, b, float(kls[j])))
            rows.append(dict(kind="mitigation", model="tree", method="kl_penalty", error=spec_x, utility=cfg.utility,
                             budget=float(1 / kls[j]), exists=True, KL=float(pen.KL[j]), E_V=float(pen.E_V[j]),
                             E_U=float(pen.E_U[j]), param=float(1 / kls[j])))
        for j, bt in enumerate(betas):
            rows.append(dict(kind="mitigation", model="tree", method="bounded", error=spec_x, utility=cfg.utility,
                             budget=float(bt), exists=True, KL=float(bnd.KL[j]), E_V=float(bnd.E_V[j]),
                             E_U=float(bnd.E_U[j]), param=float(bt)))
        # Continuous model.
        with jax.enable_x64(True):
            tgt = jax.device_get(jax.jit(jax.vmap(mitigations.kl_target_tilt, (None, None, 0)))(
                error, utility, jnp.asarray(kls)))
            qc = jax.device_get(jax.jit(jax.vmap(mitigations.quantilizer_continuous, (None, None, 0)))(
                error, utility, jnp.asarray(kls)))
        bmc = jax.jit(jax.vmap(mitigations.bounded_tilt_mc, (None, None, None, 0, None)), static_argnums=4)
        bc, bse = jax.device_get(bmc(k_mc, error, utility, jnp.asarray(betas, jnp.float32), cfg.mc_samples))
        for j in range(len(kls)):
            rows.append(_row("continuous", "kl_target", *common, jax.tree.map(lambda a: a[j], tgt), float(kls[j])))
            r = _row("continuous", "quantilizer", *common, jax.tree.map(lambda a: a[j], qc), float(kls[j]))
            r["t_q"] = r.pop("param")
            rows.append(r)
        for j, bt in enumerate(betas):
            r = _row("continuous", "bounded", *common, jax.tree.map(lambda a: a[j], bc), float(bt))
            r["E_V_se"] = float(bse[j])
            rows.append(r)
        io.save_jsonl(out / "results.jsonl", rows)
        io.save_csv(out / "results.csv", rows)
    for r in rows:
        for k in ("E_V", "KL"):
            if r[k] is not None and not np.isfinite(r[k]):
                raise FloatingPointError(f"{r['model']}/{r['method']}/{r['error']}: {k} is not finite")
    if cfg.plots:
        _plot(rows, cfg, out)
    _summary(rows)
    if cfg.json:
        for r in rows:
            print(json.dumps(io.json_safe(r)))
    io.log(f"wrote {out}/results.jsonl, results.csv, config.json" + (", mitigations.png" if cfg.plots else ""))
    return rows


def _plot(rows, cfg, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = ("continuous", "tree")
    fig, axes = plt.subplots(len(models), len(cfg.error), figsize=(5.2 * len(cfg.error), 7.5), squeeze=False)
    for a, model in enumerate(models):
        for b, err in enumerate(cfg.error):
            ax = axes[a, b]
            for method in ("kl_penalty", "kl_target", "bounded", "quantilizer"):
                rs = sorted((r for r in rows if r["model"] == model and r["error"] == err and r["method"] == method
                             and r["exists"]), key=lambda r: r["KL"])
                if rs:
                    ax.plot([r["KL"] for r in rs], [r["E_V"] for r in rs], "o-", ms=3, label=method)
            ax.set_xscale("log")
            ax.set_xlabel("KL(P || Q) spent")
            ax.set_ylabel("E_P[V]")
            ax.set_title(f"{model}: error {err}" + (" (KL optimum does not exist)" if model == "continuous"
                                                    and bool(tails.parse(err).heavy) else ""), fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    io.save_figure(fig, out / "mitigations.png")


def _summary(rows):
    io.log(f"\n{'model':<11}{'method':<12}{'error':<16}{'max KL':>8}{'E[V] there':>12}")
    for key in dict.fromkeys((r["model"], r["method"], r["error"]) for r in rows):
        rs = [r for r in rows if (r["model"], r["method"], r["error"]) == key and r["exists"]]
        if not rs:
            io.log(f"{key[0]:<11}{key[1]:<12}{key[2]:<16}{'—':>8}{'no optimum':>12}")
            continue
        top = max(rs, key=lambda r: r["KL"])
        io.log(f"{key[0]:<11}{key[1]:<12}{key[2]:<16}{top['KL']:>8.3g}{top['E_V']:>12.4g}")


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--error", nargs="+", default=list(d.error), metavar="FAMILY", help="error families X")
    p.add_argument("--utility", default=d.utility, metavar="FAMILY", help="utility family V")
    p.add_argument("--kl", nargs="+", type=float, default=list(d.kl), metavar="D",
                   help="KL budgets (targets; quantilizer q = e^-D; baseline beta = 1/D)")
    p.add_argument("--bounded-betas", nargs="+", type=float, default=list(d.bounded_betas), metavar="B",
                   help="betas of the sigmoid(U) proxy")
    p.add_argument("--vocab", type=int, default=d.vocab, metavar="A", help="tree tokens per state")
    p.add_argument("--depth", type=int, default=d.depth, metavar="L", help="tree depth")
    p.add_argument("--seed", type=int, default=d.seed, metavar="S", help="PRNG seed")
    p.add_argument("--mc-samples", type=int, default=d.mc_samples, metavar="N",
                   help="draws for the continuous bounded proxy (default: %(default)s)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=d.center,
                   help="shift every family to mean 0 (default: off)")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory (default: runs/mitigations/<time>)")
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines on stdout")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plot")
    a = p.parse_args(argv)
    return Config(error=tuple(a.error), utility=a.utility, kl=tuple(a.kl), bounded_betas=tuple(a.bounded_betas),
                  vocab=a.vocab, depth=a.depth, seed=a.seed, mc_samples=a.mc_samples, center=a.center, out=a.out,
                  json=a.json, plots=a.plots)


if __name__ == "__main__":
    io.run_cli(lambda argv: main(parse_args(argv)))
