"""Patient-level splits: deterministic, leak-free, and checked when read back."""
import json

import pytest

from c2w_fast.data.splits import load_splits, make_splits, read_patients, save_splits
from c2w_fast.errors import DataError

IDS = [f"case{i:03d}" for i in range(154)]


def test_c2w_split_sizes_and_determinism():
    splits = make_splits(IDS, n_test=30, n_folds=5, final_val=24, seed=1)
    assert len(splits.test) == 30 and len(splits.development) == 124
    assert len(splits.final.train) == 100 and len(splits.final.val) == 24
    assert make_splits(IDS, n_test=30, final_val=24, seed=1) == splits
    assert make_splits(IDS, n_test=30, final_val=24, seed=2).test != splits.test


def test_no_leakage_between_test_folds_and_final():
    splits = make_splits(IDS, seed=0)
    dev = set(splits.development)
    assert not dev & set(splits.test) and dev | set(splits.test) == set(IDS)
    vals = [set(f.val) for f in splits.folds]
    assert set().union(*vals) == dev and sum(map(len, vals)) == len(dev)
    for fold in splits.folds:
        assert not set(fold.train) & set(fold.val) and set(fold.train) | set(fold.val) == dev


def test_cases_of_one_patient_stay_together():
    groups = {i: f"patient{int(i[4:]) // 2}" for i in IDS}  # two scans per patient
    splits = make_splits(IDS, groups=groups, seed=3)
    for part in [splits.test, *[f.val for f in splits.folds], splits.final.val]:
        patients = {groups[i] for i in part}
        assert sum(1 for i in IDS if groups[i] in patients) == len(part)


def test_round_trip_and_validation(tmp_path):
    splits = make_splits(IDS, seed=4)
    path = save_splits(splits, tmp_path / "splits.json")
    assert load_splits(path, IDS) == splits
    with pytest.raises(DataError, match="cases not in the dataset"):
        load_splits(path, IDS[:100])
    payload = json.loads(path.read_text())
    payload["test"].append(payload["folds"][0]["val"][0])
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="test cases also in development"):
        load_splits(path)
    payload = json.loads(save_splits(splits, path).read_text())
    payload["final"]["val"].append(payload["final"]["train"][0])
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="final split: cases both in train and val"):
        load_splits(path)
    payload = json.loads(save_splits(splits, path).read_text())
    moved = payload["folds"][0]["val"][0]
    payload["folds"][1]["val"].append(moved)
    payload["folds"][1]["train"].remove(moved)
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="validated in more than one fold"):
        load_splits(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a valid splits file"):
        load_splits(path)
    with pytest.raises(DataError, match="splits file not found"):
        load_splits(tmp_path / "missing.json")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"n_folds must be in 2\.\.3 \(the development patients left after 1 "
                                         r"test patients of 4\), got 5"):
        make_splits(IDS[:4], n_test=1, n_folds=5)
    with pytest.raises(ValueError, match="5 patients with 4 held out for the test leave 1 development patient"):
        make_splits(IDS[:5], n_test=4, n_folds=2)
    with pytest.raises(ValueError, match="final_val=2 takes all 2 development patients for validation"):
        make_splits(IDS[:6], n_test=4, n_folds=2, final_val=2)
    with pytest.raises(ValueError, match=r"^n_test must be a fraction in \[0, 1\], got 1.5$"):
        make_splits(IDS, n_test=1.5)
    with pytest.raises(ValueError, match=r"^n_test must be a count in 0\.\.3, got 4$"):  # a count: no fraction named
        make_splits(IDS[:3], n_test=4)
    with pytest.raises(ValueError, match="duplicates"):
        make_splits(["a", "a", "b"])
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        make_splits(IDS).fold(5)


