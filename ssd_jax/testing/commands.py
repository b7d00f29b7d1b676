"""Documented commands, run as a user types them.

The README's ```bash blocks hold one command a line (`# ...` lines are
comments). A test names a command by a piece of its text (`find`), and
`as_typed` turns it into what a user's shell would run, in a scratch folder
standing for the user's current folder:
  - `python`, `python3` and `.venv/bin/python` are this interpreter;
  - `/tmp/...` paths move into the scratch folder; relative paths (photos/,
    weights files) are read there, and `configs/` and `experiments/` there link
    to the repo's;
  - leading `NAME=value` words are environment variables;
  - `a && b` runs its parts in turn; a part that makes the venv or installs
    into it is skipped (the test command already ran that install);
  - extra arguments (`--config.*` overrides that shrink a run) are appended.
"""
from __future__ import annotations

import ast
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / 'README.md'
INTERPRETERS = ('python', 'python3', '.venv/bin/python')
# LLVM's cheap passes (ssd_jax.xla_cpu.RUN_ONCE, written out: tests/conftest.py
# sets the environment before anything imports JAX) and XLA:CPU's older fusion
# emitters, which compile the short runs tests start several times faster.
QUICK_COMPILE = ('--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true '
                 '--xla_cpu_use_fusion_emitters=false')
# A user's machine: one CPU device (the tests' own processes simulate eight).
ONE_DEVICE = {'XLA_FLAGS': f'--xla_force_host_platform_device_count=1 {QUICK_COMPILE}'}
_ENV_WORD = re.compile(r'^[A-Z_][A-Z0-9_]*=')


def fenced_blocks(markdown: str, language: str) -> list[str]:
  """The bodies of the ```<language> blocks of a markdown text, in order."""
  return re.findall(rf'^```{language}[ \t]*\n(.*?)^```', markdown, flags=re.M | re.S)


def commands(markdown: str) -> list[str]:
  """Every command of the ```bash blocks: each non-empty line not starting with #."""
  return [line.strip() for block in fenced_blocks(markdown, 'bash')
          for line in block.splitlines() if line.strip() and not line.lstrip().startswith('#')]


def docstring_commands(path: str) -> list[str]:
  """The commands a module's docstring shows (`path` relative to the repository):
  its lines that start with `python`, each joined with the lines a trailing
  backslash continues."""
  doc = ast.get_docstring(ast.parse((ROOT / path).read_text())) or ''
  out, pending = [], None
  for line in doc.splitlines():
    text = line.strip()
    if pending is None and not text.startswith(('python ', 'python3 ')):
      continue
    part = text.rstrip('\\').strip()
    pending = part if pending is None else f'{pending} {part}'
    if not text.endswith('\\'):
      out.append(' '.join(pending.split()))
      pending = None
  return out


def documented(source: str = 'README.md') -> list[str]:
  """The commands of a markdown file's ```bash blocks (README.md, docs/*.md), or
  of a module's docstring (`source` relative to the repository)."""
  if source.endswith('.md'):
    return commands((ROOT / source).read_text())
  return docstring_commands(source)


def find(piece: str, source: str = 'README.md') -> str:
  """The command of `source` (README.md, or a module's path for its docstring) that
  is `piece`, else the one that contains it."""
  listed = documented(source)
  matches = [c for c in listed if piece == c] or [c for c in listed if piece in c]
  if len(matches) != 1:
    raise LookupError(f'{len(matches)} documented commands contain {piece!r}: {matches}')
  return matches[0]


def scratch(folder: pathlib.Path) -> pathlib.Path:
  """Makes `folder` a user's current folder, a clone's root: it exists and its
  configs/ and experiments/ are the repo's (a folder of its own is kept)."""
  folder.mkdir(parents=True, exist_ok=True)
  for name in ('configs', 'experiments'):
    if not (folder / name).exists():
      (folder / name).symlink_to(ROOT / name)
  return folder


def _installs(words: list[str]) -> bool:
  """Whether a command makes the venv or installs packages (the test command's job)."""
  return words[1:3] == ['-m', 'venv'] or os.path.basename(words[0]) == 'pip' or words[1:3] == [
      '-m', 'pip']


def as_typed(command: str, folder: pathlib.Path, extra: Sequence[str] = (),
             replace: Optional[dict] = None) -> list[tuple[list[str], dict]]:
  """(argv, environment variables) of each part of `command` to run, as typed
  in `folder`. `replace` maps literal texts of the command to others first (a
  port that must be free)."""
  for old, new in (replace or {}).items():
    if old not in command:
      raise LookupError(f'{old!r} is not in {command!r}')
    command = command.replace(old, new)
  parts = []
  for part in command.split(' && '):
    words = shlex.split(part)
    env = {}
    while words and _ENV_WORD.match(words[0]):
      name, _, value = words.pop(0).partition('=')
      env[name] = value
    if _installs(words):
      continue
    words = [w.replace('=/tmp/', f'={folder}/') if '=/tmp/' in w else
             (str(folder) + w[4:] if w.startswith('/tmp/') else w) for w in words]
    if words[0] in INTERPRETERS:  # after the /tmp paths: this interpreter may live there
      words[0] = sys.executable
    parts.append((words + list(extra), env))
  return parts


def start(command: str, folder: pathlib.Path, log: pathlib.Path, extra: Sequence[str] = (),
          env: Optional[dict] = None, replace: Optional[dict] = None) -> subprocess.Popen:
  """Starts the single part of `command` (see as_typed) in the background, its
  output (stdout and stderr) into the file `log`."""
  (argv, typed_env), = as_typed(command, scratch(folder), extra, replace)
  with open(log, 'w') as out:
    return subprocess.Popen(argv, cwd=folder, env={**os.environ, **(env or {}), **typed_env},
                            stdout=out, stderr=subprocess.STDOUT, text=True)


def run(command: str, folder: pathlib.Path, extra: Sequence[str] = (),
        env: Optional[dict] = None, timeout: float = 600) -> str:
  """Runs `command` as typed in `folder`; its output. AssertionError with the
  output's tail when a part exits non-zero."""
  out = []
  for argv, typed_env in as_typed(command, scratch(folder), extra):
    done = subprocess.run(argv, cwd=folder, env={**os.environ, **(env or {}), **typed_env},
                          capture_output=True, text=True, timeout=timeout)
    out.append(done.stdout + done.stderr)
    assert done.returncode == 0, (f'{" ".join(argv)} exited {done.returncode}:\n'
                                  f'{out[-1][-4000:]}')
  return '\n'.join(out)
