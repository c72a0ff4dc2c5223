"""benchmarks/pareto.py: the utility / worst-case clone accuracy Pareto front of served models, per budget."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "pareto.py"
RESNETS = ROOT / "benchmarks" / "results" / "objectives" / "objectives-resnets"
RS = '{"beta": 0.7, "gamma": 0.4}'


@pytest.fixture(scope="module")
def pareto():
    spec = importlib.util.spec_from_file_location("pareto", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(victim, budget, seed, clone, utility, defense="none", params="{}", pool="fashion_mnist", attack="knockoff",
        answers="worst_case"):
    return {"dataset": "mnist_5k", "victim": victim, "defense": defense, "defense_params": params, "attack": attack,
            "answers": answers, "worst_of": "soft", "pool": pool, "budget": budget, "seed": seed,
            "clone_accuracy": clone, "defended_accuracy": utility}


def folder(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(rows))
    return path


def cells(table, recipe, defence):
    """The cells of the table's row for one served model."""
    [line] = [line for line in table.splitlines() if line.startswith(f"| {recipe} | {defence} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_front_drops_dominated_points_and_keeps_ties(pareto):
    points = {"best utility": (0.97, 0.50), "same utility, more clone": (0.97, 0.60), "low clone": (0.96, 0.20),
              "low clone twin": (0.96, 0.20), "dominated": (0.95, 0.30), "same clone, less utility": (0.90, 0.20),
              "in between": (0.965, 0.40)}
    assert pareto.pareto_front(points) == {"best utility", "low clone", "low clone twin", "in between"}
    assert pareto.pareto_front({"alone": (0.5, 0.5)}) == {"alone"}
    assert pareto.pareto_front({}) == set()


def test_student_seeds_pool_into_one_served_model(pareto, tmp_path):
    rows = [row("unrolled-seed0", 1500, 0, 0.20, 0.960), row("unrolled-seed0", 1500, 1, 0.30, 0.960),
            row("unrolled-seed1", 1500, 0, 0.40, 0.970),
            row("unrolled-seed1", 1500, 0, 0.99, 0.970, answers="soft"),  # not a worst case
            row("unrolled-seed1", 1500, 0, 0.99, 0.970, pool="in_distribution"),  # another thief
            row("unrolled-seed1", 1500, 0, 0.99, 0.970, attack="jbda")]
    points = pareto.load_points([folder(tmp_path, rows)], "fashion_mnist", "knockoff")
    [(served, point)] = points[1500].items()
    assert served == pareto.Served("unrolled", "none", "{}")
    assert point.clone == pytest.approx(0.30) and (point.clone_min, point.clone_max, point.seeds) == (0.20, 0.40, 3)
    # One utility per student seed, each weighing the same (over the 3 rows it would be 0.9633).
    assert point.utility == pytest.approx(0.965)


def test_a_run_in_two_folders_counts_once_as_its_strongest_thief(pareto, tmp_path, capsys):
    first = folder(tmp_path / "a", [row("teacher", 1500, 0, 0.50, 0.973), row("teacher", 1500, 1, 0.60, 0.973)])
    second = folder(tmp_path / "b", [row("teacher", 1500, 0, 0.90, 0.973),
                                     row("teacher", 1500, 0, 0.30, 0.973, defense="top1")])
    points = pareto.load_points([first, second], "fashion_mnist", "knockoff")[1500]
    teacher = points[pareto.REFERENCE]
    assert teacher.seeds == 2 and teacher.clone == pytest.approx(0.75)  # seed 0: b's 0.90 beats a's 0.50
    assert points[pareto.Served("teacher", "top1", "{}")].clone == pytest.approx(0.30)
    [warning] = capsys.readouterr().err.splitlines()
    assert "1 rows of teacher none are in more than one folder" in warning and "1 differed" in warning
    # The order of the folders does not matter.
    assert pareto.load_points([second, first], "fashion_mnist", "knockoff")[1500][
        pareto.REFERENCE].clone == pytest.approx(0.75)


def test_each_setting_of_a_defence_is_its_own_served_model(pareto, tmp_path):
    def rs(beta):
        return json.dumps({"beta": beta, "gamma": 0.4})

    rows = [row("teacher", 1500, 0, 0.60, 0.973),
            row("teacher", 1500, 0, 0.50, 0.973, "reverse_sigmoid", rs(0.3)),
            row("teacher", 1500, 0, 0.30, 0.963, "reverse_sigmoid", rs(2)),
            row("teacher", 1500, 0, 0.10, 0.950, "reverse_sigmoid", rs(10))]
    points = pareto.load_points([folder(tmp_path, rows)], "fashion_mnist", "knockoff")
    assert len(points[1500]) == 4
    table = pareto.table(points, max_utility_loss=1.0)
    lines = table.splitlines()
    # One row per setting, in numeric order of beta (as text, 10 would come before 2); no defence first.
    assert [line.split(" | ")[1] for line in lines[2:]] == ["none"] + [f"reverse_sigmoid {rs(b)}" for b in (0.3, 2, 10)]
    # served model, defence, utility, loss, worst case, front, within, runs
    assert cells(table, "teacher", "none") == ["teacher", "none", "97.3", "0.0", "60.0 (60.0-60.0)", "", "yes", "1"]
    assert cells(table, "teacher", f"reverse_sigmoid {rs(0.3)}")[4:7] == ["50.0 (50.0-50.0)", "yes", "yes"]
    assert cells(table, "teacher", f"reverse_sigmoid {rs(2)}")[3:7] == ["1.0", "30.0 (30.0-30.0)", "yes", "yes"]
    assert cells(table, "teacher", f"reverse_sigmoid {rs(10)}")[3:7] == ["2.3", "10.0 (10.0-10.0)", "yes", "no"]


def test_without_the_undefended_teacher_the_loss_is_blank(pareto, tmp_path):
    points = pareto.load_points([folder(tmp_path, [row("unrolled-seed0", 1500, 0, 0.2, 0.96)])], "fashion_mnist",
                                "knockoff")
    assert cells(pareto.table(points), "unrolled", "none") == ["unrolled", "none", "96.0", "", "20.0 (20.0-20.0)",
                                                                "yes", "", "1"]


def test_a_loss_of_exactly_the_limit_is_within(pareto, tmp_path):
    # 96.2 - 95.2 is 1.0000000000000142 in floating point: still a loss of 1.0, within 1.0.
    rows = [row("teacher", 1500, 0, 0.6, 0.962), row("teacher", 1500, 0, 0.4, 0.952, defense="top1")]
    table = pareto.table(pareto.load_points([folder(tmp_path, rows)], "fashion_mnist", "knockoff"), 1.0)
    assert cells(table, "teacher", "top1")[3] == "1.0" and cells(table, "teacher", "top1")[-2] == "yes"


def test_the_committed_resnets_round(pareto, tmp_path, capsys):
    points = pareto.load_points([RESNETS], "fashion_mnist", "knockoff")
    assert sorted(points) == [1500, 6000]
    lambda05_rs = pareto.Served("resnets-unrolled-lambda0.5", "reverse_sigmoid", RS)
    lambda05 = pareto.Served("resnets-unrolled-lambda0.5", "none", "{}")
    for at in points.values():
        front = pareto.pareto_front({s: (p.utility, p.clone) for s, p in at.items()})
        assert lambda05_rs in front and pareto.REFERENCE not in front
        # Same utility (reverse sigmoid keeps the top class) and a lower worst case: it dominates no defence.
        assert lambda05 not in front
        assert at[lambda05_rs].seeds == 6  # 3 student seeds x 2 clone seeds
    assert points[1500][lambda05_rs].utility == pytest.approx((0.966 + 0.965 + 0.963) / 3)

    pareto.main([str(RESNETS), "--pool", "fashion_mnist", "--attack", "knockoff", "--output", str(tmp_path)])
    printed = capsys.readouterr().out
    header, blank, *table = (tmp_path / "pareto.md").read_text().splitlines()
    assert "knockoff" in header and "fashion_mnist" in header and str(RESNETS) in header and blank == ""
    assert "\n".join(table) == printed.strip()
    # served model, defence, utility, loss, 1,500, front, 6,000, front, within, runs
    assert cells(printed, "resnets-unrolled-lambda0.5", f"reverse_sigmoid {RS}") == [
        "resnets-unrolled-lambda0.5", f"reverse_sigmoid {RS}", "96.5", "0.8", "15.8 (10.0-19.3)", "yes",
        "20.7 (13.9-24.0)", "yes", "yes", "12"]
    assert cells(printed, "teacher", "none") == ["teacher", "none", "97.3", "0.0", "56.4 (55.4-57.3)", "",
                                                  "80.3 (78.7-82.0)", "", "yes", "4"]
    assert cells(printed, "resnets-misinformation", "none")[-2] == "no"  # 1.1 points below the teacher
    png = (tmp_path / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere"), "--pool", "fashion_mnist",
                             "--attack", "knockoff"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"pareto.py: error: {tmp_path / 'nowhere'}: no results.json"]


def test_no_rows_for_that_thief_lists_what_there_is(pareto, tmp_path, capsys):
    path = folder(tmp_path, [row("teacher", 1500, 0, 0.5, 0.97), row("teacher", 1500, 0, 0.5, 0.97, pool="mnist_5k"),
                             row("teacher", 1500, 0, 0.5, 0.97, attack="jbda", pool="synthetic")])
    with pytest.raises(SystemExit) as raised:
        pareto.main([str(path), "--pool", "fashion_mnist", "--attack", "dfme"])
    [error] = capsys.readouterr().err.splitlines()
    assert raised.value.code == 2
    assert "pools: fashion_mnist, mnist_5k, synthetic; attacks: jbda, knockoff" in error


@pytest.mark.parametrize("bad", ["-1", "nan", "one"])
def test_a_bad_max_utility_loss_is_refused(pareto, capsys, bad):
    with pytest.raises(SystemExit) as raised:
        pareto.main([str(RESNETS), "--pool", "fashion_mnist", "--attack", "knockoff", f"--max-utility-loss={bad}"])
    assert raised.value.code == 2 and capsys.readouterr().err.splitlines() == [
        f"pareto.py: error: --max-utility-loss: expected a number of points >= 0, got '{bad}'"]


def test_a_setting_that_wrecks_utility_is_listed_not_drawn(pareto, tmp_path):
    rows = [row("teacher", 1500, 0, 0.50, 0.973),
            row("teacher", 1500, 0, 0.45, 0.0, "reverse_sigmoid", '{"beta": 1.5}'),
            row("teacher", 1500, 0, 0.23, 0.904, "gaussian_noise", '{"sigma": 0.3}')]
    points = pareto.load_points([folder(tmp_path, rows)], "fashion_mnist", "knockoff")
    # Floor 96.3%: 0% utility is listed; 90.4% (within 10 points of the floor) is still drawn.
    assert pareto.undrawn_models(points, 96.3) == [pareto.Served("teacher", "reverse_sigmoid", '{"beta": 1.5}')]
    assert pareto.undrawn_models(points, None) == []
    assert pareto.plot(points, tmp_path / "p.png", "t", floor=96.3).read_bytes().startswith(b"\x89PNG")
