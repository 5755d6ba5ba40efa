"""A plain NumPy implementation of the tree beta sweep: the benchmark's baseline.

The same computation as `goodhart_jax.mdp.sweep_betas` (soft backward induction,
then E_U, E_V, trajectory KL and per-state KL from a forward pass), written the
way a careful NumPy user would: in-place where it helps, one beta at a time.
"""
import numpy as np


def numpy_sweep(log_pi0, X, V, betas, eos):
    """Args as the arrays of `goodhart_jax.mdp.Tree` (NumPy); returns [K, 4]."""
    L = len(log_pi0)
    A = log_pi0[0].shape[1]
    n = A - 1 if eos else A
    U = [x + v for x, v in zip(X, V)]
    out = np.empty((len(betas), 4))
    for i, beta in enumerate(betas):
        W = U[-1]
        pis, kls = [None] * L, [None] * L
        for k in reversed(range(L)):
            kids = W.reshape(-1, n)
            if eos:
                kids = np.concatenate([kids, U[k][:, None]], axis=1)
            q = kids / beta
            z = log_pi0[k] + q
            m = z.max(axis=1, keepdims=True)
            e = np.exp(z - m)
            S = e.sum(axis=1, keepdims=True)
            logZ = m + np.log(S)
            e /= S
            pis[k] = e
            kls[k] = np.einsum("ij,ij->i", e, q) - logZ[:, 0]
            W = beta * logZ[:, 0]
        r = np.ones(1, U[-1].dtype)
        cum = np.zeros(1, U[-1].dtype)
        E_U = E_V = KL = KLs = 0.0
        for k in range(L):
            KL += r @ kls[k]
            cum = cum + kls[k]
            if eos:
                pe = r * pis[k][:, -1]
                E_U += pe @ U[k]
                E_V += pe @ V[k]
                KLs += (pe @ cum) / (k + 1)
            p = r[:, None] * pis[k][:, :n]
            if k + 1 < L:
                r = p.reshape(-1)
                cum = np.repeat(cum, n)
        leaf = p.reshape(-1)
        E_U += leaf @ U[-1]
        E_V += leaf @ V[-1]
        KLs += (p.sum(axis=1) @ cum) / L
        out[i] = E_U, E_V, KL, KLs
    return out
