"""Table 3 (section 5.1): architecture ablations, each variant trained with the same recipe.

For every trained workdir (a row): its architecture and how it differs from the first workdir's
(the base row), the parameter count, the epoch of the evaluated checkpoint, the train top-1 error
(the training split's center crops, no augmentation, no dropout: the paper's "train error"), the
validation top-1/top-5 (10 crops, section 3), and what the run's own metrics.jsonl recorded at that
step (with the run's eval_crops, often the center crop only). Evaluations are cached per
(step, split, crops, images) in each workdir (`zf_jax.evaluation`), so rebuilding the table is cheap.

Runs of one variant that differ only in their seed are grouped (`variants`): per variant the mean,
standard deviation and range of each error over its seeds, and each variant's difference from the
base variant judged against the seed noise by Welch's two-sided t-test (unequal variances; scipy)
where both have at least two seeds.

The paper's rows (val error %, arXiv v3), matched to a row by architecture name (the 64-px models
take the row of their full-size counterpart; an ablation the paper ran only on Krizhevsky's model,
e.g. removing conv3,4, takes that row and says so). Runs without feature scale clipping get no
paper row (the paper gives no number for them).
"""
from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zf_jax import files, metrics, models, run_record
from zf_jax.analysis import common

SIGNIFICANCE = 0.05  # a difference is beyond the seed noise when Welch's t-test gives p below this

# Table 3 of the paper: arch name -> (row, val top-1 error %, val top-5 error %).
PAPER = {
    "zfnet": ("Our model (Fig. 3)", 38.4, 16.5),
    "zfnet-fc-half": ("Fig. 3 model, layers 6,7: 2048 units", 40.2, 17.6),
    "zfnet-fc-double": ("Fig. 3 model, layers 6,7: 8192 units", 38.8, 17.0),
    "zfnet-wide-conv345": ("Fig. 3 model, layers 3,4,5: 512,1024,512 maps", 37.5, 16.0),
    "zfnet-wide-conv345-fc-double": ("Fig. 3 model, 8192 units and 512,1024,512 maps", 38.3, 16.9),
    "alexnet": ("Our replication of Krizhevsky et al.", 40.5, 18.1),
    "alexnet-no-conv34": ("Krizhevsky et al., removed layers 3,4", 45.4, 22.1),
    "alexnet-no-fc7": ("Krizhevsky et al., removed layer 7", 40.0, 18.4),
    "alexnet-no-fc67": ("Krizhevsky et al., removed layers 6,7", 44.8, 22.4),
    "alexnet-no-conv34-fc67": ("Krizhevsky et al., removed layers 3,4,6,7", 71.3, 50.1),
}
PAPER_CLIPPING = 0.1  # the paper's recipe clips filters at RMS 0.1 (section 3)
# Config keys that change what a run learns; a row's change lists those that differ from the base.
RECIPE_KEYS = ("dataset", "train_split", "image_size", "batch_size", "learning_rate", "momentum", "weight_decay",
               "weight_std", "bias_init", "filter_rms_radius", "plateau_patience", "plateau_factor",
               "plateau_min_delta", "min_learning_rate", "eval_crops", "seed")


def _hidden(arch: models.Arch) -> dict[str, models.Conv | models.Dense]:
  """The conv and fc layers of `arch` except the classifier, by name."""
  return {layer.name: layer for layer in arch.layers[:-1] if isinstance(layer, (models.Conv, models.Dense))}


def _widths(changes: list[tuple[str, int, int]]) -> str:
  names = ",".join(name for name, _, _ in changes)
  old, new = {o for _, o, _ in changes}, {n for _, _, n in changes}
  if len(old) == 1 and len(new) == 1:
    return f"{names} {old.pop()}→{new.pop()}"
  return f"{names} {'/'.join(str(o) for _, o, _ in changes)}→{'/'.join(str(n) for _, _, n in changes)}"


