"""Every shell and Python example of README.md and docs/*.md runs here, so an example that stops working
fails CI (issue 18); plus the documented promises that need a recorded search (`searcher.warm_start`).

What counts as an example: a fenced block tagged bash/sh/shell/zsh/console or python/py. A block whose
line before (blank lines aside) is the HTML comment `<!-- doctest: skip (reason) -->` is skipped, its
reason in the test id; a `doctest:` comment of any other form is an error. Untagged blocks (output,
synopses) are not examples. Every shell example, skipped or not, must also be safe to paste into zsh:
no unquoted `[`, `]`, `*`, `?`, `{`, `}` (zsh expands them, or stops with "no matches found").

How they run, cheaply (the whole file is ~2-3 minutes on 2 cores):
- in one temporary folder that holds copies of experiments/ and search_spaces/ and, as its own
  `mlflow.db` and `tunetl_runs/`, one shared state recorded once by the `state` fixture: the quickstart,
  meta_digits and a registered meta-model `tunetl-meta-model`, so `best`/`export`/`report`/`predict`
  examples have something to read, whichever examples run and in whatever order;
- a `tunetl ...` (or `.venv/bin/tunetl ...`) command runs in this process through `tunetl.cli.main`,
  the console script's own entry point, sharing one local Ray; a block with any other command runs in
  bash with `.venv/bin/{tunetl,python,mlflow}` pointing at this interpreter;
- **searches are shrunk**: `tunetl run` of a shipped experiment gets the `--set` overrides of
  `SHRINK` appended (`tunetl.api.run` in Python examples gets them added to `overrides`), e.g. the
  quickstart at 1 epoch, 1 seed, 5 images per label. Everything else runs as written.
Each command must exit 0.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL, PYTHON = {"bash", "sh", "shell", "zsh", "console"}, {"python", "py"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
DOCTEST = re.compile(r"<!--\s*doctest\b")
SKIP = re.compile(r"^<!--\s*doctest:\s*skip\s*\((?P<reason>[^)]+(?:\([^)]*\)[^)]*)*)\)\s*-->$")
TUNETL = {"tunetl", ".venv/bin/tunetl"}

_META_TASKS = (
    "tasks=[{dataset: {builtin: digits, classes: [5, 6, 7, 8, 9]}, "
    "source: {train_on: {builtin: digits, classes: [0, 1, 2, 3, 4]}, epochs: 1}}, "
    "{dataset: {builtin: digits, classes: [0, 1, 2, 3, 4]}, "
    "source: {train_on: {builtin: digits, classes: [5, 6, 7, 8, 9]}, epochs: 1}}]"
)
#: `--set` overrides appended to every search of a shipped experiment the examples run (by file name).
SHRINK: dict[str, list[str]] = {
    "quickstart.yaml": ["training.epochs=1", "source.epochs=1", "seeds=[0]",
                        "search_space.images_per_label={grid: [5]}"],
    "meta_digits.yaml": ["training.epochs=1", _META_TASKS, "search_space.inner_lr={grid: [0.0, 0.01]}",
                         "search_space.last_lr={grid: [0.1]}", "search_space.images_per_label={grid: [3, 30]}"],
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        where = f"{self.path.relative_to(ROOT)}:{self.line}"
        return f"{where} [skip: {self.skip}]" if self.skip else where


def _blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown file, and the malformed `doctest` comments in it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, bad, i = [], [], 0
    while i < len(lines):
        if DOCTEST.search(lines[i]) and not SKIP.match(lines[i].strip()):
            bad.append(f"{path.relative_to(ROOT)}:{i + 1}: {lines[i].strip()}")
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(m["fence"]):
            end += 1
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip = SKIP.match(lines[before].strip()) if before >= 0 else None
        indent = len(m["indent"])
        code = "\n".join(line[indent:] for line in lines[i + 1 : end])
        blocks.append(Block(path, i + 1, m["lang"].lower(), code, skip["reason"].strip() if skip else None))
        i = end + 1
    return blocks, bad


def _examples(langs: set[str]) -> list[Any]:
    out = []
    for path in DOCS:
        for b in _blocks(path)[0]:
            if b.lang in langs:
                marks = [pytest.mark.skip(reason=b.skip)] if b.skip else []
                out.append(pytest.param(b, id=b.id, marks=marks))
    return out


# --- static checks (fast) ---------------------------------------------------------------------------


def test_doctest_comments_are_well_formed() -> None:
    bad = [line for path in DOCS for line in _blocks(path)[1]]
    assert not bad, "write `<!-- doctest: skip (reason) -->` on the line before the block:\n" + "\n".join(bad)


def _unquoted_globs(command: str) -> list[str]:
    """Words with characters zsh (and bash) would expand: outside quotes and not escaped."""
    found, quote, word, glob, escaped = [], None, "", False, False
    for ch in command + " ":
        if escaped:
            escaped, word = False, word + ch
        elif ch == "\\" and quote != "'":
            escaped, word = True, word + ch
        elif quote:
            quote = None if ch == quote else quote
            word += ch
        elif ch in "'\"":
            quote, word = ch, word + ch
        elif ch.isspace():
            if glob:
                found.append(word)
            word, glob = "", False
        elif ch == "#" and not word:
            break
        else:
            glob = glob or ch in "[]*?{}"
            word += ch
    return found


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for path in DOCS for b in _blocks(path)[0]
                                   if b.lang in SHELL])
def test_shell_examples_are_zsh_safe(block: Block) -> None:
    text = re.sub(r"\\\n", " ", block.code)
    bad = [w for line in text.splitlines() for w in _unquoted_globs(line)]
    assert not bad, f"quote these words (zsh expands [ ] * ? {{ }}): {bad}"


# --- the shared state and the runners ------------------------------------------------------------------


def _shrink(experiment: Any) -> list[str]:
    return SHRINK.get(Path(str(experiment)).name, []) if isinstance(experiment, (str, Path)) else []


def _wrappers(bin_dir: Path) -> None:
    """`.venv/bin/tunetl|python|mlflow` for bash examples: this interpreter, `run` shrunk like in-process."""
    bin_dir.mkdir(parents=True)
    cases = "".join(f"    *{name}) extra=({' '.join(shlex.quote(f'--set={o}') for o in sets)});;\n"
                    for name, sets in SHRINK.items())
    scripts = {
        "tunetl": (f'#!/bin/bash\nextra=()\nif [ "$1" = run ]; then\n  case "$2" in\n{cases}  esac\nfi\n'
                   f'exec {shlex.quote(sys.executable)} -m tunetl.cli "$@" "${{extra[@]}}"\n'),
        "python": f'#!/bin/bash\nexec {shlex.quote(sys.executable)} "$@"\n',
        "mlflow": f'#!/bin/bash\nexec {shlex.quote(str(Path(sys.executable).parent / "mlflow"))} "$@"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IXUSR)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The examples' folder with the shared state recorded (shrunk searches, a registered meta-model)."""
    import ray

    from tunetl import api

    work = tmp_path_factory.mktemp("docs")
    for folder in ("experiments", "search_spaces"):
        shutil.copytree(ROOT / folder, work / folder)
    _wrappers(work / ".venv" / "bin")
    old = Path.cwd()
    os.chdir(work)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name in ("quickstart", "meta_digits"):
            summary = api.run(f"experiments/{name}.yaml", overrides=SHRINK[f"{name}.yaml"])
            assert summary.num_failed == 0, name
        api.fit_regressor(["meta_digits"], register="tunetl-meta-model")
        yield work
    finally:
        os.chdir(old)
        ray.shutdown()


