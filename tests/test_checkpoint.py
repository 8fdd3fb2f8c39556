"""Checkpoints: arch round trip, save/restore, retention, load_for_analysis from a workdir or .npz."""
import jax
import numpy as np
import optax
import pytest

from zf_jax import checkpoint, models

TINY = models.ablate(models.get_arch("zfnet64"), features={
    "conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4, "conv5": 4, "fc6": 8, "fc7": 8}, name="tiny")


def _state(seed=0):
  params = models.init_params(TINY, jax.random.key(seed), num_classes=5)
  opt_state = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9).init(params)
  return params, opt_state


def _save(manager, step, params, opt_state, steps_per_epoch=2):
  extras = {"mean_image": np.full((64, 64, 3), step, np.float32), "rng": np.arange(2, dtype=np.uint32)}
  meta = {"step": step, "epoch": step / steps_per_epoch, "arch": checkpoint.arch_to_dict(TINY), "num_classes": 5,
          "class_names": list("abcde"), "config": {"seed": 3}}
  manager.save(step, params, opt_state, extras, meta)


@pytest.mark.parametrize("name", ["zfnet", "alexnet64", "zfnet-no-conv34-fc67", "zfnet64-wide-conv345"])
def test_arch_round_trip(name):
  arch = models.get_arch(name)
  assert checkpoint.arch_from_dict(checkpoint.arch_to_dict(arch)) == arch


def test_save_restore_and_retention(tmp_path):
  params, opt_state = _state()
  manager = checkpoint.Manager(str(tmp_path), keep_steps=[2])
  for step in range(1, 6):
    _save(manager, step, jax.tree.map(lambda x, step=step: x + step, params), opt_state)
  manager.wait()
  assert checkpoint.list_steps(str(tmp_path)) == [2, 5]
  assert checkpoint.epochs_by_step(str(tmp_path)) == {2: 1.0, 5: 2.5}
  restored, restored_opt, extras, meta = manager.restore(2, params, opt_state)
  np.testing.assert_array_equal(restored["conv1"]["kernel"], params["conv1"]["kernel"] + 2)
  assert jax.tree.structure(restored_opt) == jax.tree.structure(opt_state)
  assert extras["mean_image"][0, 0, 0] == 2 and meta["config"] == {"seed": 3}
  manager.close()


def test_load_for_analysis_workdir_and_npz(tmp_path):
  params, opt_state = _state()
  manager = checkpoint.Manager(str(tmp_path / "run"), keep_steps=[2, 4])
  for step in (2, 4):
    _save(manager, step, jax.tree.map(lambda x, step=step: x * step, params), opt_state)
  manager.close()
  latest = checkpoint.load_for_analysis(str(tmp_path / "run"))
  first = checkpoint.load_for_analysis(str(tmp_path / "run"), epoch=1)
  assert (latest.step, first.step, latest.epoch) == (4, 2, 2.0)
  assert latest.arch == TINY and latest.num_classes == 5 and latest.class_names == list("abcde")
  np.testing.assert_array_equal(first.params["fc8"]["kernel"], params["fc8"]["kernel"] * 2)
  assert latest.mean_image.shape == (64, 64, 3) and latest.mean_image[0, 0, 0] == 4
  logits, _ = models.forward(latest.arch, latest.params, np.zeros((1, 56, 56, 3), np.float32))
  assert logits.shape == (1, 5)

  checkpoint.save_params_npz(str(tmp_path / "model.npz"), latest)
  again = checkpoint.load_for_analysis(str(tmp_path / "model.npz"))
  assert again.arch == TINY and again.step == 4 and again.class_names == list("abcde")
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(latest.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(again.mean_image, latest.mean_image)


def test_load_errors(tmp_path):
  with pytest.raises(ValueError, match="holds no checkpoints"):
    checkpoint.load_for_analysis(str(tmp_path))
  params, opt_state = _state()
  manager = checkpoint.Manager(str(tmp_path))
  _save(manager, 2, params, opt_state)
  manager.close()
  with pytest.raises(ValueError, match="step=3 has no checkpoint"):
    checkpoint.load_for_analysis(str(tmp_path), step=3)
  with pytest.raises(ValueError, match="epoch=7 has no checkpoint"):
    checkpoint.load_for_analysis(str(tmp_path), epoch=7)
  with pytest.raises(ValueError, match="must end in .npz"):
    checkpoint.save_params_npz(str(tmp_path / "model.bin"), checkpoint.load_for_analysis(str(tmp_path)))
