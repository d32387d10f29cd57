"""Runs a test script in a subprocess with 8 fake CPU devices (the flag must be set before
JAX starts, so it cannot run in the test process)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_on_eight_devices(script: str, timeout: int = 600) -> str:
  """The stdout of `script` run by Python with 8 CPU devices; fails the test on an error."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",  # XLA_FLAGS: conftest's, plus 8 devices
             XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout
