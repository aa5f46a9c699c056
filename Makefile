# Build, run and test cargoxx runner. `make run` and `make test` are all a
# newcomer needs; see README.md.

GO             ?= go
CADDY_VERSION  := v2.11.9
XCADDY_VERSION := v0.4.5
GITEA_VERSION  := v1.26.0
MODULE         := github.com/cargoxx-pkgs/runner
GOLANGCI_LINT_VERSION := v2.15.0

# Outside the work tree, so that a fresh clone reuses an earlier build.
CACHE_DIR ?= $(HOME)/.cache/cargoxx-runner
GITEA_BIN ?= $(CACHE_DIR)/gitea-$(GITEA_VERSION)
GITEA_RUNNER_VERSION := v1.0.8
GITEA_RUNNER_BIN ?= $(CACHE_DIR)/act_runner-$(GITEA_RUNNER_VERSION)
# Debian sid's Nix, the current one, in a root filesystem of its own.
NIX_CURRENT_ROOT ?= $(CACHE_DIR)/nix-sid

# The S3 server the end-to-end tests keep caches in.
VERSITYGW_VERSION := v1.8.0
VERSITYGW_BIN ?= $(CACHE_DIR)/versitygw-$(VERSITYGW_VERSION)

# The npm packages of the actions toolkit that jobs in the end-to-end tests
# run: the clients of the actions cache and of Gitea's artifact service.
ACTIONS_CLIENTS := @actions/cache@4.1.0 @actions/artifact@1.1.3 @actions/core@1.11.1
ACTIONS_CLIENTS_DIR ?= $(CACHE_DIR)/actions-clients-cache4.1.0-artifact1.1.3

# E2E=require turns a skipped end-to-end test into a failure (CI sets it).
E2E ?=
TEST_TIMEOUT ?= 60m

export GITEA_BIN GITEA_RUNNER_BIN NIX_CURRENT_ROOT ACTIONS_CLIENTS_DIR VERSITYGW_BIN
export E2E

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE   ?= cargoxx-runner
IMAGE_CONTEXT := bin/image
JOB_IMAGE ?= cargoxx-runner-job:latest

.PHONY: all build xcaddy image job-image run test unit e2e e2e-deps gitea nix-current actions-clients versitygw act-runner fmt lint vet fuzz soak faults bench clean

all: build

## build: bin/caddy, Caddy's standard modules plus this bundle, statically
## linked: the same binary runs as the auto-push agent in job containers
build:
	CGO_ENABLED=0 $(GO) build -o bin/caddy ./cmd/caddy

## xcaddy: the same bundle built the way plugin users build it
xcaddy:
	CGO_ENABLED=0 $(GO) run github.com/caddyserver/xcaddy/cmd/xcaddy@$(XCADDY_VERSION) build $(CADDY_VERSION) \
		--output bin/caddy-xcaddy \
		--with $(MODULE)@v0.0.0-00010101000000-000000000000=.

## image: the container image $(IMAGE):$(VERSION) (and :latest) from scratch: a
## static caddy, CA certificates and the user 10001 (see deploy/)
image:
	rm -rf $(IMAGE_CONTEXT)
	install -d $(IMAGE_CONTEXT)/rootfs/usr/bin $(IMAGE_CONTEXT)/rootfs/etc/ssl/certs $(IMAGE_CONTEXT)/rootfs/etc/caddy
	install -d -m 0700 $(IMAGE_CONTEXT)/state/config $(IMAGE_CONTEXT)/state/data $(IMAGE_CONTEXT)/state/run/caddy
	install -d -m 1777 $(IMAGE_CONTEXT)/state/tmp
	install -d -m 0755 $(IMAGE_CONTEXT)/state/srv
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(IMAGE_CONTEXT)/rootfs/usr/bin/caddy ./cmd/caddy
	install -m 0644 /etc/ssl/certs/ca-certificates.crt $(IMAGE_CONTEXT)/rootfs/etc/ssl/certs/
	install -m 0644 caddyfiles/production.Caddyfile $(IMAGE_CONTEXT)/rootfs/etc/caddy/Caddyfile
	printf 'root:x:0:0:root:/:/sbin/nologin\ncaddy:x:10001:10001:caddy:/data:/sbin/nologin\n' > $(IMAGE_CONTEXT)/rootfs/etc/passwd
	printf 'root:x:0:\ncaddy:x:10001:\n' > $(IMAGE_CONTEXT)/rootfs/etc/group
	DOCKER_BUILDKIT=0 docker build --quiet --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest \
		-f deploy/Dockerfile $(IMAGE_CONTEXT)

