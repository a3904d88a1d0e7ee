"""Every writer goes through mrcnn.atomic.atomic_target: a failure mid-write keeps the old file
and leaves no temporary behind."""

import os
import stat

import numpy as np
import pytest

from mrcnn.atomic import atomic_target
from mrcnn.evaluation import write_json
from mrcnn.metrics.rle import read_submission, write_submission


def test_success_renames_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_target(str(path)) as tmp:
        assert os.path.dirname(tmp) == str(path.parent)
        with open(tmp, "w") as f:
            f.write("new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask   # not mkstemp's 0600
    assert os.listdir(path.parent) == ["out.txt"]


def test_failure_keeps_previous_file_and_removes_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_target(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_submission_and_json_writers_are_atomic(tmp_path):
    sub = tmp_path / "submission.csv"
    write_submission(str(sub), [("img1", "1 3")])
    with pytest.raises(Exception):
        write_submission(str(sub), [("img2", "5 2"), object()])   # a bad row mid-file
    assert read_submission(str(sub)) == {"img1": ["1 3"]}
    js = tmp_path / "metrics.json"
    write_json(str(js), {"dsb_score": 0.5})
    with pytest.raises(TypeError):
        write_json(str(js), {"bad": np.zeros(2)})          # not JSON-serialisable
    assert js.read_text().replace(" ", "").replace("\n", "") == '{"dsb_score":0.5}'
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "submission.csv"]
