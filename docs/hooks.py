"""MkDocs hooks: the pages generated from the repository, so that the site cannot drift from the code.

* API reference: one page a public module of `goodhart_jax` (a subpackage's page holds its submodules), each a
  mkdocstrings block; every public module is imported first, so a module that fails to import fails the build.
* Studies: `<!-- flags: NAME -->` in a page becomes the table of `sims/NAME.py`'s flags, read off the argparse
  parser that `goodhart_jax.cli` builds from the script's `Config` dataclass (the flags a user types, with their
  help and defaults); `<!-- usage: NAME -->` its usage line; `<!-- about: NAME -->` its module docstring. A
  script in `sims/` without a hand-written page `studies/NAME.md` gets a generated one (docstring, usage,
  flags); every script is in the nav.
* Notebooks: every `notebooks/*.ipynb` is a page (rendered by mkdocs-jupyter, never executed here). Where
  `docs/execute_notebooks.py` has executed a notebook into `.cache/docs/notebooks/` from the same source, the
  executed copy is rendered, with its outputs.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import textwrap
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "goodhart_jax"
EXECUTED = ROOT / ".cache" / "docs" / "notebooks"
log = logging.getLogger("mkdocs.hooks.goodhart_jax")



# ------------------------------------------------------------------ what there is to document

def public_modules() -> list[str]:
    """Every public module of the package, dotted (no component starting with an underscore), sorted."""
    out = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or len(parts) < 2:
            continue
        out.append(".".join(parts))
    return out


def api_pages() -> dict[str, list[str]]:
    """{page module: [modules on that page]}: a top-level module alone, a subpackage with its submodules."""
    pages: dict[str, list[str]] = {}
    for mod in public_modules():
        top = ".".join(mod.split(".")[:2])
        pages.setdefault(top, []).append(mod)
    return pages


def studies() -> list[str]:
    """The scripts in sims/, by name."""
    return sorted(p.stem for p in (ROOT / "sims").glob("*.py") if not p.stem.startswith("_"))


# The studies in the order the site lists them (the main job first); a script not named here comes after them.
STUDY_ORDER = ("sweep_beta", "sweep_threshold", "tail_upweight", "theorem3", "best_of_n", "mitigations",
               "overoptimization", "rm_scaling", "ensembles", "reward_tails", "acg_search", "score_rewards")


def study_order() -> list[str]:
    """Every script of sims/, in the site's order."""
    have = studies()
    return [s for s in STUDY_ORDER if s in have] + [s for s in have if s not in STUDY_ORDER]


def generated_study_page(name: str) -> str:
    """The page of a study that has no hand-written `docs/studies/NAME.md`: its docstring, usage and flags."""
    return (f"# `sims/{name}.py`\n\n<!-- about: {name} -->\n\n## Usage\n\n<!-- usage: {name} -->\n\n"
            f"## Flags\n\n<!-- flags: {name} -->\n\n*This page is generated from the script; its JSON fields and "
            f"figures are described once `docs/studies/{name}.md` is written.*\n")


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def notebook_title(path: Path) -> str:
    """A notebook's first heading, as plain text (its nav entry)."""
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip().replace("`", "")
    return path.stem


def source_hash(path: Path) -> str:
    """A notebook's identity: its cells' sources (outputs and metadata aside)."""
    nb = json.loads(path.read_text())
    src = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    return hashlib.sha256(json.dumps(src).encode()).hexdigest()


# ------------------------------------------------------------------ flags tables

_SCRIPTS: dict[str, object] = {}


def load_script(name: str):
    """sims/<name>.py as a module (registered, so that its dataclasses resolve their annotations)."""
    if name not in _SCRIPTS:
        key = f"_docs_sims_{name}"
        spec = importlib.util.spec_from_file_location(key, ROOT / "sims" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:  # noqa: BLE001 - any failure is a broken page
            raise PluginError(f"sims/{name}.py does not import: {type(e).__name__}: {e}") from e
        if not hasattr(mod, "Config"):
            raise PluginError(f"sims/{name}.py has no Config dataclass to document")
        _SCRIPTS[name] = mod
    return _SCRIPTS[name]


def parser_of(name: str) -> argparse.ArgumentParser:
    from goodhart_jax import cli
    return cli.build_parser(load_script(name).Config, prog=f"{name}.py")


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def flags_table(name: str) -> str:
    """Markdown tables of the script's flags, one a group of argparse's (a nested config's fields form one)."""
    parser = parser_of(name)
    fmt = parser._get_formatter()
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS and a.dest != "help"]
        if not actions:
            continue
        title = "Options" if group.title in ("options", "optional arguments") else group.title
        out += [f"**{_cell(title[0].upper() + title[1:])}**", "", "| flag | value | meaning |", "|---|---|---|"]
        for a in actions:
            flags = " / ".join(f"`{s}`" for s in a.option_strings)
            if a.nargs == 0 or isinstance(a, argparse.BooleanOptionalAction):
                value = ""
            else:
                metavar = fmt._metavar_formatter(a, a.dest.upper())(1)[0]
                if isinstance(a.choices, (list, tuple)) and a.metavar is None:
                    metavar = "{" + ",".join(map(str, a.choices)) + "}"
                value = f"`{metavar} ...`" if a.nargs in ("+", "*") else f"`{metavar}`"
                if a.required:
                    value += " (required)"
            value = value.replace("|", "\\|") if value.startswith("`") else _cell(value)
            out.append(f"| {flags} | {value} | {_cell(fmt._expand_help(a) if a.help else '')} |")
        out.append("")
    return "\n".join(out)


