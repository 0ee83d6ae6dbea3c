"""Inputs an attacker or a careless user gives `tunetl run`, refused before Ray starts: exit 2 and one line
that names the file, key or value and says what to do, never a traceback. Real files, the real CLI (its
`main`, in this process: no Ray is started by any of these, which `ray.is_initialized` confirms)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from tunetl import cli

QUICK = str(Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml")
SCRATCH = "search_space={transfer_depth: 0, images_per_label: {grid: [5]}}"

BOMB = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _experiment(tmp: Path, body: str, name: str = "exp.yaml") -> str:
    path = tmp / name
    path.write_text(body)
    return str(path)


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (argv after `run`, text the error must contain)."""
    (tmp / "a_file").write_text("not a folder")
    pickled = tmp / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module, not a state dict
    outside = tmp / "elsewhere"
    outside.mkdir()
    (outside / "space.yaml").write_text("api_password: hunter2-secret\ntransfer_depth: [0,\n")
    space_bomb = tmp / "space_bomb.yaml"
    space_bomb.write_text(BOMB.replace("i: &i", "transfer_depth: &i"))
    quick = Path(QUICK).read_text()
    from PIL import Image

    for cls in ("a", "b"):
        (tmp / "tiny" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (1, 1), color=40 * i).save(tmp / "tiny" / cls / f"{i}.png")
    return {
        "alias bomb": ([_experiment(tmp, BOMB)], "aliases"),
        "alias bomb in the search-space file": (
            [_experiment(tmp, quick.split("search_space:")[0] + f"search_space: {space_bomb}\n", "sb.yaml")],
            "aliases"),
        "duplicate key": ([_experiment(tmp, "name: a\nname: b\n", "dup.yaml")], "'name' is given twice"),
        "slash in name": ([QUICK, "--name", "team/exp1"], "name: 'team/exp1' cannot be a folder name"),
        "dot-dot name": ([QUICK, "--name", "../../x"], "cannot be a folder name"),
        "long name": ([QUICK, "--name", "x" * 300], "use at most 100"),
        "epochs true": ([QUICK, "--set", "training.epochs=true"], "training.epochs: expected a number, got true"),
        "NaN learning rate": ([QUICK, "--set", "training.base_lr=.nan"], "training.base_lr"),
        "inf multiplier": ([QUICK, "--set", "search_space.stage_multipliers=[1, .inf, 1, 1]"],
                           "stage_multipliers"),
        "num-cpus": ([QUICK, "--num-cpus", "-3"], "--num-cpus -3"),
        "cpu beyond the machine": ([QUICK, "--set", "resources.cpu=100000"], "resources.cpu"),
        "storage is a file": ([QUICK, "--storage", str(tmp / "a_file")], "is a file, not a folder"),
        "tracking scheme": ([QUICK, "--tracking-uri", "foo://bar"], "unknown scheme 'foo'"),
        "missing weights file": ([QUICK, "--set", "source={weights_file: /nonexistent/w.pt}"],
                                 "source.weights_file: /nonexistent/w.pt: no such file"),
        "pickled weights file": ([QUICK, "--set", f"source={{weights_file: {pickled}}}"], "source.weights_file"),
        "single class": ([QUICK, "--set", "dataset.classes=[5]"], "at least 2"),
        "1x1 images": ([QUICK, "--set", f"dataset={{path: {tmp / 'tiny'}}}"], "images are 1x1 pixels"),
        "FTall without a source": (
            [QUICK, "--set", "source={}", "--set",
             "search_space={conditions: {grid: [{name: base, transfer_depth: 0}, {name: FTall}]}}"],
            "no source weights"),
        "parse error outside the experiment folder": (
            [_experiment(tmp, quick.split("search_space:")[0] + f"search_space: {outside / 'space.yaml'}\n", "o.yaml")],
            "not valid YAML: line"),
        "unreachable --address": ([QUICK, "--address", f"127.0.0.1:{_closed_port()}"], "no Ray cluster answers"),
    }


