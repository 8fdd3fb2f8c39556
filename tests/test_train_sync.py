"""The training loop waits for the device only to log, evaluate and save (issue 11: "no host sync per step").

`jax.transfer_guard` reports nothing on CPU (its buffers need no transfer), and numpy reads CPU arrays
through the buffer protocol, past any Python hook, so counting conversions misses `np.asarray(loss)` and
`loss.item()`. The test watches the effect instead: every step is made slow on the device (a loop of
matmuls into an extra metric that nothing reads), and each call of the jitted step records whether the
parameters it receives, the previous step's outputs, are already computed. A loop that never waits
dispatches the next step while the device is still busy: its params are not ready yet. A loop that reads
anything from the device each step (`float(loss)`, `.item()`, `np.asarray`, `block_until_ready`, ...)
finds them ready every time (checked by hand with `float(batch_metrics["loss"])` added to the loop).
"""
import functools

import jax
import jax.numpy as jnp
import pytest
from PIL import Image

from configs import smoke
from zf_jax import data, train_lib

_train_step = train_lib.train_step


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """64 training and 16 validation images of the "synthetic" shapes as an ImageFolder (no TFDS preparation)."""
  root = tmp_path_factory.mktemp("images")
  for split, count in (("train", 64), ("validation", 16)):
    for index in range(count):
      image, label = data.synthetic.draw(0, split, index)
      folder = root / split / data.synthetic.CLASS_NAMES[label]
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(folder / f"{index}.png")
  return str(root)


def _slow_train_step(*args, **kwargs):
  """train_step, then ~0.3 s of matmuls (the loop's own work per step is ~1 ms) into a metric the loop ignores."""
  params, opt_state, metrics = _train_step(*args, **kwargs)
  a = jnp.full((256, 256), 1e-3, jnp.float32) + metrics["loss"] * 0
  work = jax.lax.fori_loop(0, 300, lambda _, x: jnp.tanh(x @ a), a)
  return params, opt_state, {**metrics, "device_work": work[0, 0]}


def _steps_finding_params_ready(monkeypatch, config, workdir: str) -> list[int]:
  """Trains `config` with `_slow_train_step`; returns the steps whose call found the params already computed."""
  ready, real_jit = [], jax.jit

  def jit(fun, *args, **kwargs):
    compiled = real_jit(fun, *args, **kwargs)
    if not (isinstance(fun, functools.partial) and fun.func is _slow_train_step):
      return compiled

    def call(params, opt_state, images, labels, step, key):
      if all(leaf.is_ready() for leaf in jax.tree.leaves(params)):
        ready.append(int(step))
      return compiled(params, opt_state, images, labels, step, key)
    return call

  monkeypatch.setattr(train_lib, "train_step", _slow_train_step)
  monkeypatch.setattr(jax, "jit", jit)
  train_lib.train_and_evaluate(config, workdir)
  return ready


def test_training_loop_waits_for_the_device_only_to_log_evaluate_and_save(image_folder, tmp_path, monkeypatch):
  config = smoke.get_config()
  config.update({"dataset": image_folder, "train_split": "train", "val_split": "validation", "batch_size": 8,
                 "num_epochs": 2, "log_every_steps": 4, "checkpoint_every_steps": 6})
  ready = _steps_finding_params_ready(monkeypatch, config, str(tmp_path / "run"))
  # Steps 0..15, 8 per epoch. The loop fetches from the device after 4, 8, 12 and 16 steps (logs; 8 and 16 also
  # evaluate) and after 6 and 12 (checkpoints): steps 4, 6, 8 and 12 find their params ready, which shows that
  # the check sees a sync where there is one; every other step but the first must not.
  assert sorted(ready) == [0, 4, 6, 8, 12], f"steps that found the previous step already finished: {ready}"
