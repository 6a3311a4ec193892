"""Render nbs/index.ipynb as README.md without Quarto (which cannot be installed offline).

Markdown cells are copied; code cells become ```python blocks followed by their text output.
Cells marked `#| hide` are left out and `#|` directive lines are dropped, as nbdev does.
Run `python tools/readme.py` to write README.md, or `--check` to fail when it is out of date.
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _output_text(outputs) -> str:
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream": parts.append(_text(out["text"]))
        elif "text/plain" in out.get("data", {}): parts.append(_text(out["data"]["text/plain"]) + "\n")
    return "".join(parts).rstrip("\n")


def _code_cell(cell) -> str:
    lines = _text(cell["source"]).splitlines()
    if any(l.strip() in ("#| hide", "#|hide") for l in lines): return ""
    code = "\n".join(l for l in lines if not l.lstrip().startswith("#|")).strip("\n")
    block = f"```python\n{code}\n```" if code else ""
    out = _output_text(cell.get("outputs", []))
    return block + (f"\n\n```\n{out}\n```" if out else "")


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    parts = [_text(c["source"]).strip("\n") if c["cell_type"] == "markdown" else _code_cell(c) for c in nb["cells"]]
    head = "<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n"
    return head + "\n\n".join(p for p in parts if p) + "\n"


if __name__ == "__main__":
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.read_text(encoding="utf-8") == render() else "README.md is out of date: run `python tools/readme.py`")
    readme.write_text(render(), encoding="utf-8")
    print(f"wrote {readme}")
