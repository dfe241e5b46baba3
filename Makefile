# Image to build and deploy.
IMG ?= keepalive-operator:latest

# Tool versions, installed into ./bin by `go install`.
CONTROLLER_TOOLS_VERSION ?= v0.21.0
GOLANGCI_LINT_VERSION ?= v2.15.0
HELM_VERSION ?= v3.22.0
KO_VERSION ?= v0.19.1
ACTIONLINT_VERSION ?= v1.7.12

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)
KO ?= $(LOCALBIN)/ko-$(KO_VERSION)
ACTIONLINT ?= $(LOCALBIN)/actionlint-$(ACTIONLINT_VERSION)
CHART = charts/keepalive-operator

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  %-12s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: demo
demo: ## See it work: a local control plane, the operator, the samples, a pod and a Deployment (DEMO_KEEP=1 keeps it running).
	@assets="$$(hack/setup-envtest.sh)" && KUBEBUILDER_ASSETS="$$assets" go run ./hack/demo

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate the DeepCopy methods of the API types.
	$(CONTROLLER_GEN) object paths="./api/..."

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRDs and the manager's RBAC into config/, and copy them into the chart.
	$(CONTROLLER_GEN) crd paths="./api/..." output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=manager-role paths="./..."
	cp config/crd/bases/*.yaml $(CHART)/crds/
	cp config/rbac/role.yaml $(CHART)/files/role.yaml

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet -tags e2e ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) $(ACTIONLINT) ## Run golangci-lint, and actionlint on the GitHub workflows.
	$(GOLANGCI_LINT) run
	$(ACTIONLINT)

.PHONY: envtest
envtest: ## Print the folder of the envtest binaries, building them the first time (minutes).
	@hack/setup-envtest.sh

# How many inputs `make test` fuzzes the admission handler with beyond its
# seed corpus (about 30 s here). A count, not a duration: with a duration the
# Go 1.26 fuzzing engine can fail a clean run with "context deadline exceeded"
# when the time runs out while a worker is busy (go.dev/issue/75804).
FUZZTIME ?= 100000x
# How many it compares the sysctl parse with the kernel's (as root; skipped
# otherwise), about 10 s.
SYSCTL_FUZZTIME ?= 20000x

# The commands of the network lab (test/netlab), whose middlebox the e2e suite
# uses too; hack/need-packages.sh installs their Debian packages as root.
LAB_COMMANDS = ip ss sysctl nft conntrack
# What the lab's audit scenarios run besides: a client of each language and
# a PostgreSQL server.
AUDIT_COMMANDS = gcc python3 node java javac psql postgres initdb

.PHONY: test
test: manifests generate fmt vet $(HELM) ## Run all tests (envtest suites against a real kube-apiserver and etcd), then fuzz admission; as root the network lab too.
	@hack/need-packages.sh --if-root "make test" $(LAB_COMMANDS) $(AUDIT_COMMANDS)
	assets="$$(hack/setup-envtest.sh)" && promtool="$$(hack/setup-promtool.sh)" && \
		KUBEBUILDER_ASSETS="$$assets" HELM="$(HELM)" PROMTOOL="$$promtool" go test ./... -coverprofile cover.out
	go test ./internal/webhook/ -run '^$$' -fuzz '^FuzzAdmission$$' -fuzztime $(FUZZTIME)
	go test ./test/netlab/ -run '^$$' -fuzz '^FuzzReadSysctl$$' -fuzztime $(SYSCTL_FUZZTIME)

# Where hack/local-cluster.sh keeps the local cluster's state and kubeconfig.
export LOCAL_CLUSTER_DIR ?= /tmp/keepalive-local-cluster
E2E_TIMEOUT ?= 30m

.PHONY: test-e2e
test-e2e: e2e-needs image-archives $(HELM) ## End to end on a local single-node cluster with a real kubelet (root; E2E_KEEP=1 leaves the cluster up).
	go test -c -tags e2e -o $(LOCALBIN)/e2e.test ./test/e2e
	hack/local-cluster.sh up
	status=0; hack/local-cluster.sh run env KUBECONFIG=$(LOCAL_CLUSTER_DIR)/kubeconfig HELM=$(HELM) \
		KUBECTL="$$(hack/setup-envtest.sh)/kubectl" TCPAPP=$(IMAGES)/tcpapp PREVIOUS_CHART=$(PREVIOUS_CHART) \
		$(LOCALBIN)/e2e.test -test.timeout $(E2E_TIMEOUT) -ginkgo.v || status=$$?; \
	[ -n "$(E2E_KEEP)" ] || hack/local-cluster.sh down; \
	exit $$status

# Before anything is built: root, and the lab's packages for the suite's
# middlebox (hack/local-cluster.sh installs the cluster's own).
.PHONY: e2e-needs
e2e-needs:
	@hack/need-packages.sh --root "make test-e2e" $(LAB_COMMANDS)

.PHONY: prove
prove: ## Prove on real Linux TCP (network namespaces, as root) that the values keep idle flows alive and the defaults do not.
	@hack/need-packages.sh --root "make prove" $(LAB_COMMANDS) $(AUDIT_COMMANDS)
	assets="$$(hack/setup-envtest.sh)" && KUBEBUILDER_ASSETS="$$assets" KEEPALIVE_LAB_REQUIRED=1 go test ./test/netlab/ -count=1 -v 2>&1 | \
		grep -vE '^=== (RUN|PAUSE|CONT|NAME)'

.PHONY: bench
bench: ## Benchmark pod admission against its baselines and print the ratios (BENCHMARKS.md).
	go test ./internal/webhook/ -run '^$$' -bench '^BenchmarkAdmission$$' -benchmem -count 5 | tee bench.out
	@awk '/^BenchmarkAdmission\// { split($$1, n, "[/-]"); ns[n[2]] += $$3; al[n[2]] += $$(NF-1); c[n[2]]++ } \
	END { h = ns["handler"]/c["handler"]; f = ns["floor"]/c["floor"]; d = ns["defaulter"]/c["defaulter"]; \
	printf "\nhandler %.0f ns/op, %.0f allocs/op\nfloor %.0f ns/op, %.0f allocs/op\ndefaulter %.0f ns/op, %.0f allocs/op\n", h, al["handler"]/c["handler"], f, al["floor"]/c["floor"], d, al["defaulter"]/c["defaulter"]; \
	printf "handler / floor = %.2f (target <= 1.5)\ndefaulter / handler = %.1f (target >= 3)\n", h/f, d/h }' bench.out

# Flags of hack/benchscale, for example BENCH_SCALE_ARGS="-sizes 1000,5000 -window 10s".
BENCH_SCALE_ARGS ?=

.PHONY: bench-scale
bench-scale: ## Measure the reconciler on a real API server at 1,000 to 20,000 pods, both rollout limits, and print the ratios (BENCHMARKS.md).
	assets="$$(hack/setup-envtest.sh)" && KUBEBUILDER_ASSETS="$$assets" go run ./hack/benchscale $(BENCH_SCALE_ARGS)

# Flags of hack/benchadmission, for example BENCH_ADMISSION_ARGS="-rounds 5 -pods 400".
BENCH_ADMISSION_ARGS ?=
# Non-empty: Kyverno's admission controller too, built from its Go module the
# first time (hack/setup-kyverno.sh, minutes) and cached outside the repository.
BENCH_KYVERNO ?=

.PHONY: bench-admission
bench-admission: ## Measure what admission adds to pod creation on a real API server: none, a no-op webhook, the operator at 1 and 1,000 policies, a MutatingAdmissionPolicy, Kyverno with BENCH_KYVERNO=1 (BENCHMARKS.md).
	assets="$$(hack/setup-envtest.sh)" && kyverno="$$( [ -z "$(BENCH_KYVERNO)" ] || hack/setup-kyverno.sh)" && \
		KUBEBUILDER_ASSETS="$$assets" go run ./hack/benchadmission -kyverno "$$kyverno" $(BENCH_ADMISSION_ARGS)

.PHONY: verify
verify: manifests generate ## Fail when generated files, go.mod or formatting are out of date.
	go mod tidy
	@unformatted=$$(gofmt -l .); test -z "$$unformatted" || { echo "not gofmt-ed: $$unformatted"; exit 1; }
	@git diff --exit-code -- . || { echo "generated files or go.mod are out of date: run make manifests generate and go mod tidy, then commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- api config $(CHART))" || { git status --porcelain -- api config $(CHART); echo "untracked generated files: commit them"; exit 1; }
	@echo "verify: generated files, go.mod and formatting are up to date"

##@ Build

.PHONY: build
build: generate fmt vet ## Build the operator and its kubectl plugin (kubectl-keepalive) into bin/.
	go build -o $(LOCALBIN)/keepalive-operator ./cmd/keepalive-operator
	go build -o $(LOCALBIN)/kubectl-keepalive ./cmd/kubectl-keepalive

# The kubectl plugin's release: OS/ARCH pairs, and the version its krew
# manifest points at.
PLUGIN_PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
VERSION ?= $(shell git describe --tags --always --dirty)
# VERSION without its v: the chart's version and the image's tag.
RELEASE_VERSION = $(patsubst v%,%,$(VERSION))

.PHONY: plugin-release
plugin-release: ## Build kubectl-keepalive for linux and darwin on amd64 and arm64 into bin/release: archives, checksums.txt and the krew manifest keepalive.yaml.
	hack/plugin-release.sh $(VERSION) $(LOCALBIN)/release $(PLUGIN_PLATFORMS)

.PHONY: run
run: manifests generate ## Run the operator against the cluster of the current kubeconfig.
	go run ./cmd/keepalive-operator --metrics-bind-address=0

IMAGES = $(LOCALBIN)/images
# The release the e2e suite upgrades from with Helm: its chart and operator
# image are built from this commit, which the clone must hold.
PREVIOUS_RELEASE ?= 0e382c3858d145632c78b37948d9751f0fe41f59
PREVIOUS_CHART = $(LOCALBIN)/previous-release/keepalive-operator

.PHONY: image-archives
image-archives: $(KO) ## Build the images of the operator (and of its previous release), the pause program and the test application with ko, for amd64 and arm64, and write the host's as archives into bin/images, for a node without a registry.
	@git cat-file -e '$(PREVIOUS_RELEASE)^{commit}' 2>/dev/null || { echo "error: commit $(PREVIOUS_RELEASE), the previous release that the e2e suite upgrades from, is not in this clone (fetch the history: git fetch --unshallow)" >&2; exit 1; }
	rm -rf $(IMAGES) && mkdir -p $(IMAGES)
	CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o $(IMAGES)/tcpapp ./test/e2e/images/tcpapp
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && git archive $(PREVIOUS_RELEASE) | tar -x -C "$$src" && \
		rm -rf $(PREVIOUS_CHART) && mkdir -p $(dir $(PREVIOUS_CHART)) && cp -r "$$src/$(CHART)" $(PREVIOUS_CHART) && \
		go run ./hack/images -ko $(KO) -ko-config $(CURDIR)/.ko.yaml -o $(IMAGES) \
			keepalive-operator:e2e=.,./cmd/keepalive-operator \
			keepalive-operator:previous="$$src",./cmd/keepalive-operator \
			keepalive-e2e/pause:1=.,./test/e2e/images/pause \
			keepalive-e2e/tcpapp:1=.,./test/e2e/images/tcpapp

# Where make chart-release pushes the chart, as an OCI artifact; nowhere when
# empty.
CHART_REPO ?=

.PHONY: chart-release
chart-release: $(HELM) ## Package the chart as VERSION (without its v) into bin/release, and push it to CHART_REPO (oci://...) when set.
	$(HELM) package $(CHART) --version $(RELEASE_VERSION) --app-version $(RELEASE_VERSION) -d $(LOCALBIN)/release
	[ -z "$(CHART_REPO)" ] || $(HELM) push $(LOCALBIN)/release/keepalive-operator-$(RELEASE_VERSION).tgz $(CHART_REPO) $(CHART_PUSH_FLAGS)

# The registry of the release's image and chart.
REGISTRY ?= ghcr.io

.PHONY: registry-login
registry-login: $(KO) $(HELM) ## Log ko and Helm in to REGISTRY as REGISTRY_USER with the token in REGISTRY_TOKEN.
	@echo "$$REGISTRY_TOKEN" | $(KO) login $(REGISTRY) --username "$$REGISTRY_USER" --password-stdin
	@echo "$$REGISTRY_TOKEN" | $(HELM) registry login $(REGISTRY) --username "$$REGISTRY_USER" --password-stdin

# Where make release-images pushes the operator's image (ko's KO_DOCKER_REPO).
IMAGE_REPO ?= ghcr.io/keepalive-operator/keepalive-operator

.PHONY: release-images
release-images: $(KO) ## Build and push the operator's image for amd64 and arm64 with its SBOM to IMAGE_REPO, tagged VERSION without its v (needs a registry login), then check what was pushed.
	mkdir -p $(LOCALBIN)/release
	KO_DOCKER_REPO=$(IMAGE_REPO) $(KO) build ./cmd/keepalive-operator --bare --sbom spdx \
		--tags $(RELEASE_VERSION) --image-refs $(LOCALBIN)/release/image-refs.txt
	go run ./hack/images -check $$(cat $(LOCALBIN)/release/image-refs.txt)

.PHONY: docker-build
docker-build: ## Build the container image (needs a Docker engine).
	docker build -t $(IMG) .

##@ Tools

$(CONTROLLER_GEN):
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $@

$(HELM):
	GOBIN=$(LOCALBIN) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(LOCALBIN)/helm $@

$(KO):
	GOBIN=$(LOCALBIN) go install github.com/google/ko@$(KO_VERSION)
	mv $(LOCALBIN)/ko $@

$(ACTIONLINT):
	GOBIN=$(LOCALBIN) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	mv $(LOCALBIN)/actionlint $@

$(GOLANGCI_LINT):
	GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LOCALBIN)/golangci-lint $@
