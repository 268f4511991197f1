"""Fixtures of the inference tests."""

import shutil

import pytest


@pytest.fixture
def bundle(tmp_path):
    """A copy of the shipped bundle (its weights, configs and atlas)."""
    from medwidit.inference.options import resolve_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(resolve_bundle(), copy, ignore=shutil.ignore_patterns("eval", "runs"))
    return copy