@pytest.fixture
def in_state(state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tunetl import api

    monkeypatch.chdir(state)
    real_run = api.run

    def shrunk_run(experiment: Any, *args: Any, overrides: list[str] | None = None, **kwargs: Any) -> Any:
        return real_run(experiment, *args, overrides=[*(overrides or []), *_shrink(experiment)], **kwargs)

    monkeypatch.setattr(api, "run", shrunk_run)
    return state


def _commands(code: str) -> list[list[str]] | None:
    """The block as `tunetl` argument lists, or None when it needs a real shell (other programs, pipes)."""
    out: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current: list[str] = []
        for token in [*lex, ";"]:
            if token in ("&&", ";"):
                if current:
                    if current[0] not in TUNETL:
                        return None
                    out.append(current[1:])
                current = []
            elif set(token) <= set("|&<>()"):
                return None
            else:
                current.append(token)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("block", _examples(SHELL))
def test_shell_example_runs(block: Block, in_state: Path, capsys: pytest.CaptureFixture) -> None:
    from tunetl.cli import main

    commands = _commands(block.code)
    if commands is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PATH"] = f"{in_state / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=in_state, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return
    for argv in commands:
        if argv and argv[0] == "run" and len(argv) > 1:
            argv = [*argv, *(f"--set={o}" for o in _shrink(argv[1]))]
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        out, err = capsys.readouterr()
        assert code == 0, f"{block.id}: tunetl {shlex.join(argv)} exited {code}:\n{out[-3000:]}\n{err[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", _examples(PYTHON))
def test_python_example_runs(block: Block, in_state: Path) -> None:
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})