def describe_change(base: models.Arch, arch: models.Arch, base_config: Mapping[str, Any] | None = None,
                    config: Mapping[str, Any] | None = None) -> str:
  """How `arch` (trained with `config`) differs from `base` (with `base_config`), as Table 3 words it.

  E.g. "removed conv3,conv4", "fc6,fc7 512→1024", "conv3,conv4,conv5 192/192/128→256/512/256",
  "conv1 7×7/2→11×11/4", "seed 0→1", "filter_rms_radius 0.1→0"; "none" if nothing differs. Only the
  hidden conv/fc layers (widths, kernels, strides) and the config's `RECIPE_KEYS` are compared.
  """
  old, new = _hidden(base), _hidden(arch)
  parts = []
  removed, added = [n for n in old if n not in new], [n for n in new if n not in old]
  if removed:
    parts.append("removed " + ",".join(removed))
  if added:
    parts.append("added " + ",".join(f"{n} ({new[n].features})" for n in added))
  common_layers = [n for n in new if n in old]
  for kind in (models.Conv, models.Dense):
    changes = [(n, old[n].features, new[n].features) for n in common_layers
               if isinstance(new[n], kind) and old[n].features != new[n].features]
    if changes:
      parts.append(_widths(changes))
  for n in common_layers:
    a, b = old[n], new[n]
    if isinstance(a, models.Conv) and isinstance(b, models.Conv) and (a.kernel, a.stride) != (b.kernel, b.stride):
      parts.append(f"{n} {a.kernel}×{a.kernel}/{a.stride}→{b.kernel}×{b.kernel}/{b.stride}")
  base_config, config = base_config or {}, config or {}
  for key in RECIPE_KEYS:
    if base_config.get(key) != config.get(key):
      parts.append(f"{key} {base_config.get(key)}→{config.get(key)}")
  return ", ".join(parts) or "none"


def paper_row(arch_name: str, config: Mapping[str, Any] | None = None) -> tuple[str, float, float] | None:
  """The paper's Table 3 row for an architecture name (64-px names map to their full-size models), or None."""
  config = config or {}
  if config.get("filter_rms_radius", PAPER_CLIPPING) != PAPER_CLIPPING:
    return None
  name = arch_name.replace("zfnet64", "zfnet").replace("alexnet64", "alexnet")
  if name in PAPER:
    return PAPER[name]
  ablation = name.split("-", 1)[1] if "-" in name else None
  return PAPER.get(f"alexnet-{ablation}") if name.startswith("zfnet-") else None


def compute(workdirs: Sequence[str], epoch: float | None = None, train_images: int | None = None,
            batch_size: int = 128, data_dir: str | None = None, use_cache: bool = True) -> dict[str, Any]:
  """Table 3 from trained workdirs; the first is the base the changes are described against.

  Args:
    workdirs: V training workdirs (one variant each), or run record folders (`zf_jax.run_record`:
      the same evaluations, kept after the checkpoints are gone).
    epoch: evaluate each workdir's checkpoint at this epoch (default: each one's latest), e.g. 10
      to take a longer run at the common budget.
    train_images: the train error over this many training images evenly spaced through the split
      (default: all).
    batch_size: images per jitted evaluation call.
    data_dir: where the TFDS datasets are prepared (default: each checkpoint's).
    use_cache: read and write each workdir's evaluations.json.

  Returns:
    {"workdirs", "arch", "change", "paper_row": [V] str ("" where the paper has none);
     "variant": [V] str, the change without the seed ("(base)" for the base's other seeds);
     "num_params", "step", "seed": int64 [V]; "epoch": float64 [V];
     "train_top1", "val_top1", "val_top5": float64 [V] accuracies (val: 10 crops; train: center crop);
     "train_images": int64 [V], "val_images": int64 [V];
     "metrics_val_top1", "metrics_val_top5": float64 [V] (NaN where the run logged none), "metrics_crops",
     "metrics_step": int64 [V] (0 where none);
     "paper_val_top1_error", "paper_val_top5_error": float64 [V] in % (NaN where none)}.
  """
  if not workdirs:
    raise ValueError("workdirs is empty; give at least one training workdir")
  records = [run_record.get(w, epoch, train_images, batch_size, data_dir, use_cache) for w in workdirs]
  base = records[0]
  rows = []
  for workdir, record in zip(workdirs, records):
    logged = metrics.validation_at(workdir, record.step)
    paper = paper_row(record.arch.name, record.config)
    unseeded = {**record.config, "seed": base.config.get("seed")}
    rows.append({
        "workdirs": workdir, "arch": record.arch.name,
        "change": describe_change(base.arch, record.arch, base.config, record.config),
        "variant": describe_change(base.arch, record.arch, base.config, unseeded),
        "seed": int(record.config.get("seed", 0)),
        "paper_row": paper[0] if paper else "", "num_params": record.num_params, "step": record.step,
        "epoch": record.epoch, "train_top1": record.train["top1"], "val_top1": record.val["top1"],
        "val_top5": record.val["top5"], "train_images": record.train["num_images"],
        "val_images": record.val["num_images"],
        "metrics_val_top1": logged.get("val_top1", np.nan), "metrics_val_top5": logged.get("val_top5", np.nan),
        "metrics_crops": int(record.config.get("eval_crops", 10)), "metrics_step": int(logged.get("step", 0)),
        "paper_val_top1_error": paper[1] if paper else np.nan, "paper_val_top5_error": paper[2] if paper else np.nan})
  rows[0]["change"] = "(base)"
  for row in rows:
    row["variant"] = "(base)" if row["variant"] == "none" else row["variant"]
  strings = ("workdirs", "arch", "change", "variant", "paper_row")
  ints = ("num_params", "step", "seed", "train_images", "val_images", "metrics_crops", "metrics_step")
  return {key: [r[key] for r in rows] if key in strings else
          np.array([r[key] for r in rows], np.int64 if key in ints else np.float64) for key in rows[0]}


