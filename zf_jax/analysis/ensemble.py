"""Table 2: an ensemble of convnets, its softmax outputs averaged.

Each member's class probabilities are the softmax averaged over the 10 crops of every validation
image (section 3); the ensemble's are the mean of its members'. Top-1/top-5 accuracy of every
member, of the whole ensemble, and of the ensembles of the first k members (k = 1..M, the paper's
"1 convnet / 5 convnets / 6 convnets" rows when the workdirs are given base seeds first). All
members are evaluated on the validation split of the first member's dataset; they must share its
classes (count and names). A run record folder (`zf_jax.run_record`) stands for a member with the
10-crop softmax it stored (float16), which must be of the same validation images in the same order.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zf_jax import checkpoint, evaluation, files, run_record
from zf_jax.analysis import common

Member = checkpoint.Loaded | run_record.Record  # a model, or the stored evaluations of one

# Table 2 of the paper (arXiv v3): (row, number of nets, val top-1 error %, val top-5 error %).
PAPER = (("1 convnet (Fig. 3 model)", 1, 38.4, 16.5),
         ("5 convnets", 5, 36.7, 15.3),
         ("6 convnets, one with layers 3,4,5 of 512,1024,512 maps", 6, 36.0, 14.7))


def check_compatible(names: Sequence[str], members: Sequence[Member]) -> None:
  """Raises ValueError unless every member has the first member's classes (count and names)."""
  first = members[0]
  for name, member in zip(names[1:], members[1:]):
    if member.num_classes != first.num_classes:
      raise ValueError(f"{name!r} has {member.num_classes} classes and {names[0]!r} {first.num_classes}; "
                       "an ensemble's members must share their classes")
    if first.class_names and member.class_names and list(member.class_names) != list(first.class_names):
      raise ValueError(f"{name!r} and {names[0]!r} have different class names; an ensemble's members must share "
                       "their classes (the same dataset)")


def check_distinct_paths(workdirs: Sequence[str]) -> None:
  """Raises ValueError if two of the workdirs are one folder or file (after resolving links and `..`)."""
  seen: dict[str, str] = {}
  for w in workdirs:
    real = os.path.realpath(w)
    if real in seen:
      raise ValueError(f"workdirs={','.join(workdirs)} names {real} twice ({seen[real]!r} and {w!r}); an ensemble "
                       "counts each model once; allowed: distinct models")
    seen[real] = w


def _digest(member: Member) -> str:
  return member.params_sha256 if isinstance(member, run_record.Record) else run_record.params_digest(member.params)


def check_distinct_params(names: Sequence[str], members: Sequence[Member]) -> None:
  """Raises ValueError if two members have the same parameters (a copy of one model under two names)."""
  seen: dict[str, str] = {}
  for name, member in zip(names, members):
    digest = _digest(member)
    if digest in seen:
      raise ValueError(f"{seen[digest]!r} and {name!r} hold the same parameters (one model twice); an ensemble "
                       "counts each model once; allowed: distinct models")
    seen[digest] = name


def _load(path: str, epoch: float | None, num_crops: int) -> Member:
  """A record folder's Record (its epoch must be `epoch` or None; its crops `num_crops`), or a workdir's
  checkpoint at `epoch` (default the latest), or a .npz's model."""
  if run_record.is_record(path):
    if num_crops != run_record.VAL_CROPS:
      raise ValueError(f"num_crops={num_crops} is not allowed with the run record {path!r}, which holds the "
                       f"{run_record.VAL_CROPS}-crop softmax; allowed: {run_record.VAL_CROPS}")
    return run_record.get(path, epoch)
  return checkpoint.load_for_analysis(path, epoch=None if path.endswith(".npz") else epoch)


