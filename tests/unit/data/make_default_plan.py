"""Writes default_plan.json: what the spec of commit 5137d1f (before presets) resolved, per case
([pruner, sparsity, induction on, experimental settings by dotted path, the values of "columns"]).

    git show 5137d1f:core/spec.py > /tmp/old_spec.py
    .venv/bin/python tests/unit/data/make_default_plan.py /tmp/old_spec.py

test_spec.py checks that the ``default`` preset resolves every case to the same values.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from spruce.core.errors import SpecError

PRUNERS = ("magnitude", "wanda", "sparsegpt")
SPARSITIES: tuple[float | str, ...] = (0.3, 0.5, 0.7, "2:4", "4:8")
# Experimental settings by dotted path (empty: the defaults).
VARIANTS: tuple[dict[str, Any], ...] = (
    {},
    {"swap_rounds": 0},
    {"fit_to": "layer"},
    {"fit_to": "model"},
    {"induction.epochs": 1},
    {"induction.epochs": 0},
    {"induction.targets": "layer"},
    {"induction.targets": "model"},
    {"induction.init": "rms"},
    {"induction.recover_epochs": 0},
    {"induction.samples": 4},
    {"induction.permute_rounds": 7},
)
PROPERTIES = (
    "fits_dense_model", "fit_weight", "swaps", "wants_hessian", "hessian_every", "induction_epochs",
    "induction_scales_skipped", "induction_fits_model", "recovers", "recovery_fits_model", "walks_in_turn",
)  # fmt: skip


def values(spec: Any) -> dict[str, Any]:
    out = {name: getattr(spec, name) for name in PROPERTIES}
    ind = spec.induction
    out["recover_epochs"] = ind.recover_epochs_for(spec.pruner)
    out["samples"] = ind.samples_for(spec.pruner)
    out["rounds_trained"] = ind.rounds_for(spec.pruner, trains=True)
    out["rounds_untrained"] = ind.rounds_for(spec.pruner, trains=False)
    return out


def main(old_spec: str, out: Path) -> None:
    loader = importlib.util.spec_from_file_location("old_spec", old_spec)
    assert loader is not None and loader.loader is not None
    old = importlib.util.module_from_spec(loader)
    sys.modules["old_spec"] = old  # (its dataclasses resolve their annotations through the module)
    loader.loader.exec_module(old)
    cases = []
    for pruner in PRUNERS:
        for sparsity in SPARSITIES:
            for induction in (False, True):
                for variant in VARIANTS:
                    top = {k: v for k, v in variant.items() if "." not in k}
                    ind = {k.split(".", 1)[1]: v for k, v in variant.items() if "." in k}
                    spec = old.CompressionSpec(
                        model="m", sparsity=old.Sparsity.parse(sparsity), pruner=pruner,
                        induction=old.InductionSpec(enabled=induction, **ind), **top,
                    )  # fmt: skip
                    try:
                        spec.validate()
                    except SpecError:
                        continue  # a combination the old spec refused
                    cases.append([pruner, sparsity, induction, variant, list(values(spec).values())])
    columns = list(values(spec).keys())
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases)
    out.write_text(f'{{"columns": {json.dumps(columns)},\n"cases": [\n{lines}\n]}}\n')
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(__file__).with_name("default_plan.json"))
