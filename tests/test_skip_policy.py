"""tests/skip_policy.py: with JCOMPOSE_REQUIRE_OPTIONAL set (CI) a skip fails the run, at collection or while
running, unless the test is marked skip_allowed; without it, skips stay skips."""

import pytest

_TESTS = '''
import pytest

def test_runtime_skip():
    pytest.importorskip("jcompose_absent_package_xyz")

@pytest.mark.skipif(True, reason="no accelerator")
def test_skipif():
    pass

@pytest.mark.skip_allowed("needs an accelerator")
def test_allowed():
    pytest.skip("no accelerator")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_passes():
    pass
'''
_MODULE_LEVEL = '''
import pytest
pytest.importorskip("jcompose_absent_package_xyz")

def test_never_runs():
    pass
'''


def test_skips_fail_when_optional_packages_are_required(pytester, monkeypatch):
    """(Without the variable the same file gives 1 passed, 4 skipped, 1 xfailed: every local run shows it.)"""
    monkeypatch.setenv("JCOMPOSE_REQUIRE_OPTIONAL", "1")
    pytester.makepyfile(test_runtime=_TESTS, test_module_level=_MODULE_LEVEL)
    result = pytester.runpytest_inprocess("-p", "skip_policy", "-p", "no:cacheprovider", "-p", "no:xdist",
                                          "--continue-on-collection-errors", "-rA")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=2)  # a setup skip fails as an error
    result.stdout.fnmatch_lines([  # in report order: collection, setup errors, then failures
        "*test_module_level.py (at collection) skipped*could not import 'jcompose_absent_package_xyz'*",
        "*JCOMPOSE_REQUIRE_OPTIONAL=1: test test_runtime.py::test_skipif (setup) skipped*no accelerator*",
        "*JCOMPOSE_REQUIRE_OPTIONAL=1: test test_runtime.py::test_runtime_skip (call) skipped*could not import*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
