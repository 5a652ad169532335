# Networking side by side with Podman's bridge network: launch cost, iperf3 throughput and ping latency
# (bench/net/run.sh; docs/networking.md).
.PHONY: bench-net
bench-net: setup build
	bash bench/net/run.sh all
