"""Participants tables, ROI tables (aparcstats2table / CSV) and FSGD files."""
import numpy as np
import pandas as pd
import pytest

from surfharm import io as sio


def test_fsgd_keywords_are_case_insensitive_and_comments_ignored(tmp_path):
    path = tmp_path / "study.fsgd"
    path.write_text(
        "# made by hand\n"
        "GroupDescriptorFile 1\n"
        "title thickness by site\n"
        "CLASS siteA   # first scanner\n"
        "class siteB\n"
        "MeasurementName thickness\n"
        "variables age  sex\n"
        "Input 001 siteA 34 1\n"
        "input 002 siteB 51.5 0\n"
    )
    table, info = sio.read_fsgd(path)
    assert info == {"title": "thickness by site", "classes": ["siteA", "siteB"], "variables": ["age", "sex"]}
    assert table["subject"].tolist() == ["001", "002"]  # ids stay strings
    assert table["class"].tolist() == ["siteA", "siteB"]
    np.testing.assert_array_equal(table["age"], [34, 51.5])


def test_fsgd_write_read_round_trip(tmp_path):
    table = pd.DataFrame({"subject": ["a", "b", "c"], "site": ["X", "Y", "X"], "age": [20.0, 30.5, 41.0]})
    path = sio.write_fsgd(tmp_path / "out.fsgd", table, class_column="site", variables=["age"])
    back, info = sio.read_fsgd(path, class_column="site")
    pd.testing.assert_frame_equal(back, table)
    assert info["classes"] == ["X", "Y"]


def test_aparcstats2table_tsv(tmp_path):
    path = tmp_path / "lh.aparc.thickness.tsv"
    path.write_text("lh.aparc.thickness\tlh_bankssts_thickness\tlh_cuneus_thickness\tlh_MeanThickness_thickness\t"
                    "BrainSegVolNotVent\teTIV\n"
                    "sub-001\t2.51\t1.98\t2.45\t1100000\t1500000\n"
                    "sub-002\t2.61\t2.02\t2.50\t1050000\t1450000\n")
    table, features = sio.read_roi_table(path)
    assert table["subject"].tolist() == ["sub-001", "sub-002"]
    assert features == ["lh_bankssts_thickness", "lh_cuneus_thickness", "lh_MeanThickness_thickness"]
    assert "eTIV" in table.columns  # global measures stay available as covariates


def test_enigma_csv_with_covariates_joined_by_subject(tmp_path):
    roi = tmp_path / "CortThick.csv"
    roi.write_text("SubjID,L_bankssts_thickavg,L_cuneus_thickavg\ns2,2.4,1.9\ns1,2.5,2.0\n")
    cov = tmp_path / "cov.csv"
    cov.write_text("SubjID,Age,Sex,site\ns1,54,1,A\ns2,26,2,B\n")
    table, features = sio.read_roi_table(roi, covariates=cov)
    assert features == ["L_bankssts_thickavg", "L_cuneus_thickavg"]
    assert table["subject"].tolist() == ["s2", "s1"]       # ROI table order kept
    assert table["site"].tolist() == ["B", "A"]            # joined by id, not by row
    assert table["Age"].tolist() == [26, 54]


def test_bids_participants_columns_are_normalised(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tsession_id\tsite\tage\tsex\nsub-01\tses-1\tA\t30\tF\nsub-01\tses-2\tA\t31\tF\n")
    table = sio.read_table(path)
    assert list(table.columns[:3]) == ["subject", "session", "site"]
    assert table["age"].dtype.kind in "if"
    assert table["sex"].tolist() == ["F", "F"]


def test_duplicate_ids_in_covariates_are_refused(tmp_path):
    roi = pd.DataFrame({"subject": ["a", "b"], "x": [1.0, 2.0]})
    cov = pd.DataFrame({"subject": ["a", "a", "b"], "site": ["S", "T", "S"]})
    with pytest.raises(sio.InputTableError, match=r"duplicate ids \[\['a'\]\]"):
        sio.join_covariates(roi, cov)


def test_unparsable_table(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("subject,site\n")
    with pytest.raises(sio.InputTableError, match=r"empty\.csv: table has no rows"):
        sio.read_table(path)


def test_descriptor_columns_in_the_roi_table_are_not_rois(tmp_path):
    """An ENIGMA-style CSV that carries Age and Sex itself: they stay covariates, not ROI features."""
    path = tmp_path / "rois.csv"
    pd.DataFrame({"SubjID": ["a", "b"], "Age": [30.5, 41.0], "Sex": [1, 0], "site": ["x", "y"],
                  "L_bankssts_thickavg": [2.5, 2.6], "R_bankssts_thickavg": [2.4, 2.7]}).to_csv(path, index=False)
    table, features = sio.read_roi_table(path)
    assert features == ["L_bankssts_thickavg", "R_bankssts_thickavg"]
    assert {"Age", "Sex"} <= set(table.columns)
