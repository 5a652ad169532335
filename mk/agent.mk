# The Hull guest agent: a NativeAOT binary that the VM image builder puts into the guest (out/bin/hull-agent).
.PHONY: agent

agent:
	$(DOTNET) publish src/Hull.Agent/Hull.Agent.csproj -c Release -o $(OUT)/agent-publish --nologo -v q
	install -m 0755 $(OUT)/agent-publish/hull-agent $(OUT)/hull-agent
	rm -rf $(OUT)/agent-publish

build: agent
