"""Property: any YAML text given as an experiment or a search-space file either loads into a valid config
or fails with `ConfigError` (the CLI's exit 2) whose message names the file or a key, within a time and
memory bound: no other exception, no alias expansion that eats the machine."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunetl.config import ConfigError, load_experiment
from tunetl.search.space import SpaceError, parse_space

KEYS = ["name", "dataset", "source", "backbone", "search_space", "training", "scheduler", "searcher",
        "resources", "seeds", "epochs", "base_lr", "builtin", "classes", "transfer_depth", "frozen_depth",
        "images_per_label", "conditions", "grid", "choice", "lr_scale", "stage_multipliers", "type", "cpu"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.sampled_from([0.0, 1e-3, 1e9, float("nan"), float("inf")]),
    st.sampled_from(["digits", "smallcnn", "grid", "asha", "all", "../../x", "a/b", "x" * 300, "*a"]),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5),
                                                               inner, max_size=4),
    max_leaves=20,
)
DOCS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8).map(
    lambda d: yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
)


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    """Anchors referring to earlier anchors, `width` times each, `depth` levels: width**depth values."""
    width, depth = draw(st.integers(2, 12)), draw(st.integers(1, 12))
    lines = ["l0: &l0 [lol]"]
    for i in range(1, depth + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    top = draw(st.sampled_from(["", "search_space: "]))
    return "\n".join(lines) + (f"\n{top}*l{depth}\n" if top else "\n")


TEXTS = st.one_of(DOCS, alias_bombs(), st.text(max_size=200),
                  DOCS.map(lambda d: d + "\n" + d))  # the same keys twice


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(text=TEXTS, as_space=st.booleans())
def test_any_yaml_loads_or_fails_naming_a_key_within_bounds(text: str, as_space: bool, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    if as_space:
        experiment = tmp_path / "exp.yaml"
        experiment.write_text(f"name: f\ndataset: {{builtin: digits}}\nsearch_space: {path.name}\n")
        target = experiment
    else:
        target = path
    tracemalloc.start()
    started = time.perf_counter()
    try:
        exp = load_experiment(target)
        parse_space(exp.search_space, origin=str(exp.search_space_file))
    except ConfigError as err:
        assert str(err).startswith((f"{target}: ", f"{path}: ")), str(err)
    except SpaceError as err:
        assert str(err).startswith(f"{path}"), str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - started < 20.0  # generous: the machine may be loaded
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB for {len(text)} bytes"