## job-image: the job image $(JOB_IMAGE) (the seed's self-hosted label) from
## Debian's packages with debootstrap: Nix in single-user mode, git, curl, jq
## (needs root; see deploy/job-image/build)
job-image:
	DEBOOTSTRAP_CACHE=$(CACHE_DIR)/debootstrap deploy/job-image/build $(JOB_IMAGE)

## run: serve caddyfiles/local.Caddyfile (a Nix cache on http://localhost:8080)
run: build
	bin/caddy run --config caddyfiles/local.Caddyfile --adapter caddyfile

## test: unit tests and end-to-end tests against real nix, Gitea and Docker
test: build xcaddy e2e-deps
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## unit: the tests that need no external tool
unit:
	$(GO) test -count=1 -short ./...

## e2e-deps: build the Gitea server, the S3 server and the current-Nix root
## the end-to-end tests run, and install the actions toolkit's npm clients
## (cached in $(CACHE_DIR))
e2e-deps: gitea versitygw nix-current actions-clients act-runner

# The binary's name carries the version, so an existing file is never stale.
gitea:
	@if [ ! -x "$(GITEA_BIN)" ]; then \
		echo "building Gitea $(GITEA_VERSION) into $(GITEA_BIN)"; \
		mkdir -p "$(dir $(GITEA_BIN))" && \
		cd e2e/tools/gitea && CGO_ENABLED=1 $(GO) build -tags 'sqlite sqlite_unlock_notify' \
			-ldflags '-X main.Version=$(GITEA_VERSION:v%=%)' \
			-o "$(GITEA_BIN).tmp" code.gitea.io/gitea && \
		mv "$(GITEA_BIN).tmp" "$(GITEA_BIN)"; \
	fi

# Needs root and debootstrap; without them the current-Nix tests skip (and
# fail under E2E=require).
nix-current:
	@if [ "$$(id -u)" = 0 ] && command -v debootstrap >/dev/null; then \
		e2e/tools/nix-current-root "$(NIX_CURRENT_ROOT)"; \
	else \
		echo "not building the current-Nix root: needs root and debootstrap"; \
	fi

versitygw:
	@if [ ! -x "$(VERSITYGW_BIN)" ]; then \
		echo "building versitygw $(VERSITYGW_VERSION) into $(VERSITYGW_BIN)"; \
		mkdir -p "$(dir $(VERSITYGW_BIN))" && \
		cd e2e/tools/versitygw && CGO_ENABLED=0 $(GO) build -o "$(VERSITYGW_BIN).tmp" \
			github.com/versity/versitygw/cmd/versitygw && \
		mv "$(VERSITYGW_BIN).tmp" "$(VERSITYGW_BIN)"; \
	fi

# Without npm the actions cache tests skip (and fail under E2E=require).
actions-clients:
	@if [ ! -d "$(ACTIONS_CLIENTS_DIR)/node_modules/@actions/artifact" ]; then \
		if command -v npm >/dev/null; then \
			echo "installing $(ACTIONS_CLIENTS) into $(ACTIONS_CLIENTS_DIR)"; \
			mkdir -p "$(ACTIONS_CLIENTS_DIR).tmp" && \
			npm install --prefix "$(ACTIONS_CLIENTS_DIR).tmp" --no-audit --no-fund --no-save $(ACTIONS_CLIENTS) && \
			rm -rf "$(ACTIONS_CLIENTS_DIR)" && mv "$(ACTIONS_CLIENTS_DIR).tmp" "$(ACTIONS_CLIENTS_DIR)"; \
		else \
			echo "not installing the actions clients: no npm"; \
		fi; \
	fi