@pytest.mark.parametrize("case", [
    "alias bomb", "alias bomb in the search-space file", "duplicate key", "slash in name", "dot-dot name",
    "long name", "epochs true", "NaN learning rate", "inf multiplier", "num-cpus", "cpu beyond the machine",
    "storage is a file", "tracking scheme", "missing weights file", "pickled weights file", "single class", "1x1 images",
    "FTall without a source", "parse error outside the experiment folder", "unreachable --address",
])
def test_bad_input_exits_2_before_ray_with_one_line(
    case: str, tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv, expected = _cases(tmp_path)[case]
    storage = tmp_path / "runs"
    extra = [] if "--storage" in argv else ["--storage", str(storage)]
    uri = [] if "--tracking-uri" in argv else ["--tracking-uri", sqlite_uri]
    # A closed --address guards the test: should a check let its input through, the run stops there.
    guard = [] if "--address" in argv or "resources.cpu" in " ".join(argv) else [
        "--address", f"127.0.0.1:{_closed_port()}"]
    scratch = [] if "o.yaml" in argv[0] else ["--set", SCRATCH]
    rc = cli.main(["run", argv[0], *scratch, *argv[1:], *extra, *uri, *guard])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expected in err, err
    assert "Traceback" not in err and "hunter2" not in err
    assert err.startswith("tunetl: error: ") and err.count("\n") == 1, err
    assert not list(storage.glob("*_*")), "a search folder was made"
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


def test_unwritable_storage_is_refused_before_ray(sqlite_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """/proc takes no new folders, not even from root."""
    rc = cli.main(["run", QUICK, "--storage", "/proc/1/tunetl_runs", "--tracking-uri", sqlite_uri,
                   "--set", SCRATCH, "--address", f"127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write there" in err, err


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`export --from-storage` of a folder whose state file is not JSON: one line, a traceback with --debug."""
    search = tmp_path / "runs" / "x_20260101-000000"
    search.mkdir(parents=True)
    (search / "tunetl_search.json").write_text("[1, 2]")
    argv = ["export", "--from-storage", str(tmp_path / "runs"), "--out", str(tmp_path / "o.parquet")]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc in (1, 2) and "Traceback" not in err and err.count("\n") == 1, err
    cli.main(["--debug", *argv])
    assert "Traceback" in capsys.readouterr().err


def test_resume_finds_the_search_of_its_own_name_not_one_that_shares_the_prefix(tmp_path: Path) -> None:
    """`conc` must not pick `conc_other_*` (newer, and with other inputs: a false "experiment changed")."""
    import json

    from tunetl.search import session as sess
    from tunetl.search.preflight import open_storage
    from tunetl.search.state import SearchState, write_state

    store = open_storage(tmp_path)
    for folder in ("conc_20260101-000000", "conc_other_20260101-000001", "conc_x"):
        write_state(store, folder, SearchState(folder, None, folder.rsplit("_", 1)[0]))
    assert sess.latest_run_dir(store, "conc") == "conc_20260101-000000"
    assert sess.unfinished_run_dir(store, "conc")[0] == "conc_20260101-000000"
    assert sess.latest_run_dir(store, "conc_other") == "conc_other_20260101-000001"
    assert json.loads((tmp_path / "conc_x" / "tunetl_search.json").read_text())["fingerprint"] == "conc_x"


def test_a_diverging_source_model_is_an_input_error_naming_the_learning_rate(tmp_path: Path) -> None:
    """lr 1e9: the source's loss explodes; before, its NaN weights failed later as "features contains NaN"."""
    from tunetl.config import ConfigError, load_experiment
    from tunetl.source import train_source

    exp = load_experiment(QUICK, ["source.epochs=3", "training.base_lr=1e9", "training.batch_size=256"])
    with pytest.raises(ConfigError, match=r"source model diverged .*training.base_lr=1e\+09"):
        train_source(exp, tmp_path, in_channels=1, log=False)
    assert not list(tmp_path.glob("sources/*.pt")), "a diverged source was cached"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_is_one_line_that_says_what_to_free(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Writing to /dev/full fails with ENOSPC as a full disk does (here inside pyarrow's parquet writer)."""
    search = tmp_path / "runs" / "x_20260101-000000"
    search.mkdir(parents=True)
    (search / "tunetl_search.json").write_text(
        '{"experiment": "x", "parent_run_id": "p", "finished": true, "fingerprint": "f", "config": {}}')
    rc = cli.main(["export", "--from-storage", str(tmp_path / "runs"), "--out", "/dev/full"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "No space left on device" in err and "free space" in err and "run the same command" in err
    assert cli.disk_full(RuntimeError("wrapped")) is False
