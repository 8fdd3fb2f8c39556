"""Faults that used to lose data or hang (issue 25): a checkpoint save that fails mid-run, a corrupt checkpoint
on resume, and a trainer killed with Grain workers running. train.py and the loader run in child processes."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory

import pytest

from zf_jax import checkpoint, input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

# train.py on the smoke config (1 epoch of 4 steps, checkpoints at 2 and 4) where the checkpoints folder turns
# unwritable (a full disk, a read-only remount) after step 2's checkpoint: a folder root cannot write in.
_FAILING_SAVE = textwrap.dedent("""
    import os, sys
    workdir = sys.argv[1]
    sys.argv = ["train.py", "--config=configs/smoke.py", f"--workdir={{workdir}}", "--config.num_epochs=1"]
    sys.path.insert(0, {root!r})
    import train
    from absl import app
    from zf_jax import checkpoint
    save = checkpoint.Manager.save
    def failing_save(self, step, *args, **kwargs):
      if step == 4:
        self.wait()
        folder = checkpoint.checkpoint_dir(workdir)
        os.rename(folder, folder + ".real")
        os.symlink("/sys/kernel/mm", folder)
      return save(self, step, *args, **kwargs)
    checkpoint.Manager.save = failing_save
    app.run(train.main, flags_parser=train.parse_flags)
""")


def _unwritable_folder() -> bool:
  try:
    checkpoint.probe_writable("/sys/kernel/mm")
    return False
  except OSError:
    return os.path.isdir("/sys/kernel/mm")


def _errors(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
@pytest.mark.skipif(not _unwritable_folder(), reason="needs /sys/kernel/mm, a folder that cannot be written")
def test_a_failed_save_ends_in_one_line_and_keeps_the_last_checkpoint_then_a_corrupt_one_too(tmp_path):
  workdir = tmp_path / "run"
  run = subprocess.run([sys.executable, "-c", _FAILING_SAVE.format(root=ROOT), str(workdir)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=500)  # it used to hang until killed
  errors = _errors(run.stderr)
  assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
  assert "saving checkpoint 4" in errors[0] and "the checkpoints of steps [2] are kept" in errors[0], errors[0]
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [2, 4, 4]  # no line lost or repeated

  # The kept checkpoint, its parameters then damaged: resume says so in one line, no asyncio tracebacks after.
  os.remove(workdir / "checkpoints")
  os.rename(str(workdir / "checkpoints") + ".real", workdir / "checkpoints")
  data = workdir / "checkpoints" / "2" / "params" / "ocdbt.process_0" / "d"
  for name in os.listdir(data):
    with open(data / name, "r+b") as f:
      f.truncate(10)
  before = (workdir / "metrics.jsonl").read_text()
  run = subprocess.run([sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
                        "--config.num_epochs=1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  errors = _errors(run.stderr)
  assert run.returncode == 1 and len(errors) == 1, run.stderr[-3000:]
  assert "checkpoints/2" in errors[0] and "corrupt or truncated" in errors[0], errors[0]
  assert "Traceback" not in run.stderr and "Task exception" not in run.stderr, run.stderr[-3000:]
  assert (workdir / "metrics.jsonl").read_text() == before


# A loader with 2 Grain workers reading forever; prints READY with its pid once batches flow.
_LOADER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import grain, ml_collections, numpy as np
    from zf_jax import input_pipeline

    def make(i):
      return {{"x": np.full((64, 64, 3), i % 255, np.uint8)}}

    def main():  # as train_lib: the batches live in a function, closed at its end
      config = ml_collections.ConfigDict(dict(grain_workers=2, grain_read_threads=1, grain_prefetch=2))
      batches = input_pipeline.loader(grain.MapDataset.range(10**6).map(make).batch(4), config)
      for i, batch in enumerate(batches):
        if i == 3:
          print("READY", os.getpid(), flush=True)
        if len(sys.argv) > 1 and i == 20:
          break
        time.sleep(0.05)
      batches.close()

    if __name__ == "__main__":
      main()
""")


def _ours(pid):
  return sorted(e for e in os.listdir(input_pipeline.SHM_FOLDER) if e.startswith(f"{input_pipeline.SHM_PREFIX}{pid}_"))


