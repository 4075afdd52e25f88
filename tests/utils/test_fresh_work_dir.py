import pytest

from demo.demos import fresh_work_dir
from mmrepvgg.utils.fileio import DEMO_MARKER


def test_demo_never_wipes_a_folder_it_did_not_make(tmp_path):
    (tmp_path / 'precious.txt').write_text('data')
    with pytest.raises(FileExistsError, match='not made by a demo'):
        fresh_work_dir(tmp_path)
    assert (tmp_path / 'precious.txt').read_text() == 'data'


def test_demo_clears_its_own_previous_output(tmp_path):
    out = fresh_work_dir(tmp_path / 'demo')
    (out / 'iter_1.pth').write_text('old')
    out = fresh_work_dir(out)
    assert sorted(p.name for p in out.iterdir()) == [DEMO_MARKER]
