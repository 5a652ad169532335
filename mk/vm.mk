# VM engine (src/Hull.Vm): no build step of its own (a plain library); this adds its benchmark.
.PHONY: bench-vm
bench-vm:
	$(DOTNET) run --project bench/vm -c Release -- 5 artifacts/vm-cache
