"""Matplotlib figures for the sims scripts (host side; imported lazily)."""
