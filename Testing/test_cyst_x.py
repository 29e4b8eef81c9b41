"""The Cyst-X benchmark as a data source: its folder read as published (spreadsheet, crops,
published folds), and the cross-validation and training run on a Cyst-X-shaped folder made of
MR phantoms (T1 and T2 crops on different grids, centres in the file names)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import crossvalidate_ipmn
import cyst_x
import train_ipmn
from ipmn_data import StackCache, prepare_cases, preprocessing_steps
from PancreasAIPhantoms.mr import make_mr_phantom
from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume

PHANTOM_SHAPE, PHANTOM_SPACING = (12, 64, 64), (3.5, 3.5, 5.0)
TINY_RUN = ["--architecture", "vit_tiny_patch16_224", "--architecture-params",
            json.dumps({"depth": 1, "embed_dim": 48, "num_heads": 3}), "--batch-size", "2", "--eval-every", "2",
            "--device", "cpu", "--steps", "2", "--preprocessing", "standardisation"]
#: File-name prefixes of three centres (one of them by its short upper-case marker).
CENTRE_PREFIXES = ("nyu", "AHN", "MCF")
PATIENTS = 18  # patient s: class s % 3, centre (s // 3) % 3, published fold (s // 6) % 3 + 1


def crop(array: np.ndarray, ijk_to_ras: np.ndarray, i0: int, j0: int, step: int, size_i: int, size_j: int):
    """A Volume of array[:, j0:j0 + step * size_j:step, i0:i0 + step * size_i:step] in place."""
    scale = np.diag([step, step, 1, 1]).astype(float)
    scale[:3, 3] = (i0, j0, 0)
    return Volume(np.ascontiguousarray(array[:, j0:j0 + step * size_j:step, i0:i0 + step * size_i:step]),
                  ijk_to_ras @ scale)


def write_study(folder: Path, name: str, seed: int, label: int) -> None:
    """T2 crop at the phantom's resolution, T1 crop larger and at half of it: two grids."""
    phantom = make_mr_phantom(seed, label, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    t2 = crop(phantom.t2, phantom.ijk_to_ras, 8, 6, 1, 48, 52)
    t1 = crop(phantom.t1, phantom.ijk_to_ras, 2, 2, 2, 30, 30)
    write_volume(t1, folder / "IPMN_Classification" / "t1" / f"{name}_t1.nii.gz")
    write_volume(t2, folder / "IPMN_Classification" / "t2" / f"{name}_t2.nii.gz")


def study_name(seed: int) -> str:
    return f"{CENTRE_PREFIXES[(seed // 3) % 3]}_{seed:04d}"


def write_spreadsheet(path: Path, rows: list) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["T1", "T2", "age", "sex", "cyst size", "notes", "label"])
    for row in rows:
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)


def label_row(t1: str, t2: str, label) -> list:
    return [t1, t2, 60, "F", 12.5, "", label]


