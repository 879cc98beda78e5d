# Python Hello Printer: every command of the project. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed

# make run PORT=8123 HOST=0.0.0.0 WORKERS=2 overrides system.server in config.yaml
SERVER_ARGS := $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(if $(WORKERS),--workers $(WORKERS))

.PHONY: help run test test-fast start stop status reload backup backup-schedule restore update validate \
        monitor monitor-stop up down cron bench bench-metrics bench-backup bench-update bench-alerting lint k8s-render check-config clean \
        drill bench-offsite bench-locked
.PHONY: bench-config

help: ## list the targets (the default goal)
	@bold=; plain=; if [ -t 1 ]; then bold=$$'\033[1m'; plain=$$'\033[0m'; fi; \
	grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' -v b="$$bold" -v p="$$plain" '{printf "  %s%-18s%s %s\n", b, $$1, p, $$2}'

# The venv is rebuilt only when a requirements file is newer than its stamp. What it says goes to stderr:
# `make cron | crontab -` on a fresh clone must pipe crontab lines only.
$(RUNTIME_STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) >&2
	@echo "$(PY) -m pip install -q -r requirements.txt" >&2
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt >&2
	@touch $@

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

run: $(RUNTIME_STAMP) ## serve in the foreground on http://127.0.0.1:8000 (PORT=, HOST=, WORKERS= override)
	$(PY) hello_world.py $(SERVER_ARGS)

test: $(DEV_STAMP) ## run the whole test suite, every tier, e2e included (exit 0 only if all pass)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(DEV_STAMP) ## the in-process tier only (no real servers), under a minute: the inner loop
	HELLO_RESTORE_CASES=$${HELLO_RESTORE_CASES:-300} $(PY) -m pytest -m fast -n 2 $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: $(DEV_STAMP) ## only the e2e tier: the image, the compose stack, a systemd host (podman, systemd-nspawn)
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

start: $(RUNTIME_STAMP) ## start the server in the background (pidfile and log in run/); QUIET=1: silent if it runs
	@$(PY) -m scripts.service start $(SERVER_ARGS) $(if $(QUIET),--quiet)

stop: $(RUNTIME_STAMP) ## stop the background server gracefully
	@$(PY) -m scripts.service stop

status: $(RUNTIME_STAMP) ## is the background server running, and which commit does it serve
	@$(PY) -m scripts.service status

reload: $(RUNTIME_STAMP) ## swap in the code now on disk with zero failed requests
	@$(PY) -m scripts.service reload

backup: $(RUNTIME_STAMP) ## one backup now (cron and systemd run backup_script.py create itself)
	@$(PY) backup_script.py create

backup-schedule: $(RUNTIME_STAMP) ## run the backup loop: one backup a day at system.backup.time
	@$(PY) backup_script.py schedule

restore: $(RUNTIME_STAMP) ## restore a backup: make restore ARCHIVE=path TARGET=dir [FORCE=1] [KEEP_SETUID=1]
	@[ -n "$(ARCHIVE)" ] && [ -n "$(TARGET)" ] || { echo "usage: make restore ARCHIVE=path TARGET=dir [FORCE=1] [KEEP_SETUID=1]" >&2; exit 2; }
	@$(PY) backup_script.py restore "$(ARCHIVE)" --target "$(TARGET)" $(if $(FORCE),--force) $(if $(KEEP_SETUID),--keep-setuid)

.PHONY: pull serve-vault bench-vault
pull: $(RUNTIME_STAMP) ## on the vault host: copy production's new archives, check each, prune, drill (cron/systemd: pull)
	@$(PY) backup_script.py pull

serve-vault: $(RUNTIME_STAMP) ## on production: serve the archives read-only over SFTP to the vault's key (foreground)
	@$(PY) backup_script.py serve-vault

drill: $(RUNTIME_STAMP) ## restore the newest archive (off-host when configured) into a scratch folder, compare its manifest
	@$(PY) backup_script.py drill

update: $(RUNTIME_STAMP) ## run the update protocol (DRY_RUN=1 prints the plan and changes nothing)
	@$(PY) update_protocol.py $(if $(DRY_RUN),--dry-run) $(if $(FORCE),--force)

.PHONY: history rollback
rollback: $(RUNTIME_STAMP) ## back to the previous good release, or TO=commit (NO_TEST=1: skip the tests, DRY_RUN=1)
	@$(PY) update_protocol.py rollback $(TO) $(if $(NO_TEST),--no-test) $(if $(DRY_RUN),--dry-run)

history: $(RUNTIME_STAMP) ## every deploy and rollback, newest first (JSON=1: as JSON, ALL=1: every run)
	@$(PY) update_protocol.py history $(if $(JSON),--json) $(if $(ALL),--all)

validate: $(RUNTIME_STAMP) ## check the live system (exit 0 only if no check failed)
	@$(PY) validation_test.py $(if $(ONLY),--only $(ONLY))

monitor: $(RUNTIME_STAMP) ## run Prometheus, Alertmanager, Pushgateway, node_exporter from the host's binaries
	@$(PY) -m scripts.monitor start

monitor-stop: $(RUNTIME_STAMP) ## stop what `make monitor` started
	@$(PY) -m scripts.monitor stop

