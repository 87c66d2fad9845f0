"""Command-line flag parsing for the entry points: a bad flag is one line on stderr, exit 2.

absl's own parser prints two lines and exits 1 for an unknown flag, and lets the errors of
ml_collections' `--config.<key>=VALUE` overrides (a misspelt key, a config file that does not
load) escape as tracebacks. Every entry point passes `parse_flags` to `absl.app.run` instead:

  app.run(main, flags_parser=parse_flags)

`--help` keeps absl's behaviour (it prints and exits 1 before any value is checked).
"""
from __future__ import annotations

import ast
import re
import sys

from absl import flags
from ml_collections import config_flags

EXIT_USER_ERROR = 2  # muse_jax.cli documents the statuses; 2 = a user or config error

# Flags defined here (define_job_flags) belong to the entry point that asks for them, so that
# its --help lists them.
flags.disclaim_key_flags()


def define_job_flags(config_help: str, workdir_help: str) -> flags.FlagValues:
  """The flags of a job that may span processes (train, precompute): --config (locked, so a
  misspelt override fails), --workdir, both required, and jax.distributed's flags."""
  from muse_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  distributed.define_flags()
  flags.adopt_module_key_flags(distributed)
  flags.mark_flags_as_required(["config", "workdir"])
  return flags.FLAGS


def flag_value(value) -> str:
  """VALUE of `--config.key=VALUE` that parses back to `value` (lists, as config.json holds
  tuples, are written as tuples)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(_tuples(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _unquote(text: str) -> str:
  """ml_collections wraps a KeyError's repr in another error: undo the layers of quoting."""
  for _ in range(3):
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
      try:
        text = ast.literal_eval(text)
        continue
      except (ValueError, SyntaxError):
        pass
    break
  return text


def _override_of(key: str, argv: list[str]) -> str:
  """The --a.b.c override in argv whose dotted path holds `key` (the one that failed)."""
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if "." in name and key in name.split("."):
      return "--" + name
  return ""


def flag_error_message(error: BaseException, argv: list[str]) -> str:
  """One line that says which flag is wrong and, where known, what to write instead."""
  if isinstance(error, flags.Error):
    return " ".join(str(error).split())
  text = _unquote(str(error))
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(error, (KeyError, AttributeError)) and lines:
    key = _unquote(lines[0])
    flag = _override_of(key, argv)
    guess = re.search(r'Did you mean "([^"]+)"', text)
    hint = f"; did you mean {guess.group(1)!r}?" if guess else ""
    where = f"{flag}: " if flag else ""
    return f"{where}no config key {key!r}{hint}"
  return f"{type(error).__name__}: {lines[-1] if lines else error}"


def parse_flags(argv: list[str]) -> list[str]:
  """Parses argv into absl's FLAGS (and loads the config files they name), or exits 2."""
  try:
    rest = flags.FLAGS(argv)
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001 - whatever parsing raised is reported as the flag's
    _exit(flag_error_message(e, argv))
  for name in flags.FLAGS:
    try:  # a config file that failed to load raises at the first use of its config: now
      getattr(getattr(flags.FLAGS, name), "keys", None)
    except Exception as e:  # noqa: BLE001
      # ml_collections' report of a config file that does not load ends with the cause.
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      what = getattr(flags.FLAGS[name], "config_filename", "")
      _exit(f"--{name}={what}: the config file does not load: "
            f"{lines[-1] if lines else type(e).__name__}")
  return rest


def _exit(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)
