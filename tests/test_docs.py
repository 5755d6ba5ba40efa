"""The documentation site and the docstrings.

The site is built once, strictly (`mkdocs build --strict`, as `make docs` does, without executing the
notebooks), into a temporary directory: a warning, a broken link or anchor, an autoref to a name that does
not exist or a public module that fails to import fails the build, and so this file (a sims/ script without
its page gets a generated one). The built pages are then checked for what they promise: an API entry for every
public name, every flag of every study on its page, and every flag, JSON field and name that README.md
documented before it became a landing page. The docstring checks need no build: every public name has a
docstring, every public function's names its parameters (two lists of today's exceptions in lab/ and models/
may only shrink), and none holds raw HTML.
"""
from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripts import SCRIPTS, load_script  # noqa: E402

if importlib.util.find_spec("mkdocs") is None:  # a failure, not a skip: CI installs .[test], which has .[docs]
    pytest.fail("mkdocs is not installed: `pip install -e '.[docs]'` (the test extra includes it)",
                pytrace=False)


def _hooks():
    spec = importlib.util.spec_from_file_location("goodhart_docs_hooks", ROOT / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hooks = _hooks()


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built strictly from this checkout (fails the test with mkdocs' log if the build fails)."""
    out = tmp_path_factory.mktemp("site")
    r = _build(ROOT / "mkdocs.yml", out)
    if r.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}",
                    pytrace=False)
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("WARNING")]
    assert not warnings, warnings
    return out


def _text(path: Path) -> str:
    """A page's text: tags stripped, entities read."""
    s = path.read_text()
    s = re.sub(r"<(script|style)\b.*?</\1>", " ", s, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", s))


@pytest.fixture(scope="module")
def site_text(site) -> str:
    return "\n".join(_text(p) for p in sorted(site.rglob("*.html")))


# ------------------------------------------------------------------ the build fails where it should


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The site's own settings (mkdocs.yml's validation, strict) turn a link to a missing page into a failure."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[a page that is not there](missing.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(textwrap.dedent(f"""\
        INHERIT: {ROOT / 'mkdocs.yml'}
        docs_dir: {docs}
        hooks: []
        plugins: [search]
        nav: [index.md]
        """))
    r = _build(config, tmp_path / "site")
    assert r.returncode != 0
    assert "missing.md" in r.stdout + r.stderr


def test_a_module_that_fails_to_import_fails_the_build(monkeypatch):
    monkeypatch.setattr(hooks, "public_modules", lambda: ["goodhart_jax.tails", "goodhart_jax.no_such_module"])
    with pytest.raises(hooks.PluginError, match="goodhart_jax.no_such_module"):
        hooks.on_files(None, {"site_dir": "site", "use_directory_urls": False})


def test_a_study_without_its_page_gets_a_generated_one(tmp_path):
    """A new sims/ script is on the site at once: in the nav, with a page made of its docstring, usage and flags."""
    (tmp_path / "studies").mkdir()
    config = hooks.on_config({"docs_dir": str(tmp_path), "nav": [{"Studies": []}]})
    assert config["nav"][0]["Studies"] == ["studies/index.md"] + [f"studies/{s}.md" for s in hooks.study_order()]
    assert set(hooks.study_order()) == set(SCRIPTS)
    page = hooks.on_page_markdown(hooks.generated_study_page("theorem3"), None, None, None)
    assert "--utility" in page and "usage: " not in page and "Theorem 3" in page


# ------------------------------------------------------------------ what the built site holds


def test_every_public_name_has_its_api_entry(site):
    """Each public function and class of each public module has its anchor on its module's API page."""
    pages = hooks.api_pages()
    missing = []
    for page, mods in pages.items():
        text = (site / "api" / f"{page}.html").read_text()
        for mod in mods:
            for name in _public_names(importlib.import_module(mod)):
                if f'id="{mod}.{name}"' not in text:
                    missing.append(f"{mod}.{name}")
    assert not missing, missing


def test_every_flag_of_every_study_is_on_its_page(site):
    from goodhart_jax import cli

    assert {p.stem for p in (site / "studies").glob("*.html")} >= set(SCRIPTS)
    for name in SCRIPTS:
        text = _text(site / "studies" / f"{name}.html")
        parser = cli.build_parser(load_script(name).Config)
        flags = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
        assert flags and not [f for f in flags if f not in text], name


def test_the_notebooks_are_pages(site):
    for nb in hooks.notebooks():
        page = site / "notebooks" / f"{nb.stem}.html"
        title = "".join(json.loads(nb.read_text())["cells"][0]["source"]).splitlines()[0].lstrip("# ").strip()
        assert title.split("`")[0] in _text(page), nb.name


