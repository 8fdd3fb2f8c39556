"""The paper's analyses, one module per figure or table (sections 4 and 5).

Each module has `compute` (arrays), `plot` (PNG) and `summary` (JSON numbers), and `run`, the glue
that `visualize.py` and the explorer call: `run(source, options, out)` for one model
(`source.Source`), or `run(workdirs, options, out)` for the analyses over several trained runs.
`options` maps the visualize.py flag names to their values.
"""
from zf_jax.analysis import (
                             ablation,
                             correspondence,
                             ensemble,
                             evolution,
                             filters,
                             invariance,
                             localization,
                             occlusion,
                             probes,
                             topk,
                             transfer,
                             transfer_seeds,
)

# One model in, one section out; in the order `visualize.py all` runs them.
COMMANDS = {"topk": topk.run, "evolution": evolution.run, "invariance": invariance.run, "filters": filters.run,
            "occlusion": occlusion.run, "localization": localization.run, "correspondence": correspondence.run,
            "transfer": transfer.run, "probes": probes.run}
# Several trained workdirs in (--workdirs), or several models' transfer/probes folders (--results), one section out.
MULTI_COMMANDS = {"ablation": ablation.run, "ensemble": ensemble.run, "transfer-seeds": transfer_seeds.run}
MULTI_INPUTS = {"ablation": "workdirs", "ensemble": "workdirs", "transfer-seeds": "results"}
# Part of `all` only when their input is given (--target).
STUDIES = ("transfer", "probes")
