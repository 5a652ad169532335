# The hulld benchmark (bench/daemon/run.sh): launch-to-exec latency against Podman, 1,000 launches through the SDK
# (N=10000 on request), `hull list` time and hulld's RSS. Needs root and the binaries from `make build`.
.PHONY: bench-daemon
bench-daemon: setup build
	bash bench/daemon/run.sh all