def _error(accuracy: float) -> float:
  return 100.0 * (1.0 - float(accuracy))


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
  """Per row: ours (accuracies and errors in %) beside the paper's val errors (%)."""
  rows = []
  for i, workdir in enumerate(result["workdirs"]):
    has_paper = bool(result["paper_row"][i])
    logged = not np.isnan(result["metrics_val_top1"][i])
    rows.append({
        "workdir": files.portable_path(workdir), "arch": result["arch"][i], "change": result["change"][i],
        "num_params": int(result["num_params"][i]), "step": int(result["step"][i]), "epoch": float(result["epoch"][i]),
        "train_top1": float(result["train_top1"][i]), "val_top1": float(result["val_top1"][i]),
        "val_top5": float(result["val_top5"][i]),
        "train_top1_error": _error(result["train_top1"][i]), "val_top1_error": _error(result["val_top1"][i]),
        "val_top5_error": _error(result["val_top5"][i]),
        "train_images": int(result["train_images"][i]), "val_images": int(result["val_images"][i]),
        "metrics": {"val_top1": float(result["metrics_val_top1"][i]), "val_top5": float(result["metrics_val_top5"][i]),
                    "crops": int(result["metrics_crops"][i]), "step": int(result["metrics_step"][i])}
                   if logged else None,
        "paper": {"row": result["paper_row"][i], "val_top1_error": float(result["paper_val_top1_error"][i]),
                  "val_top5_error": float(result["paper_val_top5_error"][i])} if has_paper else None})
  return {"table": "Table 3 (section 5.1)", "protocol": "val: 10 crops (corners + center, mirrored), softmax "
          "averaged; train: center crop of each training image, no augmentation; errors in %", "rows": rows,
          "variants": variants(result)}


ERRORS = ("val_top1_error", "val_top5_error", "train_top1_error")


