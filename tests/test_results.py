"""The published results come from the committed run files, and nothing else.

`keras-margin report docs/results/runs` must regenerate docs/results/report.md exactly and
report.csv to 1e-9, and the README's Results tables must be the report's own (its generated
blocks regenerated, every other number of its Results tables found in the report). Every
number that states a measurement in the Results and Performance sections must be shown by a
committed file its paragraph or bullet links to (or the report). Reads JSON and CSV only: no
training, no TensorFlow.
"""

import csv
import math
import os
import re

import pytest

from keras_margin.experiments import report

ROOT = os.path.join(os.path.dirname(__file__), "..")
RESULTS = os.path.join(ROOT, "docs", "results")
RUNS = os.path.join(RESULTS, "runs")
README = os.path.join(ROOT, "README.md")


def _cells_equal(a: str, b: str, tol: float = 1e-9) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return a == b
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def compare_csv(expected: str, actual: str) -> list[str]:
    """The differences between two report CSV files (numbers to 1e-9), as readable lines."""
    with open(expected, newline="") as f:
        ours = list(csv.reader(f))
    with open(actual, newline="") as f:
        theirs = list(csv.reader(f))
    if ours[:1] != theirs[:1]:
        return [f"header differs: {ours[:1]} vs {theirs[:1]}"]
    if len(ours) != len(theirs):
        return [f"{len(ours) - 1} rows committed, {len(theirs) - 1} regenerated"]
    header = ours[0]
    return [f"row {i} ({a[1]}), {header[j]}: {a[j]!r} committed, {b[j]!r} regenerated"
            for i, (a, b) in enumerate(zip(ours[1:], theirs[1:]), 1)
            for j in range(len(header)) if not _cells_equal(a[j], b[j])]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    assert os.path.isdir(RUNS), "docs/results/runs is missing: the raw results are not here"
    prefix = str(tmp_path_factory.mktemp("report") / "report")
    report.write(RUNS, prefix, shown_as=("docs/results/runs", "docs/results/report"))
    return prefix


def test_the_report_is_regenerated_exactly_from_the_run_files(regenerated):
    with open(os.path.join(RESULTS, "report.md")) as f, open(regenerated + ".md") as g:
        assert f.read() == g.read(), "docs/results/report.md differs from the regenerated one"
    assert compare_csv(os.path.join(RESULTS, "report.csv"), regenerated + ".csv") == []


