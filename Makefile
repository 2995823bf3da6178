# netfabric — set-up, demo and tests on a Debian machine, as root.
#   make demo   installs everything, runs a 3-host vxlan lab, pings pod to pod, tears it down
#   make test   installs everything and runs the unit, functional and lab test tiers
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

DEBS = etcd-server etcd-client bird2 iperf3 nftables iproute2 iputils-ping netcat-openbsd tcpdump \
       containernetworking-plugins procps sockperf
BACKENDS = $(wildcard backends/*/pyproject.toml)

.PHONY: deps debs venv demo test test-unit test-functional test-lab lint bench clean

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Editable core with every extra, every backend, and the test-only plugins (`fake` backend and
# IPAM, private etcd) that a plain `pip install netfabric` never has.
$(BIN)/fabric: pyproject.toml $(BACKENDS) tests/plugins/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bgp,fast,bench]' $(foreach b,$(BACKENDS),-e $(dir $(b))) \
	  -e tests/plugins
	@touch $@

venv: $(BIN)/fabric

deps: debs venv

demo: deps
	$(BIN)/python examples/demo.py

test: deps
	bash scripts/run-tests.sh

test-unit: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check fabric backends tests examples
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: deps
	$(BIN)/fabric bench throughput --backend vxlan
	$(BIN)/fabric bench throughput --backend hostgw

# Takes down every lab on this machine (`fabric lab list`), then removes the venv and build files.
clean:
	-@[ -x $(BIN)/fabric ] && for lab in $$($(BIN)/fabric lab list); do \
	  $(BIN)/fabric lab down --name $$lab; done; true
	rm -rf $(VENV) build dist *.egg-info backends/*/*.egg-info tests/plugins/*.egg-info \
	  examples/*/*.egg-info