def test_a_patients_csv_keeps_a_patients_scans_together_in_a_training_run(tmp_path):
    from c2w_fast import config as cfg
    from c2w_fast.data.phantom import write_dataset
    from c2w_fast.training.run import cases_and_splits
    from training_helpers import CONFIGS

    ids = write_dataset(tmp_path / "data", "lasc", 8, shape=(8, 24, 24), spacing=(2.5, 2.5, 2.5), progress=False)
    patients = {case: f"p{i // 2}" for i, case in enumerate(ids)}  # pre- and post-ablation scans
    (tmp_path / "patients.csv").write_text("case,patient\n" + "".join(f"{c},{p}\n" for c, p in patients.items()))
    config = cfg.load(CONFIGS / "c2w_cavity.toml", [f"data.root=\"{tmp_path / 'data'}\"", "data.n_test=1",
                                                    "data.n_folds=3", "data.final_val=1",
                                                    f"data.patients=\"{tmp_path / 'patients.csv'}\""])
    _, splits = cases_and_splits(config, tmp_path / "run")
    assert len(splits.test) == 2 and len({patients[c] for c in splits.test}) == 1  # n_test counts patients
    for side in (splits.test, splits.final.val, *(f.val for f in splits.folds)):
        assert {c for c in ids if patients[c] in {patients[s] for s in side}} == set(side)
    assert splits.settings["patients"] == str(tmp_path / "patients.csv")
    (tmp_path / "bad.csv").write_text("scan,subject\na,b\n")
    with pytest.raises(DataError, match="bad.csv: the patients CSV needs a header with the columns case and patient"):
        cases_and_splits(cfg.load(CONFIGS / "c2w_cavity.toml", [f"data.root=\"{tmp_path / 'data'}\"",
                                                                 f"data.patients=\"{tmp_path / 'bad.csv'}\""]),
                         tmp_path / "run")
    (tmp_path / "paths.csv").write_text("case,patient\n" + "".join(f"{c}/lgemri.nrrd,p\n" for c in ids))
    with pytest.raises(DataError, match=r"paths.csv: none of its cases \(phantom000/lgemri.nrrd, "
                                        r"phantom001/lgemri.nrrd, phantom002/lgemri.nrrd, \.\.\.\) is in the dataset, "
                                        "whose case ids are e.g. phantom000, phantom001, phantom002: the case column "
                                        "holds those$"):
        cases_and_splits(cfg.load(CONFIGS / "c2w_cavity.toml", [f"data.root=\"{tmp_path / 'data'}\"",
                                                                 f"data.patients=\"{tmp_path / 'paths.csv'}\""]),
                         tmp_path / "run")


def test_fractions_round_to_the_nearest_patient_count():
    """0.2 of 154 patients is 30.8 → 31 test patients; 0.2 of the 123 left is 24.6 → 25 final validation."""
    splits = make_splits(IDS, n_test=0.2, final_val=0.2, seed=5)
    assert len(splits.test) == 31 and len(splits.final.val) == 25 and len(splits.final.train) == 98


def test_no_test_set_leaves_every_case_for_development():
    splits = make_splits(IDS[:10], n_test=0, n_folds=2, final_val=0, seed=6)
    assert splits.test == () and splits.development == tuple(IDS[:10]) and splits.final.val == ()


def test_a_fold_that_does_not_partition_the_development_cases_is_refused(tmp_path):
    """A case in both sides of one fold, or in neither, is refused (the fold's sets must split
    the development cases exactly)."""
    path = save_splits(make_splits(IDS[:20], n_test=4, n_folds=4, final_val=4, seed=7), tmp_path / "splits.json")
    original = json.loads(path.read_text())
    both = json.loads(path.read_text())
    both["folds"][1]["train"].append(both["folds"][1]["val"][0])
    neither = json.loads(path.read_text())
    neither["folds"][2]["train"].pop()
    for payload in (both, neither):
        path.write_text(json.dumps(payload))
        with pytest.raises(DataError, match="fold [12] does not partition the development cases"):
            load_splits(path)
    path.write_text(json.dumps(original))
    load_splits(path, IDS[:20])
    with pytest.raises(DataError, match=r"cases not in the dataset: \['%s'\]" % original["test"][0]):
        load_splits(path, [case for case in IDS[:20] if case != original["test"][0]])  # a test case gone


