"""A plain NumPy implementation of the tree beta sweep: the benchmark's baseline.

The same algorithm as `goodhart_jax.mdp.sweep_betas` (one backward pass: soft
values, the optimal policy, and E_U, E_V, trajectory KL and per-state KL
accumulated bottom-up), written as a careful NumPy user would: one beta at a
time, in place where it helps.
"""
import numpy as np


def numpy_sweep(log_pi0, X, V, betas, eos):
    """Args as the arrays of `goodhart_jax.mdp.Tree` (NumPy); returns [K, 4]."""
    L = len(log_pi0)
    A = log_pi0[0].shape[1]
    n = A - 1 if eos else A
    U = [x + v for x, v in zip(X, V)]
    dt = U[-1].dtype
    out = np.empty((len(betas), 4))

    def kids(below, exit_):
        k = below.reshape(-1, n)
        return np.concatenate([k, exit_[:, None]], axis=1) if eos else k

    for i, beta in enumerate(betas):
        W, EU, EV, KL, G, H = U[-1], U[-1], V[-1], None, None, None
        for k in reversed(range(L)):
            m = n**k
            q = kids(W, U[k]) / beta
            z = log_pi0[k] + q
            mx = z.max(axis=1, keepdims=True)
            np.subtract(z, mx, out=z)
            np.exp(z, out=z)
            S = z.sum(axis=1, keepdims=True)
            z /= S
            pi = z
            logZ = (mx + np.log(S))[:, 0]
            kl = np.einsum("ij,ij->i", pi, q) - logZ
            avg = lambda below, exit_: np.einsum("ij,ij->i", pi, kids(below, exit_))  # noqa: E731
            zero = np.zeros(m if eos else 0, dt)
            EU, EV = avg(EU, U[k]), avg(EV, V[k])
            h_exit = np.full(m if eos else 0, 1.0 / (k + 1), dt)
            H = avg(np.full(m * n, 1.0 / L, dt) if H is None else H, h_exit)
            KL = kl if KL is None else kl + avg(KL, zero)
            G = kl * H if G is None else kl * H + avg(G, zero)
            W = beta * logZ
        out[i] = EU[0], EV[0], KL[0], G[0]
    return out
