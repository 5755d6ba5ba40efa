"""Theorem 1: upweight a heavy tail to tail mass c/t^p; the mean grows while KL(P_t || Q) -> 0.

For each base family Q over a grid of t: the exact mean of P_t and KL(P_t || Q)
(log-space quadrature of Q's tail). The paper's Figure 3 (Student-t df=3,
tail mass 1/t^0.8) as stills and an animated GIF. A light-tailed base (normal)
for contrast: its KL grows instead.

    python sims/tail_upweight.py                    # defaults, ~20 s
    python sims/tail_upweight.py --json | jq .

Families are used exactly as specified unless --center is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import io as _bytes
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from goodhart_jax import io, tails, upweighting


@dataclasses.dataclass(frozen=True)
class Config:
    base: tuple[str, ...] = ("student_t:df=3", "pareto:alpha=1.5", "lognormal", "normal")
    t: tuple[float, ...] = tuple(float(x) for x in np.geomspace(2.0, 1e6, 41))
    c: float = 1.0
    exponent: float = 0.8
    center: bool = False
    frames: int = 36
    out: str = ""
    json: bool = False
    plots: bool = True


def validate(cfg: Config) -> Config:
    if not cfg.base:
        raise io.UsageError("give at least one --base family")
    try:
        for spec in cfg.base:
            tails.parse(spec, center=cfg.center)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    t = np.asarray(cfg.t, float)
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise io.UsageError("threshold t must be finite")
    if not (np.isfinite(cfg.c) and cfg.c > 0):
        raise io.UsageError(f"--c must be finite and > 0, got {cfg.c}")
    if not (np.isfinite(cfg.exponent) and cfg.exponent > 0):
        raise io.UsageError(f"--exponent must be finite and > 0, got {cfg.exponent}")
    if np.any(t <= 0) or np.any(cfg.c / t**cfg.exponent >= 1):
        raise io.UsageError(f"every t needs 0 < c/t^p < 1 (c={cfg.c:g}, p={cfg.exponent:g}); got t={t.min():g}")
    if cfg.frames < 0:
        raise io.UsageError(f"--frames must be >= 0, got {cfg.frames}")
    return cfg


def main(cfg: Config) -> list[dict]:
    cfg = validate(cfg)
    out = io.start_run("tail_upweight", cfg.out, cfg)
    io.log(f"tail_upweight: tail mass {cfg.c:g}/t^{cfg.exponent:g}; {len(cfg.t)} thresholds; writing to {out}")
    rows = []
    with jax.enable_x64(True):
        ts = jnp.asarray(cfg.t, jnp.float64)
        for spec in tqdm(cfg.base, desc="base families", file=sys.stderr, disable=None):
            base = tails.parse(spec, center=cfg.center)
            r = jax.device_get(upweighting.sweep_upweight(base, ts, cfg.c, cfg.exponent))
            for j, t in enumerate(cfg.t):
                ok = bool(r.valid[j])
                if ok and not (np.isfinite(r.mean[j]) and np.isfinite(r.KL[j])):
                    raise FloatingPointError(f"{spec} at t={t:g}: mean or KL is not finite")
                rows.append(dict(kind="upweight", base=spec, heavy=bool(base.heavy), t=t, c=cfg.c,
                                 exponent=cfg.exponent, mean=r.mean[j] if ok else None, KL=r.KL[j] if ok else None,
                                 tail_mass=r.tail_mass[j], log_sf_q=r.log_sf_q[j], valid=ok))
        io.save_jsonl(out / "results.jsonl", rows)
        io.save_csv(out / "results.csv", rows)
        if cfg.plots:
            _plot_curves(rows, cfg, out)
            fig_base = tails.parse("student_t:df=3", center=cfg.center)
            _figure3(fig_base, cfg, out)
    for spec in cfg.base:
        rs = [r for r in rows if r["base"] == spec and r["valid"]]
        if rs:
            io.log(f"{spec:<20} t={rs[0]['t']:<8.3g} mean={rs[0]['mean']:<9.4g} KL={rs[0]['KL']:<9.3g} -> "
                   f"t={rs[-1]['t']:<8.3g} mean={rs[-1]['mean']:<9.4g} KL={rs[-1]['KL']:.3g}")
    if cfg.json:
        for r in rows:
            print(json.dumps(io.json_safe(r)))
    io.log(f"wrote {out}/results.jsonl, results.csv, config.json" + (", PNG stills and GIF" if cfg.plots else ""))
    return rows


def _plot_curves(rows, cfg, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for spec in cfg.base:
        rs = [r for r in rows if r["base"] == spec and r["valid"]]
        a1.plot([r["t"] for r in rs], [r["mean"] for r in rs], label=spec)
        a2.plot([r["t"] for r in rs], [r["KL"] for r in rs], label=spec)
    for a, lab in ((a1, "E_{P_t}[X]"), (a2, "KL(P_t || Q)")):
        a.set_xscale("log")
        a.set_xlabel("t")
        a.set_ylabel(lab)
    a1.set_yscale("symlog", linthresh=1.0)
    a2.set_yscale("log")
    a1.legend(fontsize=8)
    fig.suptitle(f"Theorem 1: tail mass {cfg.c:g}/t^{cfg.exponent:g} — heavy tails: mean up, KL down", fontsize=10)
    io.save_figure(fig, out / "upweight_curves.png")


def _frame(ax_d, ax_b, base, t, res, cfg, kl_max, mean_max):
    """One Figure-3 frame: tail functions of Q and P_t (log-log), and bars of E[X] and KL."""
    x = np.geomspace(0.1, 30 * t, 500)
    lsf = np.asarray(base.log_sf(jnp.asarray(x)))
    m = float(res.tail_mass)
    lsf_t = float(res.log_sf_q)
    F_q, F_t = -np.expm1(lsf), -np.expm1(lsf_t)
    sf_p = np.where(x > t, m * np.exp(lsf - lsf_t), 1.0 - (1.0 - m) * F_q / F_t)
    ax_d.plot(x, np.exp(lsf), color="0.5", label="Q(X > x)")
    ax_d.plot(x, sf_p, color="C0", label="P_t(X > x)")
    ax_d.axvline(t, color="C3", ls=":", lw=1)
    ax_d.set_xscale("log")
    ax_d.set_yscale("log")
    ax_d.set_ylim(1e-12, 1.5)
    ax_d.set_xlabel("x")
    ax_d.set_title(f"t = {t:.3g}: P_t puts {m:.3g} above t", fontsize=9)
    ax_d.legend(fontsize=8, loc="lower left")
    ax_b.bar([0, 1], [float(res.mean), float(res.KL)], color=["C0", "C1"])
    ax_b.set_xticks([0, 1], ["E[X]", "KL"])
    ax_b.set_ylim(0, max(mean_max, kl_max) * 1.05)
    ax_b.set_title(f"E[X]={float(res.mean):.3g}  KL={float(res.KL):.2g}", fontsize=8)


def _figure3(base, cfg, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    ts = np.geomspace(2.0, 1e6, max(cfg.frames, 3))
    res = jax.device_get(upweighting.sweep_upweight(base, jnp.asarray(ts), cfg.c, cfg.exponent))
    kl_max, mean_max = float(np.max(res.KL)), float(np.max(res.mean))
    pick = lambda i: jax.tree.map(lambda a: a[i], res)  # noqa: E731
    # Stills: three frames side by side.
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), gridspec_kw=dict(height_ratios=[2, 1]))
    for k, i in enumerate([0, len(ts) // 2, len(ts) - 1]):
        _frame(axes[0, k], axes[1, k], base, ts[i], pick(i), cfg, kl_max, mean_max)
    fig.suptitle(f"Figure 3: Q = {base}, tail upweighted to {cfg.c:g}/t^{cfg.exponent:g}: "
                 "E[X] (blue) grows, KL (orange) -> 0", fontsize=10)
    fig.tight_layout()
    io.save_figure(fig, out / "figure3_stills.png")
    if cfg.frames == 0:
        return
    frames = []
    for i, t in enumerate(ts):
        fig, (a, b) = plt.subplots(1, 2, figsize=(6.4, 3.0), gridspec_kw=dict(width_ratios=[3, 1]))
        _frame(a, b, base, t, pick(i), cfg, kl_max, mean_max)
        fig.tight_layout()
        buf = _bytes.BytesIO()
        fig.savefig(buf, format="png", dpi=70)
        plt.close(fig)
        buf.seek(0)
        frames.append(Image.open(buf).convert("P", palette=Image.ADAPTIVE, colors=32))
    gif = _bytes.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=180, loop=0, optimize=True)
    io.atomic_write(out / "figure3.gif", gif.getvalue())


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", nargs="+", default=list(d.base), metavar="FAMILY", help="base families Q")
    p.add_argument("--t", nargs="+", type=float, default=list(d.t), metavar="T", help="thresholds (> 0, c/t^p < 1)")
    p.add_argument("--c", type=float, default=d.c, help="tail-mass constant c (default: %(default)s)")
    p.add_argument("--exponent", type=float, default=d.exponent, metavar="P",
                   help="tail mass c/t^P (default: %(default)s, the paper's Figure 3; 1 = Theorem 1's c/t)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=d.center,
                   help="shift every family to mean 0 (default: off)")
    p.add_argument("--frames", type=int, default=d.frames, help="GIF frames (0: no GIF; default: %(default)s)")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory (default: runs/tail_upweight/<time>)")
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines on stdout")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip PNG and GIF output")
    a = p.parse_args(argv)
    return Config(base=tuple(a.base), t=tuple(a.t), c=a.c, exponent=a.exponent, center=a.center, frames=a.frames,
                  out=a.out, json=a.json, plots=a.plots)


if __name__ == "__main__":
    io.run_cli(lambda argv: main(parse_args(argv)))
