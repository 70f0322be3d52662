"""The user documentation stays runnable: README.md, docs/*.md and benchmarks/RESULTS.md.

Every relative link resolves (file and heading); every `ray-emer ...` and `python jobs/*.py ...` command in a
fenced code block parses with the CLI's own parser, and its --config / --set / flags load into the typed config
(unknown keys fail, as they would at run time); every `python benchmarks/*.py` flag exists in that script.
Nothing is run: no Ray, no subprocess.
"""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from ray_emer import cli
from ray_emer.config import load_config

DOCS = [REPO / "README.md", REPO / "benchmarks" / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]
JOB_SCRIPTS = {"jobs/quickstart.py": "quickstart", "jobs/extract_features.py": "extract", "jobs/train.py": "train",
               "jobs/label_archive.py": "label"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _ids(paths):
    return [p.relative_to(REPO).as_posix() for p in paths]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path) -> set[str]:
    text, fenced = [], False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            text.append(_slug(line.lstrip("#")))
    return set(text)


def _code_lines(path) -> list[str]:
    """Lines of the ```bash blocks, continuations joined (other blocks show output, code or layouts)."""
    lines, fenced, pending = [], None, ""
    for raw in path.read_text().splitlines():
        if raw.startswith("```"):
            fenced = raw[3:].strip() if fenced is None else None
            continue
        if fenced not in ("bash", "sh"):
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def _commands(path) -> list[list[str]]:
    """argv of every `ray-emer` / job-script command shown, split on `&&` and `|`, comments dropped."""
    found = []
    for line in _code_lines(path):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for part in " ".join(shlex.quote(w) for w in words).replace(" '&&' ", " && ").split(" && "):
            argv = shlex.split(part)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
                argv = argv[1:]
            if len(argv) > 1 and (argv[0] == "ray-emer" or argv[0].endswith("/ray-emer")):
                found.append(argv[1:])
                continue
            for i, word in enumerate(argv):  # a job script, also after `ray job submit ... --`
                if word == "python" and i + 1 < len(argv) and argv[i + 1] in JOB_SCRIPTS:
                    found.append([JOB_SCRIPTS[argv[i + 1]], *argv[i + 2:]])
                    break
    return found


def test_readme_is_a_short_users_document():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for needle in ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest",
                   "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/ray-emer quickstart",
                   "RAY_AUTH_MODE=token", "benchmarks/RESULTS.md"):
        assert needle in text, needle
    assert not re.search(r"#\d+\b", text), "issue numbers belong in commit messages"


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_relative_links_resolve(path):
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_documented_commands_parse_and_configure(path):
    parser = cli.build_parser()
    for argv in _commands(path):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: `ray-emer {shlex.join(argv)}` does not parse")
        cmd = args._command
        if cmd.config:
            ns = vars(args)
            values = {f.to: ns["cfg:" + f.to] for f in cmd.flags if f.to and ns["cfg:" + f.to] is not None}
            config = ns["_config"] and str(REPO / ns["_config"])
            load_config(cli._load(cmd.config), config, ns["_overrides"], values=values)


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_documented_benchmark_flags_exist(path):
    for line in _code_lines(path) + path.read_text().splitlines():
        for script, rest in re.findall(r"python (benchmarks/\w+\.py)((?: --?[\w-]+(?: [^\s`|-][^\s`|]*)?)*)", line):
            source = (REPO / script).read_text()
            for flag in re.findall(r"(--[\w-]+)", rest):
                assert f'"{flag}"' in source, f"{path.name}: {script} has no {flag}"


def test_every_job_config_submit_line_is_documented_in_the_cluster_guide():
    cluster = (REPO / "docs" / "cluster.md").read_text()
    for yaml in sorted((REPO / "jobs" / "configs").glob("*.yaml")):
        first = yaml.read_text().splitlines()[0]
        assert first[len("# Submit: "):] in cluster, yaml.name