def variants(result: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The rows grouped by variant (runs that differ only in their seed), in order of first appearance.

  Per variant: its arch, change, seeds, epochs, and per error of `ERRORS` (in %) the mean, the
  standard deviation over seeds (ddof=1; 0 for one seed) and the min and max. Each variant but the
  base also gets "vs_base" per error: the difference of means (variant - base, points), the pooled
  standard deviation of the two groups, and, where both have >= 2 seeds, Welch's t, its two-sided p
  and whether the difference is beyond the seed noise (p < SIGNIFICANCE); else those are None. A variant
  with >= 2 seeds also gets "vs_variants": {earlier variant: the same per error}, one entry per earlier
  variant other than the base that also has >= 2 seeds (e.g. the 4-layer net against no-fc67), if any.
  """
  errors = {key: np.array([_error(a) for a in result[key.removesuffix("_error")]]) for key in ERRORS}
  order = list(dict.fromkeys(result["variant"]))
  groups = {v: [i for i, name in enumerate(result["variant"]) if name == v] for v in order}
  base = groups[result["variant"][0]]
  out = []
  for name, members in groups.items():
    entry = {"variant": name, "arch": result["arch"][members[0]], "n": len(members),
             "seeds": [int(result["seed"][i]) for i in members], "epochs": [float(result["epoch"][i]) for i in members]}
    for key in ERRORS:
      values = errors[key][members]
      entry[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "min": float(values.min()), "max": float(values.max())}
    if members is not base:
      entry["vs_base"] = {key: _compare(errors[key][members], errors[key][base]) for key in ERRORS}
      earlier = [other for other in order[1:order.index(name)] if len(groups[other]) > 1]
      if len(members) > 1 and earlier:
        entry["vs_variants"] = {other: {key: _compare(errors[key][members], errors[key][groups[other]])
                                        for key in ERRORS} for other in earlier}
    out.append(entry)
  return out


def _compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
  """Errors `a` [n_a] against `b` [n_b] (%, one per seed): the difference of means (points), the pooled std and,
  where both have >= 2 seeds and some spread, Welch's t, its two-sided p and whether p < SIGNIFICANCE."""
  from scipy import stats
  both_seeded = min(len(a), len(b)) > 1
  pooled = float(np.sqrt((np.var(a, ddof=1) * (len(a) - 1) + np.var(b, ddof=1) * (len(b) - 1))
                         / (len(a) + len(b) - 2))) if both_seeded else None
  test = stats.ttest_ind(a, b, equal_var=False) if both_seeded else None
  if test is not None and not np.isfinite(test.pvalue):  # no spread in either group: no test
    test = None
  return {"difference": float(a.mean() - b.mean()), "pooled_std": pooled,
          "welch_t": float(test.statistic) if test else None, "p_value": float(test.pvalue) if test else None,
          "beyond_seed_noise": bool(test.pvalue < SIGNIFICANCE) if test else None}


def plot(result: Mapping[str, Any], path: str) -> None:
  """Table 3 as a figure: val top-1/top-5 and train top-1 error per row beside the paper's, and the table."""
  import matplotlib.pyplot as plt
  s = summary(result)
  rows = s["rows"]
  n = len(rows)
  fig, (bars, table) = plt.subplots(2, 1, figsize=(max(9.0, 1.6 * n + 4), 5.0 + 0.25 * n),
                                    gridspec_kw={"height_ratios": [3, 0.4 + 0.25 * n]})
  x = np.arange(n)
  series = [("train top-1", [r["train_top1_error"] for r in rows], "tab:gray"),
            ("val top-1", [r["val_top1_error"] for r in rows], "tab:blue"),
            ("val top-5", [r["val_top5_error"] for r in rows], "tab:cyan"),
            ("paper val top-1", [r["paper"]["val_top1_error"] if r["paper"] else np.nan for r in rows], "tab:orange"),
            ("paper val top-5", [r["paper"]["val_top5_error"] if r["paper"] else np.nan for r in rows], "moccasin")]
  width = 0.8 / len(series)
  for j, (label, values, color) in enumerate(series):
    bars.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=label, color=color)
  bars.set_xticks(x, [f"{r['arch']}\n" + "\n".join(textwrap.wrap(r["change"], 24)) for r in rows], fontsize=7)
  bars.set_ylabel("error %")
  bars.set_title("Table 3: ablations (ours: 10-crop val, center-crop train; paper: ImageNet val)", fontsize=10)
  bars.set_ylim(0, 118)
  bars.legend(fontsize=7, ncol=len(series), loc="upper center")
  bars.grid(axis="y", alpha=0.3)
  cells = [[r["arch"], r["change"], f"{r['num_params']:,}", f"{r['epoch']:g}", f"{r['train_top1_error']:.1f}",
            f"{r['val_top1_error']:.1f}", f"{r['val_top5_error']:.1f}",
            f"{_error(r['metrics']['val_top1']):.1f} ({r['metrics']['crops']})" if r["metrics"] else "-",
            f"{r['paper']['val_top1_error']:.1f} / {r['paper']['val_top5_error']:.1f}" if r["paper"] else "-",
            r["paper"]["row"] if r["paper"] else ""] for r in rows]
  columns = ["arch", "change", "params", "epoch", "train top-1 err %", "val top-1 err %", "val top-5 err %",
             "logged val top-1 err % (crops)", "paper val top-1 / top-5 err %", "paper row"]
  table.set_axis_off()
  drawn = table.table(cells, colLabels=columns, loc="center", cellLoc="left")
  drawn.auto_set_font_size(False)
  drawn.set_fontsize(7)
  drawn.auto_set_column_width(list(range(len(columns))))
  fig.tight_layout()
  files.save_figure(fig, path)


