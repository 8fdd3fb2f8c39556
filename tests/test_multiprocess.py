"""Multi-process runs on localhost: two processes with `jax.distributed` (CPU, Gloo collectives), one device each.

The path users take on TPU pods and GPU clusters: each process loads only its half of every batch
(training) or its block of the images (top-k scan), and the result equals the one-process run's.
"""
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from zf_jax import checkpoint, data, models, train_lib
from zf_jax.analysis import topk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import smoke  # noqa: E402

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two(command) -> list[str]:
  """Runs command(process_id, coordinator) as processes 0 and 1 at once; their stderr, after both succeed."""
  coordinator = f"127.0.0.1:{_port()}"
  processes = [subprocess.Popen(command(i, coordinator), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    results = [p.communicate(timeout=240) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(processes, results):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in results]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  data.get_dataset("synthetic", "train[:1]", path)
  return path


def test_two_processes_train_like_one(data_dir, tmp_path):
  """train.py --multihost in 2 processes (half of every batch each) ends with the one-process run's params."""
  flags = [f"--config.data_dir={data_dir}", "--config.num_epochs=1", "--config.eval_crops=1"]
  one = str(tmp_path / "one")
  config = smoke.get_config()
  config.update({"data_dir": data_dir, "num_epochs": 1, "eval_crops": 1})
  train_lib.train_and_evaluate(config, one)
  two = str(tmp_path / "two")
  errs = _run_two(lambda i, coordinator: [
      sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={two}", *flags, "--multihost",
      f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"])
  assert "(process 1 of 2)" in errs[1]
  assert checkpoint.list_steps(two) == checkpoint.list_steps(one) == [4]
  for x, y in zip(jax.tree.leaves(checkpoint.load_for_analysis(one).params),
                  jax.tree.leaves(checkpoint.load_for_analysis(two).params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)  # gradients summed across processes: float order


SCAN = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    from zf_jax import models
    from zf_jax.analysis import topk
    arch = models.get_arch("zfnet64")
    params = models.init_params(arch, jax.random.key(0), 10, 0.05, 0.05)
    images = np.random.default_rng(0).normal(0, 60, (22, 56, 56, 3)).astype(np.float32)
    read = []
    class Inputs:  # the images, recording which ones this process reads
      def __len__(self):
        return len(images)
      def __getitem__(self, index):
        read.extend(np.arange(len(images))[index])
        return images[index]
    out = topk.scan(arch, params, Inputs(), ["conv1", "conv5", "fc6"], k=5, batch_size=4)
    np.savez(sys.argv[3], read=np.sort(read),
             **{f"{layer}/{key}": value for layer, top in out.items() for key, value in top.items()})
""")


def test_two_processes_scan_like_one(tmp_path):
  """topk.scan in 2 processes (11 images each; every process gets the merged top-k) equals one process's."""
  _run_two(lambda i, coordinator: [sys.executable, "-c", SCAN, coordinator, str(i), str(tmp_path / f"{i}.npz")])
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), 10, 0.05, 0.05)
  images = np.random.default_rng(0).normal(0, 60, (22, 56, 56, 3)).astype(np.float32)
  want = topk.scan(arch, params, images, ["conv1", "conv5", "fc6"], k=5, batch_size=4)
  for i in range(2):
    with np.load(tmp_path / f"{i}.npz") as got:
      np.testing.assert_array_equal(got["read"], np.arange(11 * i, 11 * (i + 1)))  # its own block, once
      for layer, top in want.items():
        np.testing.assert_array_equal(got[f"{layer}/image"], top["image"])
        np.testing.assert_array_equal(got[f"{layer}/y"], top["y"])
        np.testing.assert_allclose(got[f"{layer}/value"], top["value"], rtol=1e-5)
  winners = np.concatenate([top["image"].ravel() for top in want.values()])
  assert (winners < 11).any() and (winners >= 11).any()  # both processes' blocks hold winners
