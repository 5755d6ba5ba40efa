"""Token-tree DMRMDPs: deterministic transitions, returns on terminal states.

States are token prefixes; an action appends one of A tokens; a sequence ends at the EOS token (the last id,
A - 1, when `eos=True`) or at length L. Only the terminal state carries a return U = X + V (Markovian return,
Section 3.2 of Kwa et al. 2024). Policies are per-level log-probabilities `log_pi[k]`: [n^k, A].

The exact optimum of E[U] - beta KL(Tr(pi) || Tr(pi0)) is soft backward induction (Theorem 4): W(leaf) = U,
W(s) = beta log sum_a pi0(a|s) exp(W(sa)/beta), pi*(a|s) = pi0(a|s) exp((W(sa) - W(s)) / beta).

One module an idea, every public name re-exported here:

- `tree`: `TreeSpec`, `Tree`, the level layout, the draw blocks and the split level, the reach pass;
- `draw`: `make_tree`, `make_base_policy`: a seed gives the same tree on any mesh;
- `backward`: the fused backward pass: `soft_optimum`, `optimal_policy`, `trajectory_stats`;
- `theorem2`: `thm2`, `thm2_policy`, `conditional_value`;
- `sweep`: `sweep_betas`, `sweep_tree`: the optimum over a grid of beta;
- `sharding`: a tree split along its leaves over a mesh axis: `tree_specs`, `tree_sharding`.

Glossary: A vocabulary (actions), L depth, n non-EOS tokens, K sweep points.
"""
from goodhart_jax.mdp.backward import Policy, TreeResult, optimal_policy, soft_optimum, trajectory_stats
from goodhart_jax.mdp.draw import make_base_policy, make_tree
from goodhart_jax.mdp.sharding import tree_sharding, tree_specs
from goodhart_jax.mdp.sweep import sweep_betas, sweep_tree
from goodhart_jax.mdp.theorem2 import ConditionalValue, Thm2Policy, Thm2Result, conditional_value, thm2, thm2_policy
from goodhart_jax.mdp.tree import (DRAW_BLOCKS, Levels, Tree, TreeSpec, action_values, draw_depth, spec_of,
                                   split_level, terminal_logprobs, terminal_probs, terminal_values)

__all__ = [
    "TreeSpec", "Tree", "TreeResult", "Policy", "Thm2Policy", "Thm2Result", "ConditionalValue", "make_base_policy",
    "make_tree", "spec_of", "action_values", "soft_optimum", "optimal_policy", "terminal_probs", "terminal_logprobs",
    "trajectory_stats", "thm2_policy", "thm2", "conditional_value", "terminal_values", "sweep_betas", "sweep_tree",
    "draw_depth", "split_level", "tree_specs", "tree_sharding", "Levels", "DRAW_BLOCKS",
]
