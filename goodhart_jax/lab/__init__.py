"""The overoptimization lab: a real (tiny) causal LM optimised against a learned proxy reward.

Small enough to enumerate: every sequence of the LM's tree is scored, so every
method is measured exactly against the KL-penalised optimum of `goodhart_jax.mdp`.

Modules (import them directly, e.g. `from goodhart_jax.lab import lm`):
  lm          the base policy pi0: a tiny GPT-NeoX/Llama LM trained on a random Markov source;
              the policy convention logits_fn(params, ids [B, T]) -> [B, T, A] (BOS = A first)
  tree        the exact tree of an LM (mdp.Tree log_pi0), terminal token ids; checkpoint policies
  rewards     gold reward model, Bradley-Terry proxies, proxy diagnostics
  best_of_n   the exact law of best-of-n from pi0 on the proxy (ties, log space): E[gold], E[proxy], exact KL
  rl          KL-penalised policy gradient (RLOO) of the LM, jitted lax.scan, exact evaluation and gap to pi*(beta)
  search      exhaustive top-k by proxy; GCG/ACG (`goodhart_jax.search`) on a proxy model, placed against enumeration;
              lm_scorer: the LM's log pi0 as the base for a KL penalty (proxy + beta log pi0)
  fits        Gao et al.'s best-of-n and RL forms of gold against d = sqrt(KL), least squares with optax, r2
  experiment  one lab run assembled (pi0, tree, gold, proxies), each method's points as rows (the sims driver)
  error_maps  how the annotator error depends on the sequence: iid, feature, length, token (pi0's law = the family's)
  scaling     reward-model scaling (Gao et al.): proxies of several sizes on nested data, exact curves, fits, trends
  scaling_study  sims/rm_scaling.py's units: one seed's pi0, gold and eps; one size's proxies trained and measured
  ensembles   reward-model ensembles (Coste et al.): mean, worst-case and uncertainty-weighted objectives, exactly
  ensemble_study  sims/ensembles.py's seeds: ensembles and single proxies trained, optimised exactly, as rows
"""
