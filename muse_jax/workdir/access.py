"""Whether a run can write its workdir, and the errors it stops with when it cannot.

`UnwritableWorkdir` is raised before training starts (entry points exit with 2);
`WorkdirWriteError` when a write fails mid-run, a checkpoint or the metrics log (exit 5):
the newest checkpoint written before it stays usable.
"""
from __future__ import annotations

import errno
import os
import re
import uuid

from muse_jax import paths


class UnwritableWorkdir(RuntimeError):
  """The workdir (or its checkpoints/) cannot be created or written."""


class WorkdirWriteError(RuntimeError):
  """A write into the workdir failed during the run (disk full, permission denied, I/O)."""


def describe(error: BaseException) -> str:
  """One line for a failure: '[Errno 28] No space left on device' when an OSError is inside
  `error` (Orbax wraps them; TensorStore names them os_error_code), else the type and first
  line of the innermost exception (the most specific one)."""
  chain, e = [], error
  while e is not None and all(e is not c for c in chain):
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, OSError) and e.errno in errno.errorcode and e.strerror:
      return f"[Errno {e.errno}] {e.strerror}"
    code = re.search(r"os_error_code='(\d+)'", str(e))  # TensorStore's form of an OSError
    if code and int(code.group(1)) in errno.errorcode:
      return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
  root = chain[-1]
  text = root.args[0] if isinstance(root, KeyError) and root.args else root
  lines = str(text).strip().splitlines()
  line = f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__
  return line if len(line) <= 200 else line[:197] + "..."


def check_writable(directory: paths.PathLike) -> None:
  """Creates `directory` if needed and writes, syncs and removes a probe file in it;
  UnwritableWorkdir otherwise. The probe holds a page of data so that a full disk fails
  here (creating an empty file can still succeed then). On a URL (gs://...) the probe is one
  object: it checks the bucket exists and the credentials may write and delete in it."""
  directory = paths.resolve(directory)
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write_probe.{uuid.uuid4().hex}"
    try:
      if paths.is_url(directory):
        probe.write_bytes(b"\0" * 4096)
      else:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
          os.write(fd, b"\0" * 4096)
          os.fsync(fd)
        finally:
          os.close(fd)
    finally:
      if probe.exists():
        probe.unlink()
  except Exception as e:  # OSError locally; gcsfs and google-auth raise their own types
    raise UnwritableWorkdir(f"cannot write to {directory}: {describe(e)}; choose another "
                            "--workdir or fix its permissions or free space") from None
