"""One writer, one error base, one ``require`` for the package and the runtime: the package's
names are the runtime's, and each error class of the package is reported as bad input."""
from __future__ import annotations

import os

import pytest

import mmrepvgg_runtime.errors as rt_errors
import mmrepvgg_runtime.files as rt_files
from mmrepvgg.utils import errors, fileio, optional


def test_the_package_writes_and_reports_through_the_runtime():
    for name in ('check_output_path', 'check_output_paths', 'write_atomic',
                 'write_bytes_atomic', 'write_json_atomic', 'sigterm_unwinds'):
        assert getattr(fileio, name) is getattr(rt_files, name)
    assert errors.SameFileError is rt_errors.SameFileError
    assert errors.MissingDependencyError is rt_errors.MissingDependencyError
    assert errors.error_message is rt_errors.error_message
    assert errors.user_errors() == rt_errors.USER_ERRORS


@pytest.mark.parametrize('cls', [errors.CheckpointError, errors.FoldError, errors.ConfigError,
                                 errors.VerificationError, errors.ExportError,
                                 errors.DataError, errors.SameFileError, FileNotFoundError,
                                 errors.MissingDependencyError, rt_errors.MetadataError])
def test_every_error_class_is_bad_input(cls):
    assert issubclass(cls, errors.user_errors())


def test_the_package_has_at_most_six_exception_classes():
    """One home for errors (issue 24): the package defines at most six classes of its own."""
    import inspect
    own = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, BaseException) and c.__module__ == errors.__name__]
    assert len(own) <= 6, own


def test_error_message():
    assert errors.error_message(KeyError('no such key')) == 'no such key'
    text = errors.CheckpointError('State dict does not fit:\n  missing (1): a')
    assert errors.error_message(text) == 'State dict does not fit:\n  missing (1): a'
    assert errors.error_message(text, first_line=True) == 'State dict does not fit:'
    assert errors.error_message(ValueError()) == 'ValueError'


def test_require_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'onnx', None)
    with pytest.raises(errors.MissingDependencyError, match=r'pip install onnx==\S+ '):
        optional.require('onnx')


def test_written_files_follow_the_umask_and_refuse_inputs(tmp_path):
    old = os.umask(0o027)
    try:
        out = fileio.write_json_atomic(tmp_path / 'r.json', dict(x=float('nan')))
    finally:
        os.umask(old)
    assert out.read_text() == '{\n "x": null\n}\n' and out.stat().st_mode & 0o777 == 0o640
    os.link(out, tmp_path / 'hard.json')
    with pytest.raises(errors.SameFileError, match='is the input'):
        fileio.write_bytes_atomic(tmp_path / 'hard.json', b'x', force=True, inputs=[out])
    assert [p.name for p in sorted(tmp_path.iterdir())] == ['hard.json', 'r.json']


def test_a_file_system_without_hard_links_still_gets_no_clobber_writes(tmp_path, monkeypatch):
    """Where ``os.link`` is refused (FAT, some network shares), the writer checks and renames:
    files are still written, and an existing file is still never replaced."""
    import errno

    def no_links(src, dst):
        raise PermissionError(errno.EPERM, 'Operation not permitted')

    monkeypatch.setattr(os, 'link', no_links)
    out = fileio.write_bytes_atomic(tmp_path / 'a.bin', b'new')
    assert out.read_bytes() == b'new'

    def racing(tmp):  # another writer creates the file while this one writes
        out.write_bytes(b'theirs')
        tmp.write_bytes(b'mine')

    out.unlink()
    with pytest.raises(FileExistsError):
        fileio.write_atomic(out, racing)
    assert out.read_bytes() == b'theirs' and [p.name for p in tmp_path.iterdir()] == ['a.bin']