## act-runner: Gitea's own runner, which make bench compares gitea_runner with
act-runner:
	@if [ ! -x "$(GITEA_RUNNER_BIN)" ]; then \
		echo "building Gitea's runner $(GITEA_RUNNER_VERSION) into $(GITEA_RUNNER_BIN)"; \
		mkdir -p "$(dir $(GITEA_RUNNER_BIN))" && \
		cd bench/tools/gitea-runner && CGO_ENABLED=0 $(GO) build \
			-ldflags '-X gitea.com/gitea/runner/internal/pkg/ver.version=$(GITEA_RUNNER_VERSION)' \
			-o "$(GITEA_RUNNER_BIN).tmp" gitea.com/gitea/runner && \
		mv "$(GITEA_RUNNER_BIN).tmp" "$(GITEA_RUNNER_BIN)"; \
	fi

fmt:
	gofmt -w $$(git ls-files '*.go')
	for f in caddyfiles/*.Caddyfile; do bin/caddy fmt --overwrite $$f; done

vet:
	$(GO) vet ./...

lint: vet
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...

## e2e: only the end-to-end tests
e2e: build xcaddy e2e-deps
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./e2e/...

## soak: the reload soak's long form, 200 reloads under load with uploads
## and jobs (make test runs 20); figures in RELIABILITY.md
soak: build e2e-deps
	SOAK_RELOADS=200 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestReloadSoak$$' -v ./e2e/

## faults: the fault tests, kill -9 in its long form of 50 rounds (make
## test runs 5): a cut or failing S3 link, full disks, Gitea cut off and
## restarted
faults: build e2e-deps
	E2E_KILL_ROUNDS=50 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v \
		-run '^(TestKillAnywhere|TestSubstitutionsSurviveACutS3Link|TestS3ServerFaults|TestFullDiskRefusesUploadsAndKeepsServing|TestFullWorkDirFailsTheJobWithTheReason|TestGiteaCutOffDuringJobs|TestGiteaRestartsDuringJobs)$$' ./e2e/
	$(GO) test -count=1 -v -run 'ResumeCutStreams' ./caddynix/storage/s3/
	$(GO) test -count=1 -v -run 'TestFullDiskRefusesSaves' ./caddyrunner/actionscache/

## fuzz: fuzz the narinfo parser, the NAR checker, the URL classifier, the xz
## reader, the actions cache's request handling and the Caddyfile parsers;
## crashers land in the package's testdata/fuzz. Each target runs a count of
## inputs, about 10 s of a 2-core machine times FUZZX: a count, unlike a
## duration, does not race the fuzzer's own deadline when it stops
## (go.dev/issue/75804, a spurious "context deadline exceeded" before Go 1.27)
FUZZX ?= 3
fuzz_run = $(GO) test -run '^$$' -fuzz '^$(1)$$' -fuzztime $$(( $(2) * $(FUZZX) ))x $(3)
fuzz:
	$(call fuzz_run,FuzzParseNarInfo,400000,./internal/nixfmt)
	$(call fuzz_run,FuzzCheckNar,300000,./internal/nixfmt)
	$(call fuzz_run,FuzzClassify,400000,./caddynix/internal/cacheurl)
	$(call fuzz_run,FuzzXzReader,400000,./internal/xz)
	$(call fuzz_run,FuzzRequests,4000,./caddyrunner/actionscache)
	$(call fuzz_run,FuzzAdaptCaddyfile,5000,.)

## bench: side-by-side measurements against the alternatives (not part of test);
## BENCH=regexp picks some of them
BENCH ?= .
bench: build e2e-deps act-runner
	@command -v nginx >/dev/null && command -v wrk >/dev/null && command -v haproxy >/dev/null || { apt-get update -q && apt-get install -y -q nginx wrk haproxy; }
	$(GO) test -count=1 -run '^$$' -bench '$(BENCH)' -benchtime 1x -timeout 60m ./bench

clean:
	rm -rf bin
