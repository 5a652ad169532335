# hulld, the daemon that owns every instance (NativeAOT). `make build` puts it in out/bin/hulld with the SQLite
# library it loads (libe_sqlite3.so) beside it; `make install` puts both in $(PREFIX)/lib/hull and links
# $(PREFIX)/bin/hulld to it, with hull-agent beside hulld (the VM driver puts it into the built-in VM image).
.PHONY: hulld install-hulld
build: hulld
install: install-hulld

HULLD_PUBLISH := out/hulld-publish

hulld:
	$(DOTNET) publish src/Hulld/Hulld.csproj -c Release -o $(HULLD_PUBLISH) --nologo -v q
	mkdir -p $(OUT)
	cp $(HULLD_PUBLISH)/hulld $(HULLD_PUBLISH)/libe_sqlite3.so $(OUT)/

install-hulld: hulld agent
	install -d $(PREFIX)/lib/hull $(PREFIX)/bin
	install -m 0755 $(OUT)/hulld $(PREFIX)/lib/hull/hulld
	install -m 0644 $(OUT)/libe_sqlite3.so $(PREFIX)/lib/hull/libe_sqlite3.so
	ln -sf ../lib/hull/hulld $(PREFIX)/bin/hulld
	ln -sf ../../bin/hull-oci $(PREFIX)/lib/hull/hull-oci
	install -m 0755 $(OUT)/hull-agent $(PREFIX)/lib/hull/hull-agent
