"""One benchmark run: a thief steals one defended victim with one attack, one way of using the answers, one pool,
one budget and one seed, and its clone is scored."""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..attacks import ATTACKS
from ..attacks.training import fresh_clone, train_clone
from .config import BenchmarkConfig
from .data import clone_builder
from .schema import MODEL_PARAMETERS, SYNTHETIC
from ..blackbox import BlackBoxAPI
from ..defenses import build_defense
from ..demo import predict

# Defences whose answers are one-hot labels: an inverse transform has nothing to recover.
_NOTHING_TO_INVERT = {"top1"}
# Seeds the defender's own models: a thief's clone of the same architecture never shares their initialisation.
DEFENDER_SEED = 2**31 - 1
# The columns that identify a run: a finished row with the same values is never run again.
RUN_KEY = ("victim", "defense", "defense_params", "attack", "answers", "pool", "budget", "seed")


@dataclass(frozen=True)
class Run:
    victim: str
    defense_index: int  # into `config.defenses`
    attack: str
    answers: str
    pool: str
    budget: int
    seed: int
    defense: str = ""
    defense_params: str = "{}"

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in RUN_KEY)


def answers_apply(answers, defense) -> bool:
    """
    Whether a way of using the answers is worth running against `defense` (an `OutputDefense`, or None):
    averaging only against randomised defences, inverting only against public transforms (deterministic, reading
    only the probabilities, and not one-hot); soft, label-only and un-permuting (a permutation hides in the model)
    always.
    """
    if answers == "averaging":
        return defense is not None and defense.randomised
    if answers == "inverting":
        return (defense is not None and not defense.randomised and not defense.needs_inputs
                and defense.name not in _NOTHING_TO_INVERT)
    return True


def plan_runs(config: BenchmarkConfig) -> list[Run]:
    """Every run of the configuration, in the order they are run (victim by victim, so each loads once)."""
    runs = []
    for victim in config.victims:
        for index, (defense, built) in enumerate(zip(config.defenses, config.built_defenses)):
            for attack in config.attacks:
                pools = [p["name"] for p in config.pools] if ATTACKS[attack["name"]].NEEDS_POOL else [SYNTHETIC]
                for pool in pools:
                    for answers in attack["answers"]:
                        if not answers_apply(answers, built):
                            continue
                        for budget in config.budgets:
                            for seed in config.seeds:
                                runs.append(Run(victim["name"], index, attack["name"], answers, pool, budget, seed,
                                                defense["name"], json.dumps(defense["params"], sort_keys=True)))
    return runs


@dataclass
class RunContext:
    """
    What runs share, computed once: the data, the victims, the clone builder, the extraction metric, and caches of
    the victims' test predictions, defended accuracies and trained defences.
    """

    config: BenchmarkConfig
    data: object  # BenchmarkData
    victims: dict
    build_clone: object
    metric: object
    progress: bool = True
    _victim_predictions: dict = field(default_factory=dict)
    _defended_accuracy: dict = field(default_factory=dict)
    _defenses: dict = field(default_factory=dict)

    def victim_predictions(self, victim):
        if victim not in self._victim_predictions:
            self._victim_predictions[victim] = predict(self.victims[victim], self.data.test_inputs)
        return self._victim_predictions[victim]

    def defense(self, victim, index):
        """The defence as served in front of `victim`; model-valued parameters are trained on its answers."""
        if (victim, index) not in self._defenses:
            spec = self.config.defenses[index]["spec"]
            if spec is not None and any(name in spec for name in MODEL_PARAMETERS):
                spec = {**spec, **{name: self._defender_model(victim, spec[name])
                                   for name in MODEL_PARAMETERS if name in spec}}
            self._defenses[(victim, index)] = build_defense(spec)
        return self._defenses[(victim, index)]

    def _defender_model(self, victim, preset):
        # The defender's stand-in for a thief's clone: its own train split, soft answers of its own model.
        train = self.data.splits["train"][:]
        inputs = {k: v for k, v in train.items() if k != "label"}
        answers = BlackBoxAPI(self.victims[victim]).query(inputs)
        model = fresh_clone(clone_builder(self.config, self.data, preset), DEFENDER_SEED)
        return train_clone(model, inputs, answers, labels="soft", **self.config.clone["training"])

    def defended_accuracy(self, victim, index, seed):
        """Test accuracy of the victim as served: the top-1 of its defended answers (utility after the defence)."""
        key = (victim, index, seed)
        if key not in self._defended_accuracy:
            api = BlackBoxAPI(self.victims[victim], defense=self.defense(victim, index), seed=seed)
            served = api.query(self.data.test_inputs).argmax(-1)
            self._defended_accuracy[key] = (served == self.data.test_labels).double().mean().item()
        return self._defended_accuracy[key]

    def evaluate(self, victim):
        def evaluate(clone):
            return self.metric.compute(predictions=predict(clone, self.data.test_inputs),
                                       references=self.data.test_labels,
                                       victim_predictions=self.victim_predictions(victim))

        return evaluate


def _attack_call(run, context, defense):
    """The attack module, the black box's output mode and the arguments for this run's way of using answers."""
    attack = next(a for a in context.config.attacks if a["name"] == run.attack)
    data = context.data
    # DFME queries no pool; it reads the image shape and value range from one.
    pool = data.pools[run.pool] if run.pool != SYNTHETIC else next(iter(data.pools.values()))
    if run.answers in ("soft", "label_only"):
        module, kwargs = ATTACKS[run.attack], dict(attack["kwargs"])
        kwargs["labels"] = run.answers
    else:
        module, kwargs = ATTACKS[run.answers], dict(attack["adaptive"].get(run.answers, {}))
        if run.answers == "inverting":
            kwargs["transform"] = defense  # public: the thief simulates it at no query cost
        elif run.answers == "unpermuting":
            kwargs["labelled_inputs"], kwargs["labelled_labels"] = data.labelled(kwargs.pop("labelled"))
    parameters = inspect.signature(module.run).parameters
    if "labels" not in parameters:
        kwargs.pop("labels", None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs.update(context.config.clone["training"])  # the clone's training settings
    output = "label" if kwargs.get("labels") == "label_only" else "probabilities"
    kwargs["pool"] = pool
    return module, output, kwargs


def execute_run(run: Run, context: RunContext) -> dict:
    """Run one theft and return its result row (see `results.COLUMNS`)."""
    started = time.perf_counter()
    defense = context.defense(run.victim, run.defense_index)
    module, output, kwargs = _attack_call(run, context, defense)
    api = BlackBoxAPI(context.victims[run.victim], output=output, budget=run.budget, defense=defense, seed=run.seed)
    _, history = module.run(api, run.budget, build_clone=context.build_clone, evaluate=context.evaluate(run.victim),
                            seed=run.seed, progress=context.progress, **kwargs)
    victim_predictions = context.victim_predictions(run.victim)
    return {
        "dataset": context.config.dataset["name"],
        **{name: getattr(run, name) for name in RUN_KEY},
        "worst_of": "",
        "output": output,
        "clone": context.config.clone["model"],
        "victim_accuracy": (victim_predictions == context.data.test_labels).double().mean().item(),
        "defended_accuracy": context.defended_accuracy(run.victim, run.defense_index, run.seed),
        "clone_accuracy": history[-1]["clone_accuracy"],
        "clone_agreement": history[-1]["clone_agreement"],
        "label_only_floor": None,
        "queries": api.queries_used,
        "seconds": round(time.perf_counter() - started, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
