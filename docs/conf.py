"""Sphinx configuration of the surfharm documentation.

Build (no network needed; warnings are errors, broken cross-references included)::

    pip install -e ".[all,docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The gallery runs every script of ``examples/`` in quick mode (``--quick``, output into a temporary
folder) and shows what it prints and the images it renders.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(DOCS))  # _gallery_hooks

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYVISTA_OFF_SCREEN", "true")

import surfharm  # noqa: E402

# -- Project ------------------------------------------------------------------------------------------
project = "surfharm"
author = "surfharm developers"
copyright = "surfharm developers"
release = surfharm.__version__
version = ".".join(release.split(".")[:2])

# -- General ------------------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5",
                    "auto_examples/*.codeobj.json"]
# Every unresolved cross-reference is a warning (an error with -W). Objects of other projects are not
# resolved (no intersphinx: the build needs no network) and are ignored here by package name.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|pandas|pd|scipy|sklearn|torch|nibabel|nilearn|pyvista|pv|vtk|matplotlib|"
               r"safetensors|tqdm|pathlib|os|typing|collections|dataclasses|enum|abc|json|io|argparse|"
               r"concurrent|numbers|builtins|contextlib|functools)(\..*)?"),
    (r"py:.*", r"(Path|PathLike|ndarray|DataFrame|Series|ArrayLike|Sequence|Mapping|Iterable|Iterator|"
               r"Callable|Any|Literal|Optional|Union|Self|BaseEstimator|TransformerMixin|Module|Tensor)"),
]

# -- Markdown (MyST) -----------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- API reference ------------------------------------------------------------------------------------
API_PACKAGES = ("surfharm.harmonize", "surfharm.io", "surfharm.resample", "surfharm.cohort", "surfharm.evaluate",
                "surfharm.simulate", "surfharm.viz", "spherical_ops")
autosummary_generate = True
autosummary_ignore_module_all = False  # a package's page lists what its __all__ exports
autosummary_imported_members = False
autodoc_typehints = "none"             # types are given in the docstrings
autodoc_default_options = {"member-order": "bysource"}
autodoc_inherit_docstrings = True
# Docstrings are NumPy style (Parameters / Returns sections) or Google style (Args: / Attributes:):
# napoleon reads both. Attributes are listed like parameters (fields of the class, not separate objects).
napoleon_numpy_docstring = True
napoleon_google_docstring = True
napoleon_use_param = False         # parameter types are prose ("(V, 3) float array"), not cross-references
napoleon_use_rtype = False
napoleon_custom_sections = [("Attributes", "params_style")]

# -- Gallery ------------------------------------------------------------------------------------------
import pyvista  # noqa: E402

pyvista.BUILDING_GALLERY = True
pyvista.OFF_SCREEN = True

sphinx_gallery_conf = {
    "examples_dirs": str(REPO / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"(^|[\\/])[a-z][a-z0-9_]*\.py$",  # every example runs; _common.py is a helper
    "ignore_pattern": r"(^|[\\/])_[^\\/]*\.py$",          # not a page either
    "reset_argv": "_gallery_hooks.quick_args",
    "reset_modules": ("matplotlib", "_gallery_hooks.reset_state"),
    "image_scrapers": ("matplotlib", "pyvista"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "show_signature": False,
    "write_computation_times": False,  # its page loads scripts from the network
}

# -- HTML ---------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"surfharm {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path: list[str] = []
html_show_sourcelink = False


# -- Links of the Markdown pages that point outside docs/ ------------------------------------------------
# The pages stay readable on GitHub, where ``../README.md`` and ``../benchmarks/`` are files of the
# repository. On the site, the README's sections live on pages of their own; links to other files of the
# repository keep their text without a link.
OUTSIDE_LINK = re.compile(r"\[([^\]]+)\]\(\.\./([^)#\s]*)(#[^)\s]*)?\)")
SITE_PAGE = {"README.md": "index.md"}


def _site_links(app, docname, source):
    if "/" in docname:
        return

    def replace(match):
        text, path, anchor = match.group(1), match.group(2), match.group(3) or ""
        if path in SITE_PAGE:
            return f"[{text}]({SITE_PAGE[path]}{anchor})"
        return text

    source[0] = OUTSIDE_LINK.sub(replace, source[0])


# -- Cross-references to the project's own objects --------------------------------------------------------
# The reference documents what the packages export. A docstring may name a module or an object that is not
# on those pages (a submodule, a helper): such a reference is checked here — the object must exist — and is
# shown as code without a link. A reference to something that does not exist stays a warning (an error with
# -W), like every other unresolved reference.
PROJECT_PACKAGES = ("surfharm", "spherical_ops")


def _project_object(target, modname, classname):
    import importlib

    candidates = [target]
    if modname:
        candidates += [f"{modname}.{classname}.{target}" if classname else None, f"{modname}.{target}"]
    if modname:  # a name of the module that defines the documented object (documented under its package)
        candidates += [f"{module}.{target}" for module in sorted(sys.modules) if module.startswith(modname + ".")]
    for name in filter(None, candidates):
        if name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        parts = name.split(".")
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attr in parts[split:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return obj
    return None


def _in_attribute_type(node):
    # The type of an attribute or property comes from the first line of its docstring ("(n_scans,) bool:
    # ..."), shown in its signature or as its "Type" field: prose, not a cross-reference.
    from docutils import nodes
    from sphinx import addnodes

    in_type = False
    parent = node.parent
    while parent is not None and not isinstance(parent, addnodes.desc):
        if isinstance(parent, addnodes.desc_signature):
            in_type = True
        if isinstance(parent, nodes.field) and parent.children and parent[0].astext() == "Type":
            in_type = True
        parent = parent.parent
    return in_type and parent is not None and parent.get("objtype") in ("attribute", "property", "data")


def _existing_project_object(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    if _in_attribute_type(node):
        from docutils import nodes

        return nodes.Text(contnode.astext())
    target = node["reftarget"].lstrip("~.")
    if _project_object(target, node.get("py:module"), node.get("py:class")) is None:
        return None
    from docutils import nodes

    return nodes.literal(target, contnode.astext())


def _reexports():
    """Names a documented package exports from another package: documented there, linked from here."""
    import importlib

    found = {}
    for package in API_PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            home = getattr(obj, "__module__", None) or ""
            if isinstance(obj, type) and home.split(".")[0] != package.split(".")[0]:
                found[f"{package}.{name}"] = f"{home.split('.')[0]}.{name}"
    return found


def _skip_member(app, what, name, obj, skip, options):
    # scikit-learn's generated set_{fit,transform,...}_request methods: documented by scikit-learn.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


autosummary_context = {"reexports": _reexports()}


# -- Math without the network -------------------------------------------------------------------------------
# MathJax would be loaded from a CDN: the few formulas of the docstrings are shown as their LaTeX source.
def _visit_math(self, node):
    from docutils import nodes

    self.body.append(self.starttag(node, "span", "", CLASS="math") + self.encode(node.astext()) + "</span>")
    raise nodes.SkipNode


def _visit_displaymath(self, node):
    from docutils import nodes

    self.body.append(self.starttag(node, "pre", "", CLASS="math") + self.encode(node.astext()) + "</pre>")
    raise nodes.SkipNode


html_math_renderer = "latex_source"


def setup(app):
    app.add_html_math_renderer("latex_source", inline_renderers=(_visit_math, None),
                               block_renderers=(_visit_displaymath, None))
    app.connect("source-read", _site_links)
    app.connect("missing-reference", _existing_project_object)
    app.connect("autodoc-skip-member", _skip_member)
