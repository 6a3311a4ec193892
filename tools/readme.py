"""Render nbs/index.ipynb as README.md without Quarto (which cannot be installed offline).

Markdown cells are copied; code cells become ```python blocks followed by their text output.
Cells marked `#| hide` are left out, `#| echo: false` cells show their output alone (Markdown as Markdown), and
`#|` directive lines are dropped, as nbdev does. Links may be written
relative to the notebook (`tutorials/01_x.ipynb`, as the docs site needs them): README.md gets them relative to the
repository root (`nbs/tutorials/01_x.ipynb`).
Run `python tools/readme.py` to write README.md, or `--check` to fail when it is out of date.
"""
import json, os, re, sys
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


def _markdown_output(outputs) -> str:
    return "\n".join(_text(o["data"]["text/markdown"]).strip("\n")
                     for o in outputs if "text/markdown" in o.get("data", {}))


def _code_cell(cell) -> str:
    lines = _text(cell["source"]).splitlines()
    if any(l.strip() in ("#| hide", "#|hide") for l in lines): return ""
    if any(l.strip().replace(" ", "") == "#|echo:false" for l in lines):  # the output alone, as Quarto shows it
        return _markdown_output(cell.get("outputs", [])) or _output_text(cell.get("outputs", []))
    code = "\n".join(l for l in lines if not l.lstrip().startswith("#|")).strip("\n")
    block = f"```python\n{code}\n```" if code else ""
    out = _output_text(cell.get("outputs", []))
    return block + (f"\n\n```\n{out}\n```" if out else "")


def _root_links(md: str, nb_dir: Path) -> str:
    ("Links written relative to the notebook (`tutorials/x.ipynb`, right on the docs site) made relative to the "
     "repository root.")
    def fix(m):
        target = m.group(2)
        if (re.match(r"[a-z][\w+.-]*:|[/#]", target) or (ROOT / target).exists()
                or not (nb_dir / target.split("#")[0]).exists()): return m.group(0)
        return m.group(1) + Path(os.path.normpath(nb_dir / target)).relative_to(ROOT).as_posix() + ")"
    return re.sub(r"(\]\()([^)\s]+)\)", fix, md)


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    parts = [_root_links(_text(c["source"]).strip("\n"), nb_path.parent) if c["cell_type"] == "markdown"
             else _code_cell(c) for c in nb["cells"]]
    head = "<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n"
    return head + "\n\n".join(p for p in parts if p) + "\n"


if __name__ == "__main__":
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.read_text(encoding="utf-8") == render()
                 else "README.md is out of date: run `python tools/readme.py`")
    readme.write_text(render(), encoding="utf-8")
    print(f"wrote {readme}")
