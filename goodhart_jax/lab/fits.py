"""Gao et al.'s best-of-n and RL forms of gold against d = sqrt(KL): `goodhart_jax.scaling_laws`, the lab's name.

Public API (re-exported):
  FORMS = ("bon", "rl");  gao_features(d [K], form) -> [K, 2]
  GaoFit(alpha, beta, r2, rmse, residuals [K])
  fit_gao(d [K], R [K], form="bon", steps=50) -> GaoFit
  gao_curve(d [K], alpha, beta, form) -> [K]
"""
from __future__ import annotations

from goodhart_jax.scaling_laws import FORMS, GaoFit, fit_gao, gao_curve, gao_features

__all__ = ["FORMS", "GaoFit", "gao_features", "gao_curve", "fit_gao"]
