"""Shared pytest fixtures for the ntk_zoo tests."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
  """Enables float64 (`jax_enable_x64`) for one test and restores the previous setting."""
  with jax.enable_x64(True):
    yield