# Everything README.md documented when it was cut to a landing page (2026-12-07): its flags and the names in
# its backticks that read as identifiers (JSON fields, files, functions, modules). Each must stay on the site.
README_FLAGS = """
--alphas --banned --base --base-model --batch --betas --bounded-betas --bt-steps --c --candidates --center
--chunk --command --compare --coordinator --d --demean --depth --dtype --edits --edits-end --edits-start --eos
--eos-bias --error --eval-every --exponent --frames --gold --init-timeout --input --iters --json --k --kl
--length --level --lm-steps --logprob --mask --mc-samples --model --n --no-bayes --no-center --no-exact
--no-footnote4 --no-plots --no-search --no-x64 --noise --noise-scale --ns --ntasks-per-node --num-processes --out
--overwrite --pairs --paper-figure --penalty --pi0 --policy --positive-only --process-id --proxy
--random-tokens --restarts --retokenize --rewards --rl-betas --rl-steps --schedule --seed --seeds --sharpness --t
--tail-fraction --temperature --thm2-c --thm2-t --tokens --topk --trials --utility --vocab --worker --xla
""".split()
README_NAMES = """
Config E_Q_V E_U E_U_mc E_U_mc_se E_V E_V_mc E_V_mc_se E_V_se E_V_upweight_best FILE.config.json GaoFit
GeneralizedPareto JAX_COMPILATION_CACHE_DIR KL KL_bound KL_per_state KVCache.concat KVCache.siblings
OutputError SLURM_NTASKS SLURM_PROCID Scorer TiltResult TreeSpec UsageError _se alpha at auto backward base
best.json best_of_n best_of_n.MIN_FIT_POINTS best_of_n.py beta beta_axis bisect_then bon bon_exact budget c
centered() check_float32 cli cli.CTRL_C_GIVE_UP_S cli.InputError cli.X cli.guard_startup conditional_value
conditioning config.json d diagnose direct distributed distributed.Flags distributed.fetch
distributed.open_run draw edits edits_end edits_start error errors ess eu_vs_beta.png ev_vs_kl.png exact
exists exponent figure3.gif figure3_stills.png fit fit_gao flags floats floats.check_sweep floats.py flock
frontier gcg goodhart_jax.distributed.initialize goodhart_jax.models goodhart_jax.models.load_model gpd gpd.py
headline heavy how importance importance.py io io.UsageError jax.distributed jax.pure_callback jax.random kind
lab lab.fits lab.fits.fit_gao lab.lm.markov_source lab.search.lm_scorer lab.summary.headlines
lab.tree.law_stats lab.tree.log_pi0_levels lam law lax.map lax.scan leaf_axis learned linear log_p log_p_mc
log_sf_q logprob main make_eval make_tiny_checkpoint make_tree max_position_embeddings mdp mdp.split_level
mdp.sweep_betas mean mean_excess.png method mitigations mitigations.py mixture_kl.csv model model.lm_head
model_type models models.ARCHITECTURES models.CheckpointError models.backbone.DecoderBackbone
models.score_array n name normal of out_proj outdir output overoptimization.png paper param pi0 planning plots
pot_tail processes proxy pytorch_model.bin quadrature reason residuals results.csv results.json results.jsonl
reward_vs_iteration.png reward_vs_logprob.png rl rl_beta rl_gap.png rmse roots roots.py rows.jsonl runner
scaling_laws scorer scorer.py search seed seeds sharding sigmoid_of_mean_tilt sigmoid_of_mean_tree
sigmoid_proxy_tilt_mc sigmoid_proxy_tree signals sims slow soft_optimum summary summary.json sweep sweep_tilt
sweep_tree t t_q tail tail_index tail_mass tails theorem2 thm2 thm2_vs_t.png tilt tilting traces.npz tree
upweight_curves.png upweighting upweighting.py utility v_head valid value_at_kl variates
""".split()


def test_nothing_the_readme_documented_is_lost(site_text):
    words = set(re.findall(r"[\w.\-()]+", site_text))
    missing = [w for w in README_FLAGS + README_NAMES if w not in words and w not in site_text]
    assert not missing, missing


def test_the_readme_links_resolve():
    """The landing page's relative links and images point at files of the repository."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert targets
    assert not [t for t in targets if not (ROOT / t).exists()]


# ------------------------------------------------------------------ version and citation


def test_the_version_is_written_once():
    import goodhart_jax

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "goodhart_jax.__version__"' in pyproject
    assert not re.search(r"^version\s*=\s*\"", pyproject, flags=re.M)  # no literal version
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r'^version: "%s"$' % re.escape(goodhart_jax.__version__), cff, flags=re.M)
    assert f"## [{goodhart_jax.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    for paper in ("Catastrophic Goodhart", "Scaling laws for reward model overoptimization"):
        assert paper in cff


# ------------------------------------------------------------------ docstrings


def _public_names(module) -> list[str]:
    """A module's public functions and classes defined in it: its `__all__`, else its names without an underscore."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(module, n, None)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == module.__name__:
            out.append(n)
    return out


