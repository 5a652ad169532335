# Hull: containers and VMs from one CLI. See README.md.
PREFIX ?= /usr/local
OUT := out/bin
DOTNET ?= dotnet

.PHONY: all setup build install test bench demo clean

all: build

setup:
	bash scripts/setup.sh

# The NativeAOT binaries: hull-oci (OCI runtime + container init), hull (CLI) and, from mk/, hulld and hull-agent.
build:
	$(DOTNET) publish src/Hull.Runtime/Hull.Runtime.csproj -c Release -o $(OUT) --nologo -v q
	$(DOTNET) publish src/Hull/Hull.csproj -c Release -o $(OUT) --nologo -v q

install: build
	install -m 0755 $(OUT)/hull $(PREFIX)/bin/hull
	install -m 0755 $(OUT)/hull-oci $(PREFIX)/bin/hull-oci

test: setup build
	bash scripts/test.sh

bench: setup build
	bash bench/run.sh

# Hull's main job on the built-in default: a busybox container.
demo: setup build
	bash scripts/demo.sh

clean:
	rm -rf out artifacts src/*/bin src/*/obj tests/*/bin tests/*/obj

# Each area may add its own targets (and prerequisites of build/install) in mk/<area>.mk.
-include mk/*.mk
