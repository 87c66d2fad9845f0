"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""
import os

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def gcs():
  """A GCS emulator on localhost for the session, with this process's environment pointed at
  it (subprocesses inherit it): tests/gcs_emulator.py. Yields the emulator (`.env`, BUCKET)."""
  from tests.gcs_emulator import GcsEmulator
  emulator = GcsEmulator()
  saved = {k: os.environ.get(k) for k in emulator.env}
  os.environ.update(emulator.env)
  try:
    yield emulator
  finally:  # the server itself stops when this process exits (tests/gcs_emulator.py)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