def test_the_patients_csv_refuses_a_case_with_two_patients_or_a_blank(tmp_path):
    path = tmp_path / "patients.csv"
    path.write_text("case,patient\na, p1\nb,p1\nc,p2\na,p1\n")
    assert read_patients(path) == {"a": "p1", "b": "p1", "c": "p2"}  # a repeated row is fine, spaces trimmed
    for rows, message in (("a,p1\na,p2\n", "case 'a' is given two patients: 'p1' and 'p2'"),
                          ("a,p1\nb, \n", "a row without its case or patient"),
                          ("a,p1\n,p2\n", "a row without its case or patient")):
        path.write_text("case,patient\n" + rows)
        with pytest.raises(DataError, match=message):
            read_patients(path)


def test_a_trained_runs_split_must_still_cover_the_dataset(tmp_path):
    """A case added to the dataset, or one of the split's removed, after a fold trained: the run's split no
    longer fits, a RunError naming the cases; so is a splits.json deleted under trained folds (a new split
    would test on their training cases). Before any fold trained, the split is made anew."""
    import shutil

    from c2w_fast import config as cfg
    from c2w_fast.data.phantom import write_dataset
    from c2w_fast.training.run import RunError, cases_and_splits, split_settings
    from training_helpers import CONFIGS

    ids = write_dataset(tmp_path / "data", "lasc", 7, shape=(8, 24, 24), spacing=(2.5, 2.5, 2.5), progress=False)
    config = cfg.load(CONFIGS / "c2w_cavity.toml", [f"data.root=\"{tmp_path / 'data'}\"", "data.n_test=1",
                                                    "data.n_folds=2", "data.final_val=1"])
    run = tmp_path / "run"
    _, splits = cases_and_splits(config, run)
    save_splits(splits, run / "splits.json", split_settings(config))
    (run / "fold_0").mkdir()
    (run / "fold_0" / "checkpoint_latest.pt").write_bytes(b"x")
    shutil.copytree(tmp_path / "data" / ids[0], tmp_path / "data" / "added")
    with pytest.raises(RunError, match=r"splits.json was made without the dataset's cases \['added'\]; fold_0 "
                                       r"trained \(or is training\) on that split and one run folder holds one split: "
                                       "use another --out$"):
        cases_and_splits(config, run)
    shutil.rmtree(tmp_path / "data" / ids[3])
    with pytest.raises(RunError, match=rf"made without the dataset's cases \['added'\] and with cases no longer in "
                                       rf"the dataset \['{ids[3]}'\]; fold_0 trained .*: give --data the dataset that "
                                       "holds them, or use another --out$"):
        cases_and_splits(config, run)
    shutil.rmtree(tmp_path / "data" / "added")
    saved = (run / "splits.json").read_bytes()
    (run / "splits.json").unlink()  # deleted to split anew: the trained fold's cases would mix with a new test set
    with pytest.raises(RunError, match=f"{run}: fold_0 trained here, but its splits.json is gone; put it back"):
        cases_and_splits(config, run)
    (run / "splits.json").write_bytes(saved)
    (run / "fold_0" / "checkpoint_latest.pt").unlink()  # nothing trained: split anew, of the cases there are
    _, anew = cases_and_splits(config, run)
    assert sorted(anew.development + anew.test) == sorted(set(ids) - {ids[3]})


def test_a_dataset_of_one_case_asks_whether_data_names_a_case_folder(tmp_path):
    from c2w_fast import config as cfg
    from c2w_fast.data.phantom import write_dataset
    from c2w_fast.training.run import RunError, cases_and_splits
    from training_helpers import CONFIGS

    write_dataset(tmp_path / "data", "lasc", 2, shape=(8, 24, 24), spacing=(2.5, 2.5, 2.5), progress=False)
    for root, count, hint in ((tmp_path / "data" / "phantom000", "1 case", r"is --data the folder of one case\? give "
                               "the folder that holds all the cases$"),
                              (tmp_path / "data", "2 cases", "the split is set by data.n_test")):
        config = cfg.load(CONFIGS / "c2w_cavity.toml", [f"data.root=\"{root}\""])
        with pytest.raises(RunError, match=f"^{root}: cannot split {count}: n_test must be a count in .*; {hint}"):
            cases_and_splits(config, tmp_path / "run")
