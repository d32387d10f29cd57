"""Tests for reformer_jax.trainer.cli: the entry points' JAX / XLA settings."""
import os
import subprocess
import sys

import jax
import pytest

from reformer_jax.trainer import cli

_PRINT_FLAGS = ("from reformer_jax.trainer import cli; import os; cli.configure(); "
                "print(os.environ['XLA_FLAGS'])")


def _flags_after_configure(xla_flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  return subprocess.run([sys.executable, "-c", _PRINT_FLAGS], env=env, check=True,
                        capture_output=True, text=True).stdout.strip()


def test_configure_adds_flags_and_keeps_users_flags():
  first, end = cli.XLA_FLAGS_JAXLIB
  if not first <= cli._jaxlib_version()[:2] < end:
    assert _flags_after_configure(None) == ""  # untested jaxlib: no flags
    return
  assert _flags_after_configure(None) == " ".join(cli.XLA_FLAGS)
  assert _flags_after_configure("--xla_dump_to=/tmp/x") == " ".join(
      ("--xla_dump_to=/tmp/x",) + cli.XLA_FLAGS)
  mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  # The user's choice wins; the other flags are still added.
  assert _flags_after_configure(mine) == " ".join((mine,) + cli.XLA_FLAGS[1:])


@pytest.mark.parametrize("version", [(0, 4, 30), (0, 11, 0), (1, 0, 0)])
def test_flags_need_a_tested_jaxlib(monkeypatch, version):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(cli, "_jaxlib_version", lambda: version)
  cli.configure()
  assert os.environ["XLA_FLAGS"] == ""  # another XLA might abort on an unknown flag


def test_a_failed_collective_is_told_from_a_users_mistake():
  """A lost peer surfaces as a JaxRuntimeError or, from a device_put, as a ValueError
  carrying the XLA status; a user's ValueError is neither."""
  lost = "UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset by peer"
  assert cli.is_runtime_failure(ValueError(lost))
  assert cli.is_runtime_failure(jax.errors.JaxRuntimeError(lost))
  assert cli.is_runtime_failure(jax.errors.JaxRuntimeError("anything"))
  assert not cli.is_runtime_failure(ValueError("SEQ_LEN=-5 must be positive"))
  assert not cli.is_runtime_failure(OSError(lost))