def write_published_split(folder: Path) -> None:
    """The layout we assume: one row per T2 scan, columns filename, label, fold."""
    path = folder / "data splits" / "classification" / "3-class" / "t2.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["filename", "label", "fold"])
        for seed in range(PATIENTS):
            writer.writerow([f"{study_name(seed)}_t2.nii.gz", seed % 3, (seed // 6) % 3 + 1])


def published_fold(seed: int) -> int:
    return (seed // 6) % 3 + 1


def write_published_two_class_split(folder: Path) -> None:
    """The 2-class split as we assume it: one row per T1/T2 pair, columns t1, t2, label, fold;
    other folds than the 3-class split's, each with two high-risk studies."""
    path = folder / "data splits" / "classification" / "2-class" / "two_inputs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["t1", "t2", "label", "fold"])
        for seed in range(PATIENTS):
            writer.writerow([f"{study_name(seed)}_t1.nii.gz", f"{study_name(seed)}_t2.nii.gz", int(seed % 3 == 2),
                             published_two_class_fold(seed)])


def published_two_class_fold(seed: int) -> int:
    return (seed + seed // 3) % 3 + 1


@pytest.fixture(scope="module")
def cyst_x_folder(tmp_path_factory) -> Path:
    """18 labelled studies of 3 centres, one unlabelled row, one row without T1, the published
    3-class and 2-class splits."""
    return write_cyst_x_folder(tmp_path_factory.mktemp("cyst-x"))


def write_cyst_x_folder(folder: Path) -> Path:
    """The Cyst-X layout in `folder` (see cyst_x_folder); returns it."""
    rows = []
    for seed in range(PATIENTS):
        write_study(folder, study_name(seed), seed, seed % 3)
        rows.append(label_row(f"{study_name(seed)}_t1.nii.gz", f"{study_name(seed)}_t2.nii.gz", seed % 3))
    write_study(folder, "nyu_0100", 100, 0)
    rows.insert(3, label_row("nyu_0100_t1.nii.gz", "nyu_0100_t2.nii.gz", None))
    rows.append(label_row(None, "nyu_0101_t2.nii.gz", 1))
    write_spreadsheet(folder / "IPMN_Classification" / "IPMN_labels_total.xlsx", rows)
    write_published_split(folder)
    write_published_two_class_split(folder)
    return folder


def small_folder(tmp_path: Path, rows: list) -> Path:
    write_study(tmp_path, "nyu_0001", 1, 1)
    write_spreadsheet(tmp_path / "IPMN_Classification" / "IPMN_labels_total.xlsx", rows)
    return tmp_path


# --- names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, centre", [
    ("nyu_0003_t2.nii.gz", "NYU"), ("CAD_12_t2.nii.gz", "MCF"), ("MCF-7_T2.nii.gz", "MCF"),
    ("northwestern_5_t2.nii.gz", "Northwestern"), ("NU_5_t2.nii.gz", "NU"), ("AHN_2_t2.nii.gz", "AHN"),
    ("ahn_2_t2.nii.gz", "AHN"), ("mca_9_t2.nii.gz", "MCA"), ("IU_4_t2.nii.gz", "IU"), ("EMC_8_t2.nii.gz", "EMC")])
def test_centre_is_read_from_its_marker_in_the_file_name(name, centre):
    assert cyst_x.centre_of(name) == centre


def test_short_upper_case_markers_decide_only_when_no_other_marker_matches():
    assert cyst_x.centre_of("AHN_NU_IU_1_t2.nii.gz") == "AHN"
    assert cyst_x.centre_of("NU_IU_1_t2.nii.gz") == "NU"


def test_a_name_without_a_centre_marker_has_no_centre():
    assert cyst_x.centre_of("patient_1_t2.nii.gz") is None


def test_patient_is_the_file_name_without_extension_and_sequence():
    assert cyst_x.patient_of("nyu_0012_T1.nii.gz") == cyst_x.patient_of("nyu_0012_t2.nii.gz") == "nyu_0012"
    assert cyst_x.patient_of("t2w-AHN-7.nii") == "AHN-7"


# --- the spreadsheet ---------------------------------------------------------------------------------

def test_unlabelled_and_unpaired_rows_are_skipped_and_counted(cyst_x_folder):
    cohort = cyst_x.read_cyst_x(cyst_x_folder)
    assert len(cohort.cases) == PATIENTS
    assert cohort.skipped_unlabelled == [5]  # inserted as the 4th data row: spreadsheet row 5
    assert cohort.skipped_unpaired == [PATIENTS + 3]
    assert cohort.record()["skipped_unlabelled_rows"] == 1


def test_centres_and_labels_come_from_the_rows(cyst_x_folder):
    cohort = cyst_x.read_cyst_x(cyst_x_folder)
    assert cohort.centres == {"NYU": 6, "AHN": 6, "MCF": 6}
    assert [c.label for c in cohort.cases] == [seed % 3 for seed in range(PATIENTS)]
    assert cohort.cases[4].centre == "AHN" and cohort.cases[4].patient_id == "AHN_0004"


def test_a_missing_crop_file_names_the_row(tmp_path):
    folder = small_folder(tmp_path, [label_row("nyu_0001_t1.nii.gz", "nyu_0001_t2.nii.gz", 1),
                                     label_row("nyu_0002_t1.nii.gz", "nyu_0002_t2.nii.gz", 2)])
    with pytest.raises(InputError, match=r"row 3: the T1 file .*nyu_0002_t1.nii.gz does not exist"):
        cyst_x.read_cyst_x(folder)


def test_an_unknown_label_names_the_row(tmp_path):
    folder = small_folder(tmp_path, [label_row("nyu_0001_t1.nii.gz", "nyu_0001_t2.nii.gz", 3)])
    with pytest.raises(InputError, match=r"row 2: the label '3' in column G is not 0, 1 or 2"):
        cyst_x.read_cyst_x(folder)


def test_a_file_name_without_a_centre_names_the_row(tmp_path):
    write_study(tmp_path, "site_0001", 1, 1)
    write_spreadsheet(tmp_path / "IPMN_Classification" / "IPMN_labels_total.xlsx",
                      [label_row("site_0001_t1.nii.gz", "site_0001_t2.nii.gz", 1)])
    with pytest.raises(InputError, match=r"row 2: no centre in the file names"):
        cyst_x.read_cyst_x(tmp_path)


def test_an_unreadable_spreadsheet_is_refused(tmp_path):
    path = tmp_path / "IPMN_Classification" / "IPMN_labels_total.xlsx"
    path.parent.mkdir(parents=True)
    path.write_text("T1,T2,label\n", encoding="utf-8")
    with pytest.raises(InputError, match="cannot be read as an Excel workbook"):
        cyst_x.read_cyst_x(tmp_path)


# --- the crops ---------------------------------------------------------------------------------------

def test_t1_on_its_own_grid_is_sampled_into_the_whole_t2_crop(cyst_x_folder):
    case = cyst_x.read_cyst_x(cyst_x_folder).cases[0]
    t1, t2, region = case.load()
    assert t1.shape != t2.shape
    prepared, _ = prepare_cases([case], preprocessing_steps("none"), StackCache(None), show_progress=False,
                                save_hashes=False)
    assert prepared[0].t1.shape == prepared[0].t2.shape == (t2.shape[0], 64, 64)
    corners = t2.ijk_to_ras_points(np.array([[-0.5, -0.5, -0.5], [47.5, 51.5, 11.5]]))
    np.testing.assert_allclose(region.size_mm, np.abs(corners[1] - corners[0]))


def test_t1_and_t2_crops_that_do_not_overlap_name_the_case(tmp_path):
    folder = small_folder(tmp_path, [label_row("nyu_0001_t1.nii.gz", "nyu_0001_t2.nii.gz", 1)])
    t1_path = folder / "IPMN_Classification" / "t1" / "nyu_0001_t1.nii.gz"
    from PancreasAILib.volume_io import read_volume

    t1 = read_volume(t1_path)
    shifted = t1.ijk_to_ras.copy()
    shifted[:3, 3] += 1000.0
    write_volume(Volume(t1.array, shifted), t1_path)
    case = cyst_x.read_cyst_x(folder).cases[0]
    with pytest.raises(InputError, match="Case nyu_0001_t2: the T1 and T2 volumes do not overlap"):
        case.load()


# --- published folds ---------------------------------------------------------------------------------

def write_csv(path: Path, rows: list) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(rows)
    return path


def test_published_split_columns_are_found_by_their_headers(tmp_path):
    path = write_csv(tmp_path / "two_inputs.csv", [["T1_name", "T2 Name", "Label", "Fold"],
                                                   ["a_t1.nii.gz", "data/a_t2.nii.gz", "0", "2"]])
    assert cyst_x.read_published_folds(path) == {"a_t2": "2"}


def test_published_split_without_a_fold_column_names_the_columns_it_found(tmp_path):
    path = write_csv(tmp_path / "t2.csv", [["filename", "label", "set"], ["a_t2.nii.gz", "0", "1"]])
    with pytest.raises(InputError, match=r"has no a fold column: its columns are 'filename', 'label', 'set'"):
        cyst_x.read_published_folds(path)


def test_published_split_must_place_every_labelled_case(cyst_x_folder, tmp_path):
    cases = cyst_x.read_cyst_x(cyst_x_folder).cases
    folds = {case.case_id: "1" for case in cases[1:]}
    with pytest.raises(InputError, match=f"does not place 1 of the labelled cases \\({cases[0].case_id}\\)"):
        cyst_x.published_outer_tests(cases, folds, tmp_path / "t2.csv")


def test_a_published_split_of_t1_names_places_the_cases_by_their_t1_file(cyst_x_folder):
    cases = cyst_x.read_cyst_x(cyst_x_folder).cases
    folds = {f"{study_name(seed)}_t1": str(published_fold(seed)) for seed in range(PATIENTS)}
    tests = cyst_x.published_outer_tests(cases, folds, Path("t1.csv"))
    assert [sorted({published_fold(int(i)) for i in test}) for test in tests] == [[1], [2], [3]]


def test_published_folds_are_numbered_in_the_order_of_their_values(cyst_x_folder):
    cases = cyst_x.read_cyst_x(cyst_x_folder).cases
    value = {1: "10", 2: "9", 3: "2"}  # in numbers: fold 3 first; in text, fold 1 would be
    folds = {case.case_id: value[published_fold(seed)] for seed, case in enumerate(cases)}
    tests = cyst_x.published_outer_tests(cases, folds, Path("t2.csv"))
    assert [sorted({published_fold(int(i)) for i in test}) for test in tests] == [[3], [2], [1]]


# --- whole runs --------------------------------------------------------------------------------------

def run_cv(output: Path, folder: Path, *extra: str) -> dict:
    assert crossvalidate_ipmn.main(["--cyst-x", str(folder), "--inner-folds", "2", "--lr-grid", "0.001",
                                    "--bootstrap", "50",
                                    *TINY_RUN, *extra, "--output", str(output)]) == 0
    return json.loads((output / "cv.json").read_text(encoding="utf-8"))


def outer_fold_of_each_case(output: Path) -> dict:
    split = json.loads((output / "split.json").read_text(encoding="utf-8"))
    return {case["case_id"]: case["test_in_outer_fold"] for case in split["cases"]}


@pytest.mark.slow
def test_cross_validation_uses_the_published_folds_when_the_folder_has_them(cyst_x_folder, tmp_path):
    record = run_cv(tmp_path / "cv", cyst_x_folder)
    assert record["outer_folds"]["by"] == "published"
    assert record["outer_folds"]["file"] == "data splits/classification/3-class/t2.csv"
    expected = {f"{study_name(s)}_t2": published_fold(s) for s in range(PATIENTS)}
    assert outer_fold_of_each_case(tmp_path / "cv") == expected
    assert record["data_source"]["skipped_unlabelled_rows"] == 1
    assert record["data_source"]["centres"] == {"NYU": 6, "AHN": 6, "MCF": 6}


@pytest.mark.slow
def test_cross_validation_writes_pooled_metrics_per_centre_with_intervals_and_a_calibration_plot(cyst_x_folder,
                                                                                                tmp_path):
    record = run_cv(tmp_path / "cv", cyst_x_folder)
    method = tmp_path / "cv" / "early-fusion"
    benchmark = json.loads((method / "benchmark.json").read_text(encoding="utf-8"))
    assert benchmark == record["methods"]["early-fusion"]["pooled"]
    assert benchmark["overall"]["cases"] == PATIENTS and list(benchmark["per_group"]) == ["NYU", "AHN", "MCF"]
    for entry in [benchmark["overall"], *benchmark["per_group"].values()]:
        assert 0.0 <= entry["auc"] <= 1.0
        low, high = entry["intervals"]["auc"]
        assert low <= high
    assert benchmark["bootstrap"]["resamples"] == 50
    assert (method / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(method / "benchmark.csv", encoding="utf-8") as stream:
        assert [row["centre"] for row in csv.DictReader(stream)] == ["all", "NYU", "AHN", "MCF"]


@pytest.mark.slow
def test_leave_one_centre_out_tests_each_centre_once(cyst_x_folder, tmp_path):
    record = run_cv(tmp_path / "cv", cyst_x_folder, "--folds-by", "centre")
    assert record["outer_folds"]["fold_centres"] == ["NYU", "AHN", "MCF"]
    centre_number = {"nyu": 1, "AHN": 2, "MCF": 3}
    expected = {f"{study_name(s)}_t2": centre_number[study_name(s).split("_")[0]] for s in range(PATIENTS)}
    assert outer_fold_of_each_case(tmp_path / "cv") == expected


def test_our_folds_keep_each_patient_in_one_fold_without_a_published_split(cyst_x_folder, tmp_path):
    args = crossvalidate_ipmn.build_parser().parse_args(
        ["--cyst-x", str(cyst_x_folder), "--folds-by", "patients", "--folds", "3", "--inner-folds", "2",
         "--output", str(tmp_path)])
    cases = cyst_x.read_cyst_x(cyst_x_folder).cases
    folds, record = crossvalidate_ipmn.outer_folds(args, cases)
    assert record["by"] == "patients" and len(folds) == 3
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(PATIENTS))


def test_folds_by_centre_is_refused_without_cyst_x(tmp_path):
    args = crossvalidate_ipmn.build_parser().parse_args(
        ["--phantoms", "3", "--folds-by", "centre", "--output", str(tmp_path)])
    with pytest.raises(InputError, match="--folds-by centre is for --cyst-x"):
        crossvalidate_ipmn.outer_folds(args, [])


def test_cyst_x_and_a_cohort_csv_cannot_both_be_given(tmp_path, capsys):
    with pytest.raises(SystemExit):
        crossvalidate_ipmn.build_parser().parse_args(["--cyst-x", "a", "--cohort", "b.csv", "--output", "c"])
    with pytest.raises(SystemExit):
        train_ipmn.build_parser().parse_args(["--cyst-x", "a", "--cohort", "b.csv", "--output", "c"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_training_on_cyst_x_records_the_source_in_the_card(cyst_x_folder, tmp_path):
    output = tmp_path / "model.safetensors"
    assert train_ipmn.main(["--cyst-x", str(cyst_x_folder), "--inner-folds", "3", *TINY_RUN,
                            "--output", str(output)]) == 0
    card = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    text = json.dumps(card)
    assert '"kind": "cyst_x"' in text and '"skipped_unlabelled_rows": 1' in text


# --- pooled metrics ----------------------------------------------------------------------------------

def test_auc_of_three_classes_is_the_one_vs_rest_macro_average():
    from ipmn_metrics import pooled_metrics
    from sklearn.metrics import roc_auc_score

    truth = np.array([0, 1, 2, 0, 1, 2, 1])
    probabilities = np.array([[.6, .3, .1], [.2, .5, .3], [.3, .3, .4], [.2, .7, .1], [.5, .4, .1], [.1, .2, .7],
                              [.3, .3, .4]])
    per_class = [roc_auc_score(truth == c, probabilities[:, c]) for c in range(3)]
    assert pooled_metrics(truth, probabilities)["auc"] == pytest.approx(np.mean(per_class))


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate():
    from ipmn_metrics import bootstrap_intervals, pooled_metrics

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet(np.ones(3), 60) + np.eye(3)[truth] * 0.5
    probabilities /= probabilities.sum(1, keepdims=True)
    first, again = (bootstrap_intervals(truth, probabilities, seed=7, resamples=200) for _ in range(2))
    assert first == again
    estimate = pooled_metrics(truth, probabilities)
    for metric, (low, high) in first.items():
        assert low < estimate[metric] < high


def test_per_centre_metrics_use_that_centres_cases_alone():
    from ipmn_metrics import grouped_metrics

    truth = np.array([0, 1, 2, 0, 1, 2])
    right = np.eye(3)[truth] * 0.8 + 0.2 / 3
    wrong = np.eye(3)[(truth + 1) % 3] * 0.8 + 0.2 / 3
    probabilities = np.vstack([right[:3], wrong[3:]])
    result = grouped_metrics(truth, probabilities, ["NYU"] * 3 + ["AHN"] * 3, seed=0, resamples=20)
    assert result["per_group"]["NYU"]["accuracy"] == 1.0 and result["per_group"]["AHN"]["accuracy"] == 0.0
    assert result["overall"]["accuracy"] == 0.5 and result["per_group"]["NYU"]["cases"] == 3


def test_reliability_curve_bins_the_predicted_class_probability():
    from ipmn_metrics import reliability_curve

    truth = np.array([0, 0, 1, 2])
    probabilities = np.array([[.95, .05, 0], [.92, .08, 0], [.55, .45, 0], [.1, .32, .58]])
    curve = reliability_curve(truth, probabilities)
    top = next(p for p in curve if p["low"] == pytest.approx(0.9))
    assert top["cases"] == 2 and top["observed"] == 1.0 and top["mean_probability"] == pytest.approx(0.935)
    middle = next(p for p in curve if p["low"] == pytest.approx(0.5))
    assert middle["cases"] == 2 and middle["observed"] == 0.5


def test_auc_of_two_classes_is_the_binary_auc_of_class_1():
    from ipmn_metrics import pooled_metrics
    from sklearn.metrics import roc_auc_score

    truth = np.array([0, 1, 0, 1, 1, 0])
    high = np.array([.2, .7, .6, .4, .9, .1])
    probabilities = np.stack([1 - high, high], axis=1)
    assert pooled_metrics(truth, probabilities)["auc"] == pytest.approx(roc_auc_score(truth, high))


def test_reliability_curve_of_two_classes_bins_the_probability_of_class_1():
    from ipmn_metrics import reliability_curve

    truth = np.array([1, 0, 0])
    high = np.array([.15, .12, .85])
    curve = reliability_curve(truth, np.stack([1 - high, high], axis=1))
    low = next(p for p in curve if p["low"] == pytest.approx(0.1))
    assert low["cases"] == 2 and low["observed"] == 0.5
