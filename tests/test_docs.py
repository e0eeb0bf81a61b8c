"""The documents: README.md (a Space's front matter, at most 250 lines), docs/*.md and CHANGELOG.md link only to
files and headings that exist, their commands name scripts, modules and options that exist, and no tracked text
file speaks of how the project was developed (working sessions, issue numbers) instead of its releases."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_LINES = 250


def documents() -> list[Path]:
    docs = sorted((REPO / "docs").glob("*.md")) if (REPO / "docs").is_dir() else []
    return [p for p in (README, REPO / "CHANGELOG.md", *docs) if p.is_file()]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where a bracket is not a link."""
    text = re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, _ and - kept), spaces to -."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    text = re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    for line in text.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return found


def test_the_documents_are_there():
    names = {p.relative_to(REPO).as_posix() for p in documents()}
    assert {"README.md", "CHANGELOG.md", "docs/training.md", "docs/benchmarks.md", "docs/study.md",
            "docs/weights.md"} <= names


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_to_a_file_and_heading_that_exist(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif not dest.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, broken


def test_the_readme_is_short_and_starts_with_the_space_front_matter():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    assert lines[0] == "---", "README.md must start with the Space's YAML front matter"
    end = lines.index("---", 1)
    keys = dict(line.split(":", 1) for line in lines[1:end] if ":" in line)
    for key in ("title", "sdk", "sdk_version", "app_file", "license"):
        assert key in keys, f"front matter lacks {key}"
    assert (REPO / keys["app_file"].strip()).is_file()


def test_the_readme_links_the_results_grid_the_docs_index_and_the_index_every_page():
    targets = {t.partition("#")[0] for t in links(README)}
    assert "assets/results/examples.png" in targets
    assert "docs/README.md" in targets, "README.md must link the documentation index docs/README.md"
    index = {t.partition("#")[0] for t in links(REPO / "docs" / "README.md")}
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name != "README.md":
            assert page.name in index or f"docs/{page.name}" in targets, \
                f"docs/{page.name} is linked from neither docs/README.md nor README.md: add a line to the index"


# -- commands --------------------------------------------------------------------------------------------------

def commands(path: Path) -> list[str]:
    """The shell lines of the document's bash code blocks, continuation lines joined."""
    found = []
    text = path.read_text(encoding="utf-8")
    for block in re.findall(r"^[ \t]*```(?:bash|sh|shell)\n(.*?)^[ \t]*```", text, flags=re.M | re.S):
        block = block.replace("\\\n", " ")
        found += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return found


def python_invocations(line: str) -> list[tuple[str, list[str]]]:
    """(module or script, its arguments) for each ``python ...`` in a shell line."""
    out = []
    for part in re.split(r"&&|\|\||;|\|", line.split(" # ")[0]):
        words = part.split()
        for i, word in enumerate(words):
            if re.fullmatch(r"(\S*/)?python3?(\.\d+)?", word) and i + 1 < len(words):
                rest = words[i + 1:]
                if rest[0] == "-m" and len(rest) > 1:
                    if rest[1] not in ("venv", "pip", "pytest"):
                        out.append((rest[1], rest[2:]))
                elif rest[0].endswith(".py"):
                    out.append((rest[0], rest[1:]))
                break
    return out


def source_files(target: str) -> list[Path]:
    """The files that define a ``python -m`` module or a script, and the package sources its options may live in."""
    if target.endswith(".py"):
        path = REPO / target
        return [path] + (sorted(path.parent.glob("*.py")) if path.is_file() else [])
    base = REPO / target.replace(".", "/")
    own = [p for p in (base.with_suffix(".py"), base / "__main__.py") if p.is_file()]
    package = REPO / target.split(".")[0]
    return own + sorted(package.rglob("*.py")) if own else []


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_documented_command_names_a_module_and_options_that_exist(path):
    problems = []
    for line in commands(path):
        for target, args in python_invocations(line):
            files = source_files(target)
            if not files:
                problems.append(f"{line}: no module or script {target}")
                continue
            code = "\n".join(f.read_text(encoding="utf-8") for f in files)
            for arg in args:
                option = re.match(r"\[?(--[a-z][a-z0-9-]*)", arg)
                if option and f'"{option.group(1)}"' not in code:
                    problems.append(f"{line}: {target} has no option {option.group(1)}")
    assert not problems, problems


def test_the_readme_quick_start_commands_are_the_installed_ones():
    text = README.read_text(encoding="utf-8")
    assert ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python app.py"
            in text)
    assert "bash .ci/run" in text and (REPO / ".ci" / "run").is_file()


# -- the project speaks of itself -------------------------------------------------------------------------------

#: How a development history reads: "session 8", "sessions 5-7", "session-3", "nine sessions", "this session",
#: "a GPU session", "issue 8", "issue-4", "issues #12", "the issue's bars". A web session (a page session, a
#: study session token, an HTTP or Gradio session, an onnxruntime InferenceSession) matches none of these.
_NUMBER = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
DEVELOPMENT = re.compile("|".join([
    r"\bsessions?[ -]#?\d",
    rf"\bsessions?\s+in\s+{_NUMBER}\b",
    rf"\b{_NUMBER}(?:\s+\w+)?\s+sessions\b",
    rf"\bsessions?\s+{_NUMBER}\b",
    r"\b(?:this|that|next|last|later|earlier|previous|former|every|one|a|each|further)\s+(?:GPU\s+|CPU\s+|working\s+|"
    r"development\s+|training\s+)?session\s+(?:was|went|lent|shipped|spent|gave|tried|brought|had|ran|found)\b",
    r"\b(?:working|development|coding|GPU|CPU|training)\s+sessions?\b",
    r"\bin\s+(?:this|that|the\s+next|a\s+later|later|earlier)\s+sessions?\b",
    r"\bissues?[ -]#?\d",
    r"\bthe\s+issue(?:'s|\s+asks|\s+says)\b",
]), re.I)


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in names.decode().split("\0"):
        path = REPO / name
        if name and path.is_file() and path.resolve() != Path(__file__).resolve():
            files.append(path)
    return files


def test_the_pattern_tells_development_history_from_web_sessions():
    for history in ("in session 8", "sessions 5-7", "the session-3 run", "over seven sessions", "over nine sessions",
                    "One session in eight", "a GPU session", "issue 8's target", "issue-4", "issues #12",
                    "the issue's bars", "session 9's cnn", "this session went on"):
        assert DEVELOPMENT.search(history), history
    for web in ("works only from a page session", "a page-session token", "the study's session key",
                "Gradio session hash", "no valid study session", "onnxruntime.InferenceSession(path)",
                '@pytest.fixture(scope="session")', "bound to the session it was issued to", "the issue time",
                "loading the page issues a token", "another session cannot use it", "SessionState(demo)"):
        assert not DEVELOPMENT.search(web), web


def test_no_tracked_text_file_speaks_of_working_sessions_or_issue_numbers():
    found = []
    for path in tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            match = DEVELOPMENT.search(line)
            if match:
                found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    assert not found, "\n".join(found)