def _own_doc(obj) -> str:
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and issubclass(obj, tuple) and doc.startswith(obj.__name__ + "("):
        return ""  # the namedtuple's generated "Name(field, ...)"
    if inspect.isclass(obj) and dataclasses_doc(obj, doc):
        return ""  # the dataclass's generated signature
    return doc.strip()


def dataclasses_doc(cls, doc: str) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(cls) and doc.startswith(cls.__name__ + "(")


def _public_objects():
    for mod in hooks.public_modules():
        module = importlib.import_module(mod)
        for name in _public_names(module):
            yield f"{mod}.{name}", getattr(module, name)


# Public classes without a docstring yet (2026-12-07), all in goodhart_jax/lab and goodhart_jax/models (the
# lead's to write). The list may only shrink, as PARAMS_NOT_NAMED below.
NO_DOCSTRING_YET: set[str] = set()


def test_every_public_module_function_and_class_has_a_docstring():
    missing = [m for m in hooks.public_modules() if not (importlib.import_module(m).__doc__ or "").strip()]
    missing += [q.removeprefix("goodhart_jax.") for q, obj in _public_objects() if not _own_doc(obj)]
    new = sorted(set(missing) - NO_DOCSTRING_YET)
    fixed = sorted(NO_DOCSTRING_YET - set(missing))
    assert not new, "public names without a docstring:\n  " + "\n  ".join(new)
    assert not fixed, "these have a docstring now: remove them from NO_DOCSTRING_YET:\n  " + "\n  ".join(fixed)


def test_docstrings_read_as_markdown():
    """docs/griffe_docstrings.py (configured in mkdocs.yml): a list that follows a line of text gets the blank
    line Markdown needs (after an item's continuation line too: a loose list, still a list), indented code is
    left alone; shapes side by side are no reference link, outside code spans only."""
    spec = importlib.util.spec_from_file_location("griffe_docstrings", ROOT / "docs" / "griffe_docstrings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "One error path:\n  * bad input,\n    exit 2;\n  * Ctrl-C.\n\n    x = a - b\n"
    assert mod.markdown_of(text) == "One error path:\n\n  * bad input,\n    exit 2;\n\n  * Ctrl-C.\n\n    x = a - b\n"
    assert mod.markdown_of("([BOS, x] [B, L + 1] ids, `y[0][1]`) x[B][T]") == \
        "([BOS, x] \\[B, L + 1] ids, `y[0][1]`) x[B]\\[T]"
    assert "griffe_docstrings.py:DocstringMarkdown" in (ROOT / "mkdocs.yml").read_text()


def test_no_docstring_holds_raw_html():
    """`runs/<script>/...` outside backticks is an HTML tag to Markdown: `<script>` swallowed the rest of the
    cli page once. Angle brackets belong in backticks."""
    import ast

    found = []
    for path in sorted((ROOT / "goodhart_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = re.sub(r"`[^`]*`", "", ast.get_docstring(node, clean=False) or "")
                found += [f"{path.relative_to(ROOT)}:{getattr(node, 'name', '')}: {m}"
                          for m in re.findall(r"<[A-Za-z/!][^>\n]*>", doc)]
    assert not found, found


# Public functions whose docstring does not yet name every parameter (2026-12-07). The list may only shrink:
# a new function must name its parameters, and a function fixed here must leave the list (the test says so).
# goodhart_jax/lab/* and goodhart_jax/models/* are the lead's to fix.
PARAMS_NOT_NAMED: dict[str, tuple[str, ...]] = {}


def _params_not_named() -> dict[str, tuple[str, ...]]:
    out = {}
    for qual, obj in _public_objects():
        qual = qual.removeprefix("goodhart_jax.")
        if not inspect.isfunction(obj):
            continue
        doc = _own_doc(obj)
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        missing = tuple(p for p in params if not re.search(r"(?<![\w])%s(?![\w])" % re.escape(p), doc))
        if missing:
            out[qual] = missing
    return out


def test_public_functions_name_their_parameters():
    now = _params_not_named()
    new = {q: m for q, m in now.items() if q not in PARAMS_NOT_NAMED or not set(m) <= set(PARAMS_NOT_NAMED[q])}
    fixed = sorted(q for q in PARAMS_NOT_NAMED if q not in now)
    assert not new, "docstrings that do not name these parameters:\n  " + "\n  ".join(
        f"{q}: {', '.join(m)}" for q, m in sorted(new.items()))
    assert not fixed, "these now name their parameters: remove them from PARAMS_NOT_NAMED:\n  " + "\n  ".join(fixed)