# --- promises that need the recorded state -----------------------------------------------------------


def test_the_zsh_check_finds_unquoted_globs() -> None:
    assert _unquoted_globs("tunetl features --dataset builtin:digits[5,6] --set seeds=[0]  # [ok]") == [
        "builtin:digits[5,6]", "seeds=[0]"]
    assert _unquoted_globs("""tunetl run x --set 'seeds=[0,1]' --set a="{grid: [5]}" --dataset \\[x""") == []


@pytest.mark.slow
def test_warm_start_from_the_registered_meta_model(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`searcher: {type: optuna, warm_start: tunetl-meta-model}`: the prediction is Optuna's first trial and
    the parent run says so (`tunetl.warm_start.<i>` tags)."""
    import json

    from mlflow import MlflowClient

    from tunetl import api
    from tunetl.tracking import resolve_tracking_uri

    monkeypatch.chdir(state)
    summary = api.run("experiments/meta_digits.yaml", name="warm",
                      overrides=[*SHRINK["meta_digits.yaml"],
                                 "searcher={type: optuna, warm_start: tunetl-meta-model, num_samples: 2}",
                                 "search_space.inner_lr={loguniform: [0.0001, 0.1]}"])
    assert summary.num_failed == 0 and summary.num_trials == 2  # optuna: num_samples trials per seed
    tags = MlflowClient(resolve_tracking_uri()).get_run(summary.parent_run_id).data.tags
    points = [json.loads(tags[f"tunetl.warm_start.{i}"]) for i in range(2)]
    first = api.predict("builtin:digits[5,6,7,8,9]", source="builtin:digits[0,1,2,3,4]", images_per_label=3)
    assert points[0]["inner_lr"] == pytest.approx(min(max(first["recommendation"]["inner_lr"], 1e-4), 0.1))
    tried = summary.trials["inner_lr"].round(12).tolist()
    assert all(round(p["inner_lr"], 12) in tried for p in points)


@pytest.mark.slow
def test_meta_digits_runs_tiny_and_feeds_the_meta_model(in_state: Path) -> None:
    from tunetl import api

    frame = api.trials("meta_digits")
    assert {"digits[5,6,7,8,9]", "digits[0,1,2,3,4]"} <= set(frame["dataset"])
    assert set(frame["inner_lr"]) >= {0.0, 0.01} and (frame["status"] == "FINISHED").all()
    result = api.predict("builtin:digits[2,3]", source="builtin:digits[5,6,7,8,9]", images_per_label=3)
    assert result["source"]["match"] == "recorded" and result["recommendation"]["inner_lr"] is not None