# Compose v2: the docker CLI's plugin, else the standalone binary on PATH. Against podman (no docker engine):
# make up COMPOSE=/path/to/docker-compose DOCKER_HOST=unix://<podman's API socket> COMPOSE_BAKE=false DOCKER_BUILDKIT=0
COMPOSE ?= $(if $(shell command -v docker 2>/dev/null),docker compose,docker-compose)

up: $(RUNTIME_STAMP) ## start the docker compose stack (needs a Docker engine or podman's API socket, and .env)
	@$(PY) -m scripts.monitor render alertmanager && mkdir -p run/metrics \
		$(addprefix run/monitor/,alertmanager-compose-data prometheus-compose-data pushgateway-compose-data)
	HELLO_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown) HELLO_UID=$$(id -u) HELLO_GID=$$(id -g) \
		$(COMPOSE) up -d --build

down: ## stop the docker compose stack
	GF_ADMIN_PASSWORD=$${GF_ADMIN_PASSWORD:-unused} $(COMPOSE) down

# The targets below are for humans: make exits 2 on any failure. Cron and the systemd units run the scripts
# themselves (hello/platform/scheduled.py), so they get the script's own code (1 failed, 2 bad config, 75 lock held).
cron: $(RUNTIME_STAMP) ## print the crontab lines derived from config.yaml (stdout: crontab lines only)
	@$(PY) -m scripts.cron

.PHONY: systemd systemd-install systemd-uninstall bench-restart
systemd: $(RUNTIME_STAMP) ## print the systemd units derived from config.yaml (DESTDIR=dir writes them there)
	@$(PY) -m scripts.systemd render $(if $(DESTDIR),--destdir "$(DESTDIR)")

systemd-install: $(RUNTIME_STAMP) ## install the units in /etc/systemd/system, enable and start them (DESTDIR=root: only write and enable)
	@$(PY) -m scripts.systemd install $(if $(DESTDIR),--root "$(DESTDIR)")

systemd-uninstall: $(RUNTIME_STAMP) ## stop, disable and remove the installed units (DESTDIR= as for systemd-install)
	@$(PY) -m scripts.systemd uninstall $(if $(DESTDIR),--root "$(DESTDIR)")

bench: $(DEV_STAMP) ## benchmark the server beside nginx and the peers (granian, uvicorn, Go); prints ratios
	$(PY) -m scripts.bench_server $(BENCH_ARGS)

bench-metrics: $(DEV_STAMP) ## time /metrics after 10, 100 and 1000 reloads (RELOADS=10,100 to change)
	$(PY) -m scripts.bench_server --reloads $(or $(RELOADS),10,100,1000) $(BENCH_ARGS)

bench-backup: $(DEV_STAMP) ## benchmark backup create side by side with GNU tar
	$(PY) -m scripts.bench_backup $(BENCH_ARGS)

bench-restart: $(RUNTIME_STAMP) ## time the way back after a supervisor SIGKILL under load (cron's start line)
	$(PY) -m scripts.bench_restart $(BENCH_ARGS)

bench-offsite: $(DEV_STAMP) ## off-host upload against plain rclone copy, and the drill, on a local SFTP server
	$(PY) -m scripts.bench_backup --offsite $(BENCH_ARGS)

bench-locked: $(DEV_STAMP) ## the off-host upload to an S3 bucket with Object Lock (a local SeaweedFS) against plain rclone copy
	$(PY) -m scripts.bench_backup --offsite --locked $(BENCH_ARGS)

bench-vault: $(DEV_STAMP) ## a 300 MB pull by the vault against plain rclone copy, over a local read-only SFTP server
	$(PY) -m scripts.bench_vault $(BENCH_ARGS)

bench-update: $(DEV_STAMP) ## time a no-op and a full update on a scratch deployment
	$(PY) -m scripts.bench_update $(BENCH_ARGS)

bench-alerting: $(DEV_STAMP) ## time from a stopped server to the webhook's HelloWorldDown notification
	$(PY) -m scripts.bench_alerting $(BENCH_ARGS)

bench-config: $(RUNTIME_STAMP) ## time and peak memory of refusing hostile config files (alias bomb, huge, deep)
	$(PY) -m scripts.bench_config $(BENCH_ARGS)

lint: $(DEV_STAMP) ## ruff, promtool checks, compose file check, Dockerfile lint, systemd-analyze on the units, deploy/kubernetes checks
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m scripts.lint_monitoring
	$(PY) -m scripts.systemd check
	$(PY) -m scripts.k8s lint

k8s-render: $(DEV_STAMP) ## regenerate deploy/kubernetes/**/generated/ from config.yaml, the alert rules and the dashboard
	$(PY) -m scripts.k8s render

check-config: $(RUNTIME_STAMP) ## check config.yaml (or HELLO_CONFIG) and print it normalised
	@$(PY) -m hello.base.config

clean: ## stop start/monitor, then remove the venv, caches and run/ (never backups/)
	-@[ ! -x $(PY) ] || $(PY) -m scripts.service stop
	-@[ ! -x $(PY) ] || $(PY) -m scripts.monitor stop
	rm -rf $(VENV) .pytest_cache .ruff_cache run
