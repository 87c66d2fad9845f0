r"""Runs README.md's quick start ("A short run that ends in a sampled image") as written.

  python tools/readme_quickstart.py [--scratch=DIR] [--dry_run]

Takes the section's ```bash blocks (continuation lines joined, comments dropped) and its
```python blocks (each run as one `python -c`), in order, points every /tmp/ path into --scratch
(so nothing collides with other runs on the machine) and runs them one by one from the
repository root with this interpreter as `python`. It stops at the first command that fails
and prints it with its exit status (`--help` exits 1, absl's convention); on success it checks
that the sampled image exists and prints each command's wall time.

It takes minutes on CPU (five trainings, a precompute, a bundle export, three samplings, a
two-process run), too long for `make test` (tests/test_readme_quickstart.py checks that every
command's flags parse); run it after changing the README's commands or what they call.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## A short run that ends in a sampled image"


def quickstart_commands(readme: str) -> list[str]:
  """The quick start's commands in order, one string each (continuations joined)."""
  section = readme[readme.index(SECTION):]
  # It ends at the next heading: its subsections (a TPU compile check needing libtpu) are not
  # part of the CPU run.
  ends = [i for i in (section.find(h, len(SECTION)) for h in ("\n## ", "\n### ")) if i >= 0]
  section = section[:min(ends)] if ends else section
  commands = []
  for kind, block in re.findall(r"```(bash|python)\n(.*?)```", section, re.S):
    if kind == "python":
      commands.append(shlex.join(["python", "-c", block]))
      continue
    current = ""
    for line in block.splitlines():
      if not current and (not line.strip() or line.lstrip().startswith("#")):
        continue
      current += line.rstrip("\\").strip() + " "
      if not line.rstrip().endswith("\\"):
        commands.append(current.strip())
        current = ""
  return commands


def localize(command: str, scratch: str) -> list[str]:
  """argv of `command` with `python` as this interpreter and /tmp/ paths under `scratch`."""
  argv = shlex.split(command.replace("/tmp/", scratch.rstrip("/") + "/"), comments=True)
  if argv and argv[0] == "python":
    argv[0] = sys.executable
  return argv


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scratch", default="", help="directory for the /tmp/ paths "
                      "(default: a new temporary directory)")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args = parser.parse_args()
  with open(os.path.join(REPO, "README.md")) as f:
    commands = quickstart_commands(f.read())
  scratch = args.scratch or tempfile.mkdtemp(prefix="muse_quickstart_")
  outputs = []
  for command in commands:
    argv = localize(command, scratch)
    outputs += [a.split("=", 1)[-1] for a in argv if a.endswith(".png")]
    print(f"$ {shlex.join(argv)}", flush=True)
    if args.dry_run:
      continue
    start = time.time()
    status = subprocess.call(argv, cwd=REPO)
    print(f"  -> exit {status} in {time.time() - start:.0f} s", flush=True)
    if status and not (status == 1 and argv[-1] == "--help"):
      print(f"error: README quick-start command failed (exit {status}): {command}",
            file=sys.stderr)
      return 1
  missing = [p for p in outputs if not args.dry_run and not os.path.isfile(p)]
  if missing:
    print(f"error: the quick start wrote no {missing}", file=sys.stderr)
    return 1
  print(f"quick start ran as written; outputs in {scratch}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
