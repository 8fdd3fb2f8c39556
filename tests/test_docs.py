"""The README and docs/ stay true: every fenced `python visualize.py ...` / `python train.py ...` command
names a real subcommand, real flags and real config keys; the README fits on a screen and links every
page of docs/; no committed text names one machine's absolute paths."""
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import visualize  # noqa: E402
from zf_jax import analysis  # noqa: E402

PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))),
         os.path.join(ROOT, "bench", "RESULTS.md")]
TRAIN_FLAGS = {"workdir", "config", "multihost", "coordinator_address", "num_processes", "process_id"}


def _commands(path: str) -> list[str]:
  """The `python visualize.py|train.py ...` commands in a page's fenced blocks (continuation lines joined)."""
  text = open(path).read()
  commands = []
  for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      match = re.search(r"python (visualize\.py|train\.py)(\s.*)?$", line)
      if match:
        commands.append(match.group(0).rstrip("\"'"))  # a command quoted inside another one (ssh --command="...")
  return commands


COMMANDS = [(os.path.relpath(page, ROOT), command) for page in PAGES for command in _commands(page)]


def _config(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("doc_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _check_flag(config: ml_collections.ConfigDict, key: str) -> None:
  node = config
  for part in key.split("."):
    assert part in node, f"--config.{key}: {part!r} is not a key of the config"
    node = node[part]


def test_the_pages_hold_commands():
  assert len(COMMANDS) >= 20 and any(page == "README.md" for page, _ in COMMANDS)


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_documented_command_parses(page, command):
  words = [w for w in shlex.split(command, posix=True) if not w.startswith("[") and not w.endswith("]")]
  script, args = words[1], words[2:]
  flags_given = [a[2:].split("=")[0] for a in args if a.startswith("--")]
  if script == "visualize.py":
    positional = [a for a in args if not a.startswith("-")]
    allowed = {*analysis.COMMANDS, *analysis.MULTI_COMMANDS, "all", "serve"}
    assert positional and positional[0] in allowed, f"{page}: unknown subcommand in {command!r}"
    for flag in flags_given:
      assert flag in visualize.flags.FLAGS, f"{page}: --{flag} is not a visualize.py flag ({command!r})"
    return
  config_arg = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  assert config_arg, f"{page}: train.py without --config ({command!r})"
  config = _config(config_arg)
  for flag in flags_given:
    if flag.startswith("config."):
      _check_flag(config, flag[len("config."):])
    else:
      assert flag in TRAIN_FLAGS, f"{page}: --{flag} is not a train.py flag ({command!r})"


def test_the_readme_fits_on_a_screen_and_reaches_every_page():
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert len(readme.splitlines()) <= 150
  for page in glob.glob(os.path.join(ROOT, "docs", "*.md")):
    assert f"docs/{os.path.basename(page)}" in readme, f"README.md does not link docs/{os.path.basename(page)}"


def test_no_committed_text_names_a_machine_path():
  tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
  if not tracked:
    pytest.skip("not a git checkout")
  pattern = re.compile(r"(?<![\w.~])/(root|home/\w+|work)/")
  offenders = []
  for name in tracked:
    if not name.endswith((".md", ".json", ".jsonl", ".html", ".py", ".sh", ".cfg", ".toml")):
      continue
    with open(os.path.join(ROOT, name), errors="replace") as f:
      if pattern.search(f.read()):
        offenders.append(name)
  assert not offenders, f"absolute machine paths in {offenders}"
