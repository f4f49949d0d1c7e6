"""The deterministic plan of a local sweep: grid and random expansion and each run's folder name."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from experiments.keys import run_label

from .config import Run, SweepError, is_swept

LOCAL_METHODS = ("grid", "random")


def expand_grid(parameters: dict[str, dict]) -> list[dict[str, Any]]:
    """Every combination, in YAML order with the last parameter varying fastest."""
    names, choices = [], []
    for name, spec in parameters.items():
        if "value" in spec:
            values = [spec["value"]]
        elif "values" in spec:
            values = spec["values"]
        else:
            raise SweepError(f"parameters.{name}: a grid needs 'value' or 'values', not a distribution")
        names.append(name)
        choices.append(values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def sample_value(name: str, spec: dict, rng: random.Random) -> Any:
    """One draw of a W&B parameter specification."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        weights = spec.get("probabilities")
        return rng.choices(spec["values"], weights=weights)[0]
    low: Any = spec.get("min")  # checked when the sweep is read (config.check_parameter)
    high: Any = spec.get("max")
    default = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
    kind = spec.get("distribution", default)
    q = spec.get("q", 1.0)
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
    draws = {
        "uniform": lambda: rng.uniform(low, high),
        "int_uniform": lambda: rng.randint(low, high),
        "q_uniform": lambda: round(rng.uniform(low, high) / q) * q,
        "log_uniform": lambda: math.exp(rng.uniform(low, high)),
        "log_uniform_values": lambda: math.exp(rng.uniform(math.log(low), math.log(high))),
        "q_log_uniform_values": lambda: round(math.exp(rng.uniform(math.log(low), math.log(high))) / q) * q,
        "normal": lambda: rng.gauss(mu, sigma),
        "log_normal": lambda: math.exp(rng.gauss(mu, sigma)),
    }
    if kind not in draws:
        raise SweepError(
            f"parameters.{name}: distribution {kind!r} is not supported locally ({sorted(draws)})"
        )
    return draws[kind]()


def run_key(params: dict[str, Any], parameters: dict[str, dict]) -> str:
    """Folder name of a run from the parameters it varies (``url-Wsft-Dcl-s0``): the CLI's run naming
    (``experiments.keys``) over the swept keys, the objective first and the seed last."""
    names = [n for n, spec in parameters.items() if is_swept(spec) and n != "seed_everything"]
    if "model.objective" in params:
        names = ["model.objective", *[n for n in names if n != "model.objective"]]
    if "seed_everything" in parameters and is_swept(parameters["seed_everything"]):
        names.append("seed_everything")
    return run_label(params, names)


def plan_runs(config: dict, count: int | None = None, seed: int = 0) -> list[Run]:
    """The deterministic list of runs of a sweep (see the package docstring for ``count``)."""
    method = config.get("method")
    parameters = config["parameters"]
    cap = config.get("run_cap")
    limit = count if count is not None else cap
    if method == "grid":
        combos = expand_grid(parameters)
        if limit is not None:
            combos = combos[:limit]
        runs = [Run(i, run_key(p, parameters), p) for i, p in enumerate(combos)]
        keys = [run.key for run in runs]
        if len(set(keys)) != len(keys):  # repeated values in a list: keep folders apart
            for run in runs:
                run.key = f"g{run.index:03d}-{run.key}"
        return runs
    if method == "random":
        if limit is None:
            raise SweepError("a random sweep needs --count n (or run_cap in the YAML)")
        runs = []
        for i in range(limit):
            rng = random.Random(f"{seed}:{i}")
            params = {name: sample_value(name, spec, rng) for name, spec in parameters.items()}
            runs.append(Run(i, f"r{i:03d}-{run_key(params, parameters)}", params))
        return runs
    raise SweepError(
        f"method {method!r}: the local runner supports {', '.join(LOCAL_METHODS)} (bayes needs W&B)"
    )
