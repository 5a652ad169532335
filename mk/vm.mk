# VM engine (src/Hull.Vm): no build step of its own (a plain library); this adds its benchmark.
# Hull vs the same QEMU argv started bare (start to marker and to agent Ready), Hull's live migration vs a plain QMP
# script (idle and busy guest), QEMU RSS. Arguments: start runs, cache dir, guest agent binary, migration runs.
.PHONY: bench-vm
bench-vm: agent
	$(DOTNET) run --project bench/vm -c Release -- 7 artifacts/vm-cache $(OUT)/hull-agent 3
