"""evaluate_review.py on a phantom batch of verdicts: kappa as scikit-learn computes it,
confusion matrices with the reviewer on the rows, seeded bootstrap intervals, kappa reported
n/a with its reason when undefined, the Markdown and PNG report, the latest of a repeated
verdict, and bad input refused with a sentence and exit code 2."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

import evaluate_review
from evaluate_review import STATISTICS, agreement, bootstrap_confusions, case_confusions, percentile_interval
from PancreasAILib.review import IPMN_CLASSES, REVIEW_COLUMNS

NORMAL, LOW, HIGH = IPMN_CLASSES
SCRIPT = Path(evaluate_review.__file__)


def ipmn(reviewer, case, model_class, reviewer_class=None, time="2026-11-30T10:00:00Z"):
    """One IPMN row; no reviewer_class means 'uncertain' without a class."""
    verdict = "uncertain" if reviewer_class is None else "agree" if reviewer_class == model_class else "disagree"
    return {"reviewer": reviewer, "case": case, "task": "ipmn", "time": time, "model": "ipmn-vit",
            "model_sha256": "ab" * 32, "model_class": model_class, "verdict": verdict,
            "reviewer_class": reviewer_class or ""}


def segmentation(reviewer, case, verdict, time="2026-11-30T10:00:00Z"):
    return {"reviewer": reviewer, "case": case, "task": "segmentation", "time": time, "model": "monet",
            "verdict": verdict, "edited_file": f"{case}_pancreas_reviewed.seg.nrrd" if verdict == "edited" else ""}


def write_review(folder: Path, rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "review.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=REVIEW_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return folder / "review.csv"


MODEL_CLASSES = {"c01": NORMAL, "c02": NORMAL, "c03": LOW, "c04": LOW, "c05": HIGH, "c06": HIGH,
                 "c07": NORMAL, "c08": LOW}
#: What alice and bob finally say (after the second file): alice differs from the model on c07 only.
ALICE = {"c01": NORMAL, "c02": NORMAL, "c03": LOW, "c04": LOW, "c05": HIGH, "c06": HIGH, "c07": LOW, "c08": LOW}
BOB = {"c01": NORMAL, "c02": LOW, "c03": LOW, "c04": LOW, "c05": HIGH}


@pytest.fixture
def phantom_batch(tmp_path):
    """Two results folders. first/: alice rates c01-c08 (c04 as high-risk, c07 as low-risk),
    bob rates c01-c05 and is uncertain on c06; segmentation verdicts of both. second/: alice
    rates c04 again later (low-risk: replaces) and c07 again earlier (normal: ignored)."""
    first = [ipmn("alice", case, MODEL_CLASSES[case], HIGH if case == "c04" else cls) for case, cls in ALICE.items()]
    first += [ipmn("bob", case, MODEL_CLASSES[case], cls) for case, cls in BOB.items()]
    first += [ipmn("bob", "c06", HIGH)]
    first += [segmentation("alice", "c01", "accept"), segmentation("alice", "c02", "accept"),
              segmentation("alice", "c03", "edited"), segmentation("alice", "c04", "reject"),
              segmentation("bob", "c01", "accept"), segmentation("bob", "c02", "edited")]
    second = [ipmn("alice", "c04", LOW, LOW, time="2026-11-30T11:00:00Z"),
              ipmn("alice", "c07", NORMAL, NORMAL, time="2026-11-30T09:00:00Z")]
    write_review(tmp_path / "first", first)
    write_review(tmp_path / "second", second)
    return tmp_path


def labels(classes: dict) -> np.ndarray:
    return np.array([IPMN_CLASSES.index(cls) for cls in classes.values()])


def report_of(folder: Path, capsys, *arguments) -> str:
    assert evaluate_review.main([str(folder / "first"), str(folder / "second"), "--output", str(folder / "report"),
                                 "--bootstrap", "500", *arguments]) == 0
    return capsys.readouterr().out


# --- the figures --------------------------------------------------------------------------------

@pytest.mark.parametrize("weighting", [None, "linear"])
@pytest.mark.parametrize("seed", range(5))
def test_kappa_is_cohens_kappa_as_scikit_learn_computes_it(seed, weighting):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 3, 40)
    second = np.where(rng.random(40) < 0.6, first, rng.integers(0, 3, 40))
    matrices = case_confusions([(f"c{i}", IPMN_CLASSES[a], IPMN_CLASSES[b])
                                for i, (a, b) in enumerate(zip(first, second))])
    result = agreement("first", "second", matrices, resamples=50, seed=0)
    name = "linear kappa" if weighting else "kappa"
    assert result.estimates[name].value == pytest.approx(cohen_kappa_score(first, second, weights=weighting))
    assert result.estimates["accuracy"].value == pytest.approx(np.mean(first == second))


def test_confusion_matrix_rows_are_the_first_raters_classes():
    matrices = case_confusions([("c1", NORMAL, HIGH), ("c2", NORMAL, HIGH), ("c3", LOW, LOW)])
    confusion = matrices.sum(axis=0)
    assert confusion[0, 2] == 2 and confusion[2, 0] == 0
    assert confusion[1, 1] == 1 and confusion.sum() == 3


def test_kappa_is_undefined_with_a_reason_when_both_give_one_class_only():
    matrices = case_confusions([(f"c{i}", NORMAL, NORMAL) for i in range(6)])
    result = agreement("alice", "model", matrices, resamples=100, seed=0)
    for name in ("kappa", "linear kappa"):
        assert result.estimates[name].value is None
        assert result.estimates[name].reason == "every case normal by both"
    assert result.estimates["accuracy"].value == 1.0


def test_bootstrap_interval_contains_the_estimate():
    matrices = case_confusions([(case, ALICE[case], MODEL_CLASSES[case]) for case in ALICE])
    result = agreement("alice", "model", matrices, resamples=1000, seed=3)
    for estimate in result.estimates.values():
        low, high = estimate.interval
        assert low <= estimate.value <= high


def test_bootstrap_is_reproducible_with_a_seed_and_varies_with_another():
    matrices = case_confusions([(f"c{i}", IPMN_CLASSES[i % 3], IPMN_CLASSES[(i // 2) % 3]) for i in range(30)])
    kappa = STATISTICS["kappa"]
    same = [percentile_interval(kappa(bootstrap_confusions(matrices, 300, seed=11))) for _ in range(2)]
    other = percentile_interval(kappa(bootstrap_confusions(matrices, 300, seed=12)))
    assert same[0] == same[1]
    assert other != same[0]


def test_pooled_bootstrap_draws_whole_cases_with_all_their_ratings():
    # Case c0 was rated by two reviewers, c1 by one: every resample holds 2 ratings per c0 drawn.
    matrices = case_confusions([("c0", NORMAL, NORMAL), ("c0", LOW, NORMAL), ("c1", HIGH, HIGH)])
    resampled = bootstrap_confusions(matrices, 200, seed=0)
    c0_drawn = resampled[:, 1, 0]
    np.testing.assert_array_equal(resampled[:, 0, 0], c0_drawn)
    np.testing.assert_array_equal(resampled.sum(axis=(1, 2)), 2 * c0_drawn + resampled[:, 2, 2])


# --- the report ---------------------------------------------------------------------------------

def table_line(report: str, title: str) -> list[str]:
    """The cells of the agreement table's line for `title` ("alice vs model")."""
    line = next(line for line in report.splitlines() if line.startswith(f"| {title} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_phantom_batch_report_gives_the_figures_of_each_comparison(phantom_batch, capsys):
    report = report_of(phantom_batch, capsys)
    bob_cases = list(BOB)
    expected = {
        "alice vs model": (labels(ALICE), labels(MODEL_CLASSES)),
        "bob vs model": (labels(BOB), labels({case: MODEL_CLASSES[case] for case in bob_cases})),
        "alice vs bob": (labels({case: ALICE[case] for case in bob_cases}), labels(BOB)),
    }
    for title, (rows, columns) in expected.items():
        _, cases, accuracy, kappa, linear_kappa = table_line(report, title)
        assert int(cases) == len(rows)
        assert accuracy.startswith(f"{np.mean(rows == columns):.2f} [")
        assert kappa.startswith(f"{cohen_kappa_score(rows, columns):.2f} [")
        assert linear_kappa.startswith(f"{cohen_kappa_score(rows, columns, weights='linear'):.2f} [")
    _, count, pooled_accuracy, _, _ = table_line(report, "all reviewers vs model")
    assert count == "8 (13 ratings)" and pooled_accuracy.startswith("0.85 [")  # 11 of 13 ratings agree
    assert "8 IPMN case(s) rated by 2 reviewer(s) (alice, bob); 4 segmentation case(s) reviewed." in report


def test_confusion_table_has_the_reviewer_on_the_rows(phantom_batch, capsys):
    report_of(phantom_batch, capsys)
    report = (phantom_batch / "report" / "review_agreement.md").read_text(encoding="utf-8")
    alice_table = report.split("alice vs model (rows: alice; columns: model)")[1]
    # alice's low-risk cases c03, c04, c07, c08 are normal once (c07) and low-risk three times for the model.
    assert alice_table.split("\n\n")[1].splitlines()[3] == "| **low-risk IPMN** | 1 | 3 | 0 |"


def test_uncertain_without_a_class_is_counted_and_left_out(phantom_batch, capsys):
    report = report_of(phantom_batch, capsys)
    assert "- bob: 1 IPMN verdict(s) 'uncertain' without the reviewer's class (c06): not used." in report
    assert "| bob vs model | 5 |" in report


def test_the_later_of_two_verdicts_wins_and_the_report_says_so(phantom_batch, capsys):
    report = report_of(phantom_batch, capsys)
    replaced = [line for line in report.splitlines() if "recorded twice" in line]
    assert len(replaced) == 2
    assert all(line.endswith("the later one is used.") for line in replaced)
    assert any("alice, case c04, ipmn" in line and "11:00:00Z" in line for line in replaced)
    # c04 low-risk (the later verdict, agreeing) and c07 low-risk (the earlier file's, later time) give 7/8.
    assert "| alice vs model | 8 | 0.88 [" in report


def test_segmentation_verdicts_are_counted_per_reviewer_with_shares(phantom_batch, capsys):
    report = report_of(phantom_batch, capsys)
    assert "| alice | 4 | 2 (50 %) | 1 (25 %) | 1 (25 %) |" in report
    assert "| bob | 2 | 1 (50 %) | 1 (50 %) | 0 (0 %) |" in report
    assert "| all reviewers | 6 | 3 (50 %) | 2 (33 %) | 1 (17 %) |" in report


def test_markdown_is_printed_and_written_and_the_png_opens(phantom_batch, capsys):
    from PIL import Image

    printed = report_of(phantom_batch, capsys)
    assert printed.strip() == (phantom_batch / "report" / "review_agreement.md").read_text(encoding="utf-8").strip()
    with Image.open(phantom_batch / "report" / "review_agreement.png") as picture:
        picture.load()
        assert picture.format == "PNG" and picture.width > 500 and picture.height > 300


def test_undefined_kappa_reads_n_a_in_the_report_never_nan(tmp_path, capsys):
    folder = write_review(tmp_path / "results", [ipmn("alice", f"c{i}", NORMAL, NORMAL) for i in range(4)]).parent
    assert evaluate_review.main([str(folder), "--output", str(tmp_path / "report"), "--bootstrap", "100"]) == 0
    report = capsys.readouterr().out
    undefined = "n/a (every case normal by both)"
    assert f"| alice vs model | 4 | 1.00 [1.00, 1.00] | {undefined} | {undefined} |" in report
    assert "nan" not in report.lower()
    assert (tmp_path / "report" / "review_agreement.png").is_file()


def test_bootstrap_seed_makes_the_report_reproducible(phantom_batch, capsys):
    assert report_of(phantom_batch, capsys, "--seed", "5") == report_of(phantom_batch, capsys, "--seed", "5")


def test_command_line_works_from_another_directory_with_relative_paths(phantom_batch):
    result = subprocess.run([sys.executable, str(SCRIPT), "first", "second/review.csv", "--output", "out",
                             "--bootstrap", "200"], cwd=phantom_batch, capture_output=True, text=True,
                            encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| alice vs model | 8 |" in result.stdout
    assert (phantom_batch / "out" / "review_agreement.md").is_file()
    assert (phantom_batch / "out" / "review_agreement.png").is_file()


# --- bad input ----------------------------------------------------------------------------------

def _wrong_columns(folder: Path) -> None:
    folder.mkdir()
    (folder / "review.csv").write_text("reviewer,case,verdict\nalice,c01,agree\n", encoding="utf-8")


BAD_INPUTS = {
    "missing file": (lambda folder: None, "does not exist"),
    "folder without review.csv": (lambda folder: folder.mkdir(), "has no review.csv"),
    "wrong columns": (_wrong_columns, "does not have review.csv's columns (reviewer, case, task, time,"),
    "unknown class": (lambda folder: write_review(folder, [{**ipmn("alice", "c01", NORMAL, NORMAL),
                                                            "reviewer_class": "IPMN"}]),
                      "unknown reviewer class 'IPMN'"),
    "unknown model class": (lambda folder: write_review(folder, [{**ipmn("alice", "c01", NORMAL, NORMAL),
                                                                  "model_class": "benign"}]),
                            "unknown model class 'benign'"),
    "no IPMN rows": (lambda folder: write_review(folder, [segmentation("alice", "c01", "accept")]),
                     "holds no IPMN verdicts"),
    "only uncertain": (lambda folder: write_review(folder, [ipmn("alice", "c01", NORMAL)]),
                       "nothing to compare the model with"),
}


@pytest.mark.parametrize("problem", BAD_INPUTS)
def test_bad_input_is_refused_with_a_sentence_and_exit_code_2(problem, tmp_path):
    make, message = BAD_INPUTS[problem]
    make(tmp_path / "results")
    result = subprocess.run([sys.executable, str(SCRIPT), "results", "--output", "out"], cwd=tmp_path,
                            capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "review_agreement.md").exists()


def test_a_bad_row_is_named_by_file_reviewer_and_case(tmp_path, capsys):
    review = write_review(tmp_path / "results", [ipmn("alice", "c01", NORMAL, NORMAL),
                                                 {**ipmn("alice", "c02", NORMAL, LOW), "verdict": "agree"}])
    assert evaluate_review.main([str(review), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{review} (alice, case c02, ipmn): the verdict 'agree' contradicts the classes" in error


def test_a_csv_file_not_named_review_csv_is_refused(tmp_path, capsys):
    review = write_review(tmp_path / "results", [ipmn("alice", "c01", NORMAL, NORMAL)])
    renamed = review.rename(tmp_path / "results" / "alice.csv")
    assert evaluate_review.main([str(renamed), "--output", str(tmp_path / "out")]) == 2
    assert "alice.csv is not a review.csv" in capsys.readouterr().err