def about(name: str) -> str:
    """The script's module docstring as Markdown: what it computes, in its own words (indented lines as code)."""
    out = []
    for block in (inspect.getdoc(load_script(name)) or "").split("\n\n"):
        lines = block.splitlines()
        if all(line.startswith("    ") for line in lines):
            out.append("```\n" + textwrap.dedent(block) + "\n```")
            continue
        para: list[str] = []
        items: list[str] = []
        for line in lines:
            text = line.strip()
            if text.startswith("* "):  # a list item ("  * ..."), its continuation lines indented deeper
                if para:
                    out.append("\n".join(para))
                    para = []
                items.append("- " + text[2:])
            elif items and line.startswith("    "):
                items[-1] += " " + text
            else:
                if items:
                    out.append("\n".join(items))
                    items = []
                para.append(line)
        out += ["\n".join(x) for x in (para, items) if x]
    return "\n\n".join(out)


def usage(name: str) -> str:
    parser = parser_of(name)
    parser.prog = f"python sims/{name}.py"
    text = parser.format_usage().removeprefix("usage: ").rstrip()
    return f"```\n{text}\n```\n"


# ------------------------------------------------------------------ hooks

def on_config(config):
    """Fill the nav's Studies (every sims/ script), Notebooks and API reference sections."""
    if str(ROOT) not in sys.path:  # this checkout's package, installed or not (mkdocs restores sys.path after
        sys.path.insert(0, str(ROOT))  # loading this file, so here rather than at import)
    for item in config["nav"]:
        if isinstance(item, dict) and "Studies" in item:
            item["Studies"] = ["studies/index.md"] + [f"studies/{s}.md" for s in study_order()]
        if isinstance(item, dict) and "Notebooks" in item:
            item["Notebooks"] = [{notebook_title(p): f"notebooks/{p.name}"} for p in notebooks()]
        if isinstance(item, dict) and "API reference" in item:
            item["API reference"] = ["api/index.md"] + [f"api/{page}.md" for page in api_pages()]
    return config


@event_priority(50)  # before mkdocs-jupyter's on_files, which takes the notebooks over
def on_files(files, config):
    """The generated API pages and the notebooks (an executed copy where there is one from the same source)."""
    failed = []
    for mod in public_modules():  # a module that does not import is a broken API page
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{mod}: {type(e).__name__}: {e}")
    if failed:
        raise PluginError("public module(s) fail to import:\n  " + "\n  ".join(failed))

    for name in studies():  # a study without its hand-written page gets a generated one
        if not (Path(config["docs_dir"]) / "studies" / f"{name}.md").exists():
            log.info(f"sims/{name}.py has no page docs/studies/{name}.md: generating one from the script")
            files.append(File.generated(config, f"studies/{name}.md", content=generated_study_page(name)))

    pages = api_pages()
    index = ["# API reference", "",
             "Generated from the docstrings (`docs/hooks.py`): one page a public module; a subpackage's page "
             "holds its submodules. Users write `from goodhart_jax import tails, tilting, mdp`.", "",
             "| module | what it holds |", "|---|---|"]
    for page, mods in pages.items():
        doc = (importlib.import_module(page).__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        index.append(f"| [`{page}`]({page}.md) | {_cell(doc)} |")
        body = [f"# `{page}`", ""]
        if len(mods) == 1:
            body += [f"::: {page}", "    options:", "      show_root_heading: false", ""]
        else:
            body += [f"::: {page}", "    options:", "      show_root_heading: false", "      members: false", ""]
            for sub in mods[1:]:
                body += [f"::: {sub}", ""]
        files.append(File.generated(config, f"api/{page}.md", content="\n".join(body)))
    files.append(File.generated(config, "api/index.md", content="\n".join(index) + "\n"))

    for nb in notebooks():
        src = nb
        executed = EXECUTED / nb.name
        if executed.exists():
            meta = json.loads(executed.read_text()).get("metadata", {}).get("goodhart_jax", {})
            if meta.get("source_sha256") == source_hash(nb):
                src = executed
            else:
                log.info(f"{executed} was executed from another version of {nb.name}: rendering the source")
        else:
            log.info(f"{nb.name} is rendered without outputs (`make docs` executes it first)")
        files.append(File(f"notebooks/{nb.name}", src_dir=str(src.parent.parent), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    """`<!-- flags: NAME -->` -> the flags tables of sims/NAME.py; `<!-- usage: NAME -->` -> its usage."""
    import re

    def flags(m):
        return flags_table(m[1])

    def use(m):
        return usage(m[1])

    markdown = re.sub(r"<!-- flags: (\w+) -->", flags, markdown)
    markdown = re.sub(r"<!-- about: (\w+) -->", lambda m: about(m[1]), markdown)
    return re.sub(r"<!-- usage: (\w+) -->", use, markdown)