def compute(workdirs: Sequence[str], epoch: float | None = None, num_crops: int = 10, max_images: int | None = None,
            batch_size: int = 128, data_dir: str | None = None) -> dict[str, Any]:
  """The ensemble of the workdirs' checkpoints on the first one's validation split.

  Args:
    workdirs: M training workdirs (or .npz params files, or run record folders of `zf_jax.run_record`,
      whose stored softmax is used) of models over the same classes, evaluated on the same images.
    epoch: each workdir's checkpoint at this epoch (default: the latest).
    num_crops: 10 (the paper) or 1.
    max_images: this many validation images, evenly spaced through the split (default: all).
    batch_size: images per jitted call.
    data_dir: where the TFDS dataset is prepared (default: the first checkpoint's).

  Returns:
    {"workdirs", "arch": [M] str; "epoch": float64 [M];
     "member_top1", "member_top5": float64 [M] each member alone;
     "cumulative_top1", "cumulative_top5": float64 [M], the ensemble of the first k members (k = 1..M);
     "top1", "top5": the whole ensemble's (= cumulative[-1]);
     "probabilities": float32 [N, C] the ensemble's; "labels": int32 [N]; "num_crops"}.
  """
  if not workdirs:
    raise ValueError("workdirs is empty; give at least one training workdir")
  check_distinct_paths(workdirs)
  members = [_load(w, epoch, num_crops) for w in workdirs]
  check_compatible(workdirs, members)
  check_distinct_params(workdirs, members)
  source = None
  total, first_labels = None, None
  out = {key: [] for key in ("member_top1", "member_top5", "cumulative_top1", "cumulative_top5")}
  for k, (path, member) in enumerate(zip(workdirs, members), 1):
    if isinstance(member, run_record.Record):
      probs, labels = run_record.read_probabilities(path, member)
      keep = evaluation.spaced_indices(len(labels), max_images)
      probs, labels = probs[keep], labels[keep]
    else:
      if source is None:
        source = evaluation.evenly_spaced(evaluation.split_source(member, "val", data_dir), max_images)
      probs, labels = evaluation.probabilities(member, source, num_crops, batch_size)
    if first_labels is None:
      first_labels = labels
    elif not np.array_equal(labels, first_labels):
      raise ValueError(f"{path!r} was evaluated on other validation images than {workdirs[0]!r} ({len(labels)} "
                       f"against {len(first_labels)}, or another order); allowed: models of one dataset's val split")
    total = probs.astype(np.float64) if total is None else total + probs
    for top in (1, 5):
      out[f"member_top{top}"].append(evaluation.topk_accuracy(probs, labels, top))
      out[f"cumulative_top{top}"].append(evaluation.topk_accuracy(total / k, labels, top))
  result = {key: np.array(values, np.float64) for key, values in out.items()}
  return {"workdirs": list(workdirs), "arch": [m.arch.name for m in members],
          "epoch": np.array([m.epoch for m in members], np.float64), **result,
          "top1": float(result["cumulative_top1"][-1]), "top5": float(result["cumulative_top5"][-1]),
          "probabilities": (total / len(members)).astype(np.float32), "labels": first_labels, "num_crops": num_crops}


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
  """Members, the ensembles of the first k members (each beside the mean error of those k nets alone) and the
  whole one (accuracies and errors in %), beside the paper's Table 2 rows."""
  members = [{"workdir": files.portable_path(w), "arch": a, "epoch": float(e), "val_top1": float(t1),
              "val_top5": float(t5),
              "val_top1_error": 100 * (1 - float(t1)), "val_top5_error": 100 * (1 - float(t5))}
             for w, a, e, t1, t5 in zip(result["workdirs"], result["arch"], result["epoch"], result["member_top1"],
                                        result["member_top5"])]
  cumulative = [{"members": k + 1, "val_top1": float(t1), "val_top5": float(t5),
                 "val_top1_error": 100 * (1 - float(t1)), "val_top5_error": 100 * (1 - float(t5)),
                 **{f"single_mean_val_top{top}_error":
                    float(np.mean([m[f"val_top{top}_error"] for m in members[:k + 1]])) for top in (1, 5)}}
                for k, (t1, t5) in enumerate(zip(result["cumulative_top1"], result["cumulative_top5"]))]
  return {"table": "Table 2", "num_images": int(len(result["labels"])), "num_crops": int(result["num_crops"]),
          "members": members, "first_k": cumulative,
          "ensemble": {"members": len(members), "val_top1": result["top1"], "val_top5": result["top5"],
                       "val_top1_error": 100 * (1 - result["top1"]), "val_top5_error": 100 * (1 - result["top5"])},
          "paper": [{"row": row, "members": m, "val_top1_error": e1, "val_top5_error": e5} for row, m, e1, e5 in PAPER]}


def plot(result: Mapping[str, Any], path: str) -> None:
  """Val error of each member and of the ensemble of the first k members, with the paper's Table 2 points."""
  import matplotlib.pyplot as plt
  s = summary(result)
  m = len(s["members"])
  k = np.arange(1, m + 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * m + 3), 4.5))
  for top, color in ((1, "tab:blue"), (5, "tab:cyan")):
    ax.plot(k, [c[f"val_top{top}_error"] for c in s["first_k"]], "-o", color=color,
            label=f"ensemble of the first k, top-{top}")
    ax.scatter(k, [c[f"val_top{top}_error"] for c in s["members"]], marker="x", color=color,
               label=f"member k alone, top-{top}")
    ax.scatter([p["members"] for p in s["paper"]], [p[f"val_top{top}_error"] for p in s["paper"]], marker="s",
               facecolors="none", edgecolors="tab:orange" if top == 1 else "goldenrod", label=f"paper, top-{top}")
  ax.set_xticks(np.arange(1, max(m, PAPER[-1][1]) + 1))
  ax.set_xlabel("k (members, in the order given)")
  ax.set_ylabel(f"val error % ({s['num_crops']} crops, {s['num_images']} images)")
  ax.set_title(f"Table 2: ensemble of {m}: top-1 {s['ensemble']['val_top1_error']:.1f} %, "
               f"top-5 {s['ensemble']['val_top5_error']:.1f} % error", fontsize=10)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  files.save_figure(fig, path)


def run(workdirs: Sequence[str], options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py ensemble`: Table 2 from `workdirs`, written into `out`."""
  result = compute(workdirs, options["epoch"], batch_size=options["batch_size"], data_dir=options["data_dir"])
  return common.write_section(
      summary(result), {"ensemble.png": functools.partial(plot, result)}, out, "ensemble", "Table 2: ensemble",
      f"The 10-crop softmax averaged over {len(workdirs)} models: each member's val error and that of the ensemble "
      "of the first k members, beside the paper's 1, 5 and 6 convnets (ImageNet, %).")
