"""lab.scaling_study and lab.ensemble_study (the rm_scaling and ensembles drivers' study logic) without a driver:
their annotator error is `experiment.annotator_error` drawn bit for bit and refused with a ValueError naming the
config's fields (which a driver reads as flags); the units' order; the error keys. The full studies run in
tests/test_rm_scaling_cli.py and tests/test_ensembles_cli.py."""
import types

import jax
import numpy as np
import pytest

from goodhart_jax import cli
from goodhart_jax.lab import ensemble_study, experiment, scaling_study


def _cfg(**kw):
    return types.SimpleNamespace(**{**dict(noise="normal", noise_scale=1.0, error_map="iid", betas=(1.0,),
                                           rl_betas=()), **kw})


@pytest.mark.parametrize("study", ["scaling", "ensembles"])
def test_annotator_error_is_the_experiments_and_refusals_name_the_fields(study):
    key = jax.random.key(3)

    def draw(cfg):
        if study == "scaling":
            return scaling_study.annotator_error(cfg, key, 40)
        return ensemble_study.annotator_error(cfg, key, cfg.noise, 40)

    want = experiment.annotator_error(key, "normal", 40, 0.5)
    np.testing.assert_array_equal(draw(_cfg(noise_scale=0.5)), want)
    with pytest.raises(ValueError, match=r"^noise_scale 1e\+308, noise normal, error_map iid: .*inf") as e:
        draw(_cfg(noise_scale=1e308))
    assert type(e.value) is ValueError  # the library's own error, not the CLI's
    with pytest.raises(ValueError, match=r"beta = 1e-30"):  # rl_betas count as well as betas
        draw(_cfg(noise_scale=1e7, rl_betas=(1e-30,)))
    flags = {"noise_scale": "--noise-scale", "noise": "--noise", "error_map": "--error-map"}
    with pytest.raises(cli.InputError, match=r"^--noise-scale 1e\+308, --noise normal, --error-map iid: "):
        with cli.inputs(flags):  # as the drivers read it
            draw(_cfg(noise_scale=1e308))


def test_units_seed_by_seed_and_error_keys():
    assert scaling_study.units([7, 2], 3) == [(7, 0), (7, 1), (7, 2), (2, 0), (2, 1), (2, 2)]
    assert scaling_study.units([], 3) == []
    k = ensemble_study.error_key(5, 2)
    ref = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 1), 2)
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(ref))
    assert not np.array_equal(jax.random.key_data(k), jax.random.key_data(ensemble_study.error_key(5, 3)))