def _children(pid):
  out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
  return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_a_killed_loader_leaves_no_worker_and_no_shared_memory():
  loader = subprocess.Popen([sys.executable, "-c", _LOADER.format(root=ROOT)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert loader.stdout.readline().startswith("READY"), loader.stderr.read()[-3000:]
    workers = _children(loader.pid)
    assert len(workers) >= 2 and _ours(loader.pid)  # workers (and the resource tracker) hand batches over
  finally:
    loader.send_signal(signal.SIGKILL)
    loader.wait()
  deadline = time.time() + 20
  while time.time() < deadline and ([w for w in workers if os.path.exists(f"/proc/{w}")] or _ours(loader.pid)):
    time.sleep(0.5)
  assert not [w for w in workers if os.path.exists(f"/proc/{w}")], "workers outlived the killed loader"
  assert not _ours(loader.pid)


@pytest.mark.slow
def test_a_clean_run_with_workers_warns_of_no_leak():
  run = subprocess.run([sys.executable, "-c", _LOADER.format(root=ROOT), "stop"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0 and "READY" in run.stdout, run.stderr[-3000:]
  assert "leaked" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
  assert not _ours(int(run.stdout.split()[1]))


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_the_next_start_removes_a_dead_trainers_blocks_only():
  dead = 2**22 + 4321  # above the default pid_max: no process has it
  blocks = [shared_memory.SharedMemory(f"{input_pipeline.SHM_PREFIX}{pid}_test", create=True, size=16)
            for pid in (dead, os.getpid())]
  others = shared_memory.SharedMemory(f"{input_pipeline.SHM_PREFIX}x{dead}_test", create=True, size=16)
  try:
    removed = input_pipeline.release_shared_memory()
    assert f"{input_pipeline.SHM_PREFIX}{dead}_test" in removed and not _ours(dead)
    assert _ours(os.getpid()) == [f"{input_pipeline.SHM_PREFIX}{os.getpid()}_test"]  # a live trainer's: kept
    assert os.path.exists(os.path.join(input_pipeline.SHM_FOLDER, others.name.lstrip("/")))  # no pid: not ours
  finally:
    for block in (*blocks, others):
      block.close()
      try:
        block.unlink()
      except FileNotFoundError:
        pass


# A process killed in the middle of a write (SIGKILL: no finally, no atexit) of the evaluation cache, as
# evaluation.evaluate writes it, or of a figure folder, as visualize.py writes one.
_KILLED_WRITE = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {root!r})
    from zf_jax import evaluation, files
    what, target = sys.argv[1], sys.argv[2]

    def die(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGKILL)
    if what == "cache":
      dump = json.dump
      def half_then_die(obj, f, **kwargs):
        f.write(json.dumps(obj, **kwargs)[:20])
        f.flush()
        die()
      json.dump = half_then_die
      files.save_json({{**evaluation.read_cache(target), "new": {{"top1": 0.5}}}},
                      os.path.join(target, evaluation.CACHE_FILE))
    else:
      with files.staged(target) as stage:
        open(os.path.join(stage, "filters.png"), "w").write("new")
        open(os.path.join(stage, "half.png"), "w").write("ne")
        die()
""")


@pytest.mark.parametrize("what", ["cache", "figures"])
def test_a_kill_in_the_middle_of_a_write_leaves_the_old_file_or_folder_whole(tmp_path, what):
  from zf_jax import evaluation, files
  if what == "cache":
    target = tmp_path / "workdir"
    os.makedirs(target)
    old = {evaluation.cache_key(8, "validation", 10, None): {"top1": 0.25, "top5": 0.5, "num_images": 100}}
    files.save_json(old, str(target / evaluation.CACHE_FILE))
  else:
    target = tmp_path / "figures"
    os.makedirs(target)
    (target / "filters.png").write_text("old")
    (target / "index.html").write_text("old")
  run = subprocess.run([sys.executable, "-c", _KILLED_WRITE.format(root=ROOT), what, str(target)], env=ENV,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
  if what == "cache":
    assert evaluation.read_cache(str(target)) == old  # the old cache, whole: the next evaluation reads it
  else:
    assert sorted(os.listdir(target)) == ["filters.png", "index.html"]
    assert (target / "filters.png").read_text() == "old"
    assert len([name for name in os.listdir(tmp_path) if name.startswith(".figures.tmp-")]) == 1  # the dead stage
    with files.staged(str(target)) as stage:  # the next write removes the killed run's staging folder
      open(os.path.join(stage, "filters.png"), "w").write("new")
    assert sorted(os.listdir(tmp_path)) == ["figures"] and (target / "filters.png").read_text() == "new"


def _small_tmpfs(path) -> bool:
  """Mounts a 450 kB tmpfs at `path` (room for one smoke checkpoint, not two); False where that is not allowed."""
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=450k", "tmpfs", str(path)],
                        capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_naming_the_step_and_the_run_resumes_once_there_is_room(tmp_path):
  disk = tmp_path / "disk"
  if not _small_tmpfs(disk):
    pytest.skip("needs to mount a small tmpfs (root)")
  try:
    workdir = disk / "run"
    command = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}"]
    run = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    errors = _errors(run.stderr)
    assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "failed (No space left on device)" in errors[0], errors[0]
    assert "allowed: a writable checkpoints folder with free space" in errors[0], errors[0]
    kept = checkpoint.list_steps(str(workdir))
    assert kept and f"the checkpoints of steps {kept} are kept" in errors[0], (kept, errors[0])
    assert f"saving checkpoint {kept[-1] + 2} " in errors[0], errors[0]  # the step after the last kept (every 2)
    subprocess.run(["mount", "-o", "remount,size=8M", str(disk)], check=True)
    run = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "val_top1" in r) for r in lines] == [(2, False), (4, False), (4, True), (6, False),
                                                            (8, False), (8, True)]
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)
