"""A notebook's `# inline: NAME` cells, ready to exec in a test (one helper for every notebook-vs-package test).

A plain module, not conftest: `tests/browser/conftest.py` would shadow a `from conftest import ...`.
"""


def inline_cell(notebook: str, name: str) -> str:
    """The one code cell of ``notebooks/<notebook>`` marked ``# inline: <name>``, ready to ``exec`` on its own.

    The notebook's top-level imports from the cells above it come first, so a test never re-types them. Every
    test that compares a notebook's inline definition with the package reaches the cell through this helper.
    """
    import ast
    import json

    from course_utils.tools.course import NOTEBOOK_DIR, marked_cell

    path = NOTEBOOK_DIR / notebook
    marker = f"# inline: {name}"
    cell = marked_cell(path, marker)
    imports = []
    for c in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        if c["cell_type"] != "code":
            continue
        if src == cell:
            break
        try:
            tree = ast.parse(src)
        except SyntaxError:  # shell escapes or magics: no imports to take
            continue
        imports += [ast.get_source_segment(src, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(imports + [cell])


def run_inline(notebook: str, name: str, ns: dict | None = None) -> dict:
    """``exec`` the notebook's ``# inline: <name>`` cell (see ``inline_cell``) in ``ns`` and return it."""
    ns = {} if ns is None else ns
    exec(compile(inline_cell(notebook, name), f"{notebook}:{name}", "exec"), ns)
    return ns