def test_a_hand_edited_number_fails_the_comparison(regenerated, tmp_path):
    with open(regenerated + ".csv", newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("rho_adv")
    rows[1][column] = repr(float(rows[1][column]) + 1e-6)
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert len(compare_csv(regenerated + ".csv", str(edited))) == 1


def _results_section(text: str) -> str:
    start = text.index("\n## Results")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_results_tables_are_the_reports():
    with open(README) as f:
        text = f.read()
    blocks = report.readme_blocks(report.summarize(report.collect(RUNS)))
    assert report.replace_blocks(text, blocks) == text, \
        "a generated block of the README differs: run keras-margin report docs/results/runs " \
        "--out docs/results/report --readme README.md"
    for name in blocks:
        assert report.BLOCK.format(name=name) in text, f"the README lacks the {name} block"
    with open(os.path.join(RESULTS, "report.md")) as f:
        published = f.read()
    numbers = set(re.findall(r"\d+\.\d+", published))
    for unit, files in _units(_results_section(text)):  # tables and prose alike
        unit = re.sub(r"`[^`]*`", "", unit)  # commands are not results
        linked = _file_values(files)
        for line in unit.splitlines():
            missing = [n for n in re.findall(r"\d+\.\d+", line)
                       if n not in numbers and not _shown(n, linked)]
            assert not missing, f"README numbers {missing} are in no report table: {line}"


# A number states a measurement when it has decimals or a unit; a target an issue set is not
# one. Architecture names (LeNet-5, 784-256-256) and commit hashes are not numbers here.
_NUMBER = re.compile(r"(?<![A-Za-z]-)(?:(?<=\bx)|(?<![\w.,/]))\d+(?:,\d{3})*(?:\.\d+)?"
                     r"(?=x\b|[^\w/.]|\.\D|\.$|$)")
_UNIT = re.compile(r"\s?(?:x\b|%|ms\b|s\b|MB\b|MiB\b|GiB\b|GFLOP|minutes?\b|seconds?\b|"
                   r"points\b)")
_LINK = re.compile(r"\]\(((?:docs|tests|benchmarks|examples)/[^)#]+)\)")


def _measurements(text: str) -> list[str]:
    text = re.sub(r"`[^`]*`", "", text)
    found = []
    for m in _NUMBER.finditer(text):
        near = text[max(0, m.start() - 30):m.end() + 20]
        if "target" in near:  # the goal, not the measurement
            continue
        if "." in m.group() or _UNIT.match(text, m.end()) or text[m.start() - 1:m.start()] == "x":
            found.append(m.group())
    return found


def _units(section: str):
    """(text, linked files) per paragraph, bullet or table of a README section; a bullet or
    table also has the files its paragraph above linked to."""
    header: list[str] = []
    for paragraph in re.split(r"\n\s*\n", section):
        parts = re.split(r"\n(?=[*-] )", paragraph)
        if parts[0].lstrip().startswith(("* ", "- ", "|", "<!--")):
            head, rest = "", parts
        else:
            head, rest = parts[0], parts[1:]
        if head:
            own = _LINK.findall(head)
            header = own or header
            yield head, own or header
        for part in rest:
            yield part, _LINK.findall(part) + header


def _file_values(files: list[str]) -> set[float]:
    """Every number in the linked files (a benchmark's .md with its .json beside it)."""
    values: set[float] = set()
    for name in files:
        path = os.path.join(ROOT, name)
        stem, ext = os.path.splitext(path)
        for p in [path] + ([stem + ".json"] if ext == ".md" else []):
            if not os.path.isfile(p) or not p.endswith((".md", ".json", ".csv", ".py")):
                continue
            with open(p) as f:
                content = f.read()
            values.update(float(n.replace(",", "")) for n in
                          re.findall(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?", content))
    return values


def _shown(number: str, values: set[float]) -> bool:
    """The file shows the number: one of its values (or that x 100, a percentage) rounds to it."""
    digits = len(number.split(".")[1]) if "." in number else 0
    target = float(number.replace(",", ""))
    return any(round(v, digits) == target or round(100 * v, digits) == target for v in values)


def _section(text: str, name: str) -> str:
    start = text.index(f"\n## {name}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_performance_number_is_in_a_file_it_links_to():
    """Issue 29: each measured number of the Performance section points at the committed
    file that shows it (a benchmark's .md or .json, a test), by a link in its paragraph or
    bullet, or in the paragraph its table or bullet belongs to."""
    with open(README) as f:
        text = f.read()
    for unit, files in _units(_section(text, "Performance")):
        numbers = _measurements(unit)
        if not numbers:
            continue
        assert files, f"a Performance paragraph states numbers but links no file: {unit[:120]}"
        for name in files:
            assert os.path.exists(os.path.join(ROOT, name)), f"{name} is not in the repository"
        values = _file_values(files)
        missing = [n for n in numbers if not _shown(n, values)]
        assert not missing, f"numbers {missing} are in none of {files}: {unit[:160]}"


def test_every_reported_run_has_its_raw_files():
    for run in report.collect(RUNS):
        for name in ("config.json", "environment.json", "history.csv", "metrics.json",
                     "points.npz"):
            assert os.path.exists(os.path.join(run["path"], name)), (run["path"], name)
    for root, _, files in os.walk(RUNS):
        assert not [f for f in files if f.endswith(".keras") or f == "state.json"], root


def test_every_fgsm_error_with_points_recomputes_from_them():
    # Runs since issue 29 keep each test point's FGSM outcome; the older published ones, whose
    # models are not kept, cannot get them (the report's numbers stand as they were measured).
    import numpy as np

    for run in report.collect(RUNS):
        points = np.load(os.path.join(run["path"], "points.npz"))
        if "fgsm_wrong" in points.files:
            assert points["fgsm_wrong"].mean() == run["fgsm_error"], run["path"]
            assert len(points["fgsm_wrong"]) == run["n"], run["path"]


def test_every_published_figure_regenerates_from_the_run_files(tmp_path):
    # What each figure shows (its lines' points, images, labels: `figures.figure_data`) must be
    # what the committed runs give now; a stale figure (a run published after it was drawn)
    # fails. The PNGs' pixels depend on the matplotlib version; the data does not.
    import json

    pytest.importorskip("matplotlib")
    from keras_margin.experiments import figures

    figures_dir = os.path.join(RESULTS, "figures")
    written = figures.write(RUNS, str(tmp_path))
    published = sorted(f for f in os.listdir(figures_dir) if f.endswith(".png"))
    assert sorted(os.path.basename(p) for p in written) == published
    for name in published:
        with open(os.path.join(figures_dir, name + ".json")) as f, \
                open(os.path.join(tmp_path, name + ".json")) as g:
            assert json.load(f) == json.load(g), f"docs/results/figures/{name} is stale"