def plot_variants(result: Mapping[str, Any], path: str) -> None:
  """Table 3 over seeds: per variant the mean val top-1 error, its range over seeds and each seed's value,
  with the difference from the base and Welch's p (where both have >= 2 seeds)."""
  import matplotlib.pyplot as plt
  groups = variants(result)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(groups) + 2), 4.5))
  for i, g in enumerate(groups):
    stats_ = g["val_top1_error"]
    ax.bar(i, stats_["mean"], 0.6, color="tab:blue", alpha=0.6)
    ax.errorbar(i, stats_["mean"], yerr=[[stats_["mean"] - stats_["min"]], [stats_["max"] - stats_["mean"]]],
                color="black", capsize=6)
    members = [j for j, v in enumerate(result["variant"]) if v == g["variant"]]
    ax.plot([i] * len(members), [_error(result["val_top1"][j]) for j in members], "o", color="black", ms=4)
    vs = g.get("vs_base", {}).get("val_top1_error")
    note = f"{stats_['mean']:.1f} ± {stats_['std']:.1f}\n(n={g['n']})"
    if vs:
      note += f"\n{vs['difference']:+.1f} vs base" + (f", p={vs['p_value']:.2g}" if vs["p_value"] is not None else "")
    ax.text(i, stats_["max"] + 1, note, ha="center", va="bottom", fontsize=7)
  ax.set_xticks(range(len(groups)), [f"{g['arch']}\n" + "\n".join(textwrap.wrap(g["variant"], 24)) for g in groups],
                fontsize=7)
  ax.set_ylabel("val top-1 error % (10 crops)")
  ax.set_ylim(0, 100)
  ax.set_title("Table 3 over seeds: mean, range and each seed; Welch's t-test against the base", fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  files.save_figure(fig, path)


def run(workdirs: Sequence[str], options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py ablation`: Table 3 from `workdirs` (the first is the base), written into `out`."""
  if options["train_images"] is not None and options["train_images"] < 1:
    raise ValueError(f"--train_images={options['train_images']} is not allowed; allowed: an int >= 1 (or unset: all "
                     "training images)")
  result = compute(workdirs, options["epoch"], options["train_images"], options["batch_size"], options["data_dir"])
  figures = {"ablation.png": functools.partial(plot, result)}
  seeded = len(set(result["variant"])) < len(result["variant"])  # some variant has several seeds
  if seeded:
    figures["ablation_seeds.png"] = functools.partial(plot_variants, result)
  return common.write_section(
      summary(result), figures, out, "ablation", "Table 3: ablations",
      "Per trained variant: its change from the first (base) row, parameters, the epoch of the checkpoint, train "
      "top-1 error (center crops of the training images, no augmentation), val top-1/top-5 error (10 crops), the "
      "run's own logged val error (its eval crops), and the paper's row (ImageNet, %)."
      + (" Runs that differ only in their seed are grouped: mean ± std and range over seeds, and each variant's "
         "difference from the base (and from each earlier variant with seeds: vs_variants) against the seed noise "
         "(Welch's two-sided t-test, p < "
         f"{SIGNIFICANCE})." if seeded else ""))
