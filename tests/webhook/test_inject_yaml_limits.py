"""``thaw inject`` on hostile YAML: alias bombs and deep nesting end in one line, no output."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from thaw.cli import main
from webhook import safe_yaml


def laughs(depth: int) -> str:
    """The classic "billion laughs": nine aliases per level (237 bytes at depth 6)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int, flow: bool = True) -> str:
    if flow:
        return "[" * depth + "]" * depth + "\n"
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "leaf\n"


def run(tmp_path, text: str, capsys) -> tuple[int, str, str]:
    src = tmp_path / "in.yaml"
    src.write_text(text)
    rc = main(["inject", "-f", str(src)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (laughs(6), "aliases expand to more than"),
        (laughs(10), "aliases expand to more than"),
        (nested(10_000), "nesting deeper than"),
        (nested(2_000, flow=False), "nesting deeper than"),
        ("a: &a [1, *a]\n", "refers to itself"),
        ("a: &a {b: *a}\n", "refers to itself"),
    ],
)
def test_hostile_yaml_is_one_line_and_writes_nothing(tmp_path, capsys, text, needle):
    rc, out, err = run(tmp_path, text, capsys)
    assert rc != 0 and out == ""
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_bomb_after_good_documents_loses_nothing(tmp_path, capsys):
    good = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    rc, out, err = run(tmp_path, good + "---\n" + laughs(8), capsys)
    assert rc == 1 and out == "" and "aliases expand" in err


def test_stdin_bomb_ends_promptly_with_an_error():
    proc = subprocess.run(
        [sys.executable, "-m", "thaw.cli", "inject", "-f", "-"],
        input=laughs(10),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().startswith("thaw: - is not valid YAML")


def test_plain_yaml_errors_are_one_line_too(tmp_path, capsys):
    rc, out, err = run(tmp_path, "a: [unclosed\n", capsys)
    assert rc == 1 and out == "" and err.count("\n") == 1 and "not valid YAML" in err


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path, capsys):
    text = (
        "base: &base {image: x, args: [a, b]}\n"
        "one: {<<: *base, name: one}\n"
        "two: {<<: *base, name: two}\n"
        "list: &l [1, 2]\n"
        "again: *l\n"
    )
    rc, out, err = run(tmp_path, text, capsys)
    assert rc == 0, err
    doc = yaml.safe_load(out)
    assert doc["one"] == {"image": "x", "args": ["a", "b"], "name": "one"}
    assert doc["again"] == [1, 2] and "&" not in out and "*" not in out


def test_nesting_up_to_the_limit_round_trips(tmp_path, capsys):
    depth = safe_yaml.MAX_DEPTH
    rc, out, _ = run(tmp_path, nested(depth - 1, flow=False), capsys)
    assert rc == 0
    assert yaml.safe_load(out) == yaml.safe_load(nested(depth - 1, flow=False))


def test_budget_counts_expanded_nodes_across_documents():
    """Each alias adds its full expansion; the budget is per stream, not per document."""
    chunk = "x: &x [" + ",".join(["1"] * 999) + "]\n" + "y: [" + ",".join(["*x"] * 60) + "]\n"
    assert len(list(safe_yaml.load_all(chunk))) == 1
    with pytest.raises(safe_yaml.LimitError):
        list(safe_yaml.load_all(chunk + "---\n" + chunk))
