"""lab.fits: Gao's best-of-n and RL forms fitted with optax equal SciPy's least squares (curve_fit)."""
import jax
import numpy as np
import pytest
import scipy.optimize as so

from goodhart_jax.lab import fits

FORMS = {
    "bon": lambda d, a, b: d * (a - b * d),
    "rl": lambda d, a, b: d * (a - b * np.log(np.where(d > 0, d, 1.0))),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_gao_matches_curve_fit(form, jit):
    rng = np.random.default_rng(3)
    d = np.sqrt(np.linspace(0.0, 9.0, 17))  # includes d = 0, where d log d = 0
    R = FORMS[form](d, 1.3, 0.4) + 0.05 * rng.standard_normal(d.size)
    (a, b), _ = so.curve_fit(FORMS[form], d, R, p0=(0.0, 0.0))
    fit = jax.jit(fits.fit_gao, static_argnames=("form", "steps")) if jit else fits.fit_gao
    f = fit(d, R, form=form)
    np.testing.assert_allclose([float(f.alpha), float(f.beta)], [a, b], rtol=2e-4)  # float32 normal equations
    res = R - FORMS[form](d, a, b)
    r2 = 1 - np.sum(res**2) / np.sum((R - R.mean()) ** 2)
    np.testing.assert_allclose(float(f.r2), r2, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(fits.gao_curve(d, f.alpha, f.beta, form)), R - np.asarray(f.residuals),
                               atol=1e-5)


def test_fit_gao_exact_data_and_bad_form():
    d = np.linspace(0.0, 3.0, 9)
    f = fits.fit_gao(d, FORMS["rl"](d, -0.5, 2.0), form="rl")  # exact data: r2 = 1
    np.testing.assert_allclose([float(f.alpha), float(f.beta), float(f.r2)], [-0.5, 2.0, 1.0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="form"):
        fits.gao_features(d, "ppo")
