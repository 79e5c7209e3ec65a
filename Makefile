# cmpxchg: build the C core (cmpxchg/core.so) and run everything else.
# Flags come from pkg-config; the module never links liblua (the interpreter
# that loads it provides the Lua API).

LUA_VERSION ?= 5.4
LUA         ?= lua$(LUA_VERSION)
LUA_PC      ?= lua$(LUA_VERSION)
PREFIX      ?= /usr/local
DESTDIR     ?=
LUA_LIBDIR  ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_SHAREDIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
BINDIR      ?= $(PREFIX)/bin
PKG_CONFIG  ?= pkg-config

LUA_INCDIR  ?=
LUA_CFLAGS  ?= $(if $(LUA_INCDIR),-I$(LUA_INCDIR),$(shell $(PKG_CONFIG) --cflags $(LUA_PC)))
SQLITE_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags sqlite3)
SQLITE_LIBS   ?= $(shell $(PKG_CONFIG) --libs sqlite3)
CURL_CFLAGS   ?= $(shell $(PKG_CONFIG) --cflags libcurl)
CURL_LIBS     ?= $(shell $(PKG_CONFIG) --libs libcurl)

WARNINGS ?= -Wall -Wextra -Wshadow -Wconversion -Wsign-conversion -Wpointer-arith \
            -Wcast-qual -Wstrict-prototypes -Wmissing-prototypes -Wdeclaration-after-statement
CC      ?= cc
CFLAGS  ?= -O2 -g
LIBFLAG ?= -shared
ALL_CFLAGS = $(CFLAGS) -fPIC -pthread -std=c99 -D_DEFAULT_SOURCE $(WARNINGS) $(EXTRA_CFLAGS) \
             $(LUA_CFLAGS) $(SQLITE_CFLAGS) $(CURL_CFLAGS)

SOURCES = csrc/module.c csrc/util.c csrc/keys.c csrc/jsonpick.c csrc/storedir.c \
          csrc/embedded.c csrc/http.c csrc/stream.c csrc/renew.c
HEADERS = csrc/compat.h csrc/util.h csrc/units.h csrc/keys.h csrc/jsonpick.h csrc/http.h
LUA_MODULES = $(wildcard lua/cmpxchg/*.lua)
LUA_TRANSPORTS = $(wildcard lua/cmpxchg/transport/*.lua)
BUILD   ?= .
CORE    = $(BUILD)/cmpxchg/core.so

.PHONY: all deps test demo bench bench-bin lint asan valgrind matrix alloc-check install uninstall \
        clean rock dist mutate

all: $(CORE)

$(CORE): $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) -o $@ $(SOURCES) $(SQLITE_LIBS) $(CURL_LIBS) -pthread $(LDFLAGS)

# Debian packages (installed when missing): each target installs its own
# profile of scripts/install-deps; `make deps` what the tests need (everything)
deps:
	@scripts/install-deps test

test: deps
	@$(MAKE) --no-print-directory all EXTRA_CFLAGS=-Werror
	@$(MAKE) --no-print-directory all EXTRA_CFLAGS=-Werror BUILD=build/luajit LUA_PC=luajit
	@scripts/run-tests

# only what the demo needs: the build, Lua 5.4 and lua-cjson, never the
# tests' servers nor their referee
demo:
	@scripts/install-deps demo
	@$(MAKE) --no-print-directory all
	$(LUA) examples/demo.lua

# the benchmarks' own programs: the libcurl/SQLite floor and etcdctl's critical section
BENCH_BIN = build/bench/floor build/bench/hold

build/bench/floor: bench/floor.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c99 -D_DEFAULT_SOURCE $(WARNINGS) $(SQLITE_CFLAGS) $(CURL_CFLAGS) \
	    -o $@ bench/floor.c $(SQLITE_LIBS) $(CURL_LIBS) $(LDFLAGS)

build/bench/hold: bench/hold.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c99 $(WARNINGS) -o $@ bench/hold.c $(LDFLAGS)

bench-bin: $(BENCH_BIN)

bench:
	@scripts/install-deps bench
	@$(MAKE) --no-print-directory all bench-bin
	$(LUA) bench/run.lua

lint: deps
	luacheck lua spec examples bench bin/cmpxchg

asan: deps
	@scripts/run-tests --only asan

valgrind: deps all
	@scripts/run-tests --only valgrind

# The allocation-failure checker (spec/support/alloc/host.c): operations on
# an embedded store with the Nth Lua (then SQLite) allocation failing, for
# every N, under ASan, UBSan and LeakSanitizer. The host is a Lua 5.4
# program, so it links liblua; the core it loads is the asan pass's build.
# Its store lives in /dev/shm where there is one: a few thousand opens.
SANITIZE = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
ALLOC_HOST = build/alloc/host

$(ALLOC_HOST): spec/support/alloc/host.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(SANITIZE) -std=c99 -D_DEFAULT_SOURCE $(WARNINGS) $(EXTRA_CFLAGS) \
	    $(shell $(PKG_CONFIG) --cflags lua5.4) $(SQLITE_CFLAGS) -o $@ spec/support/alloc/host.c \
	    $(shell $(PKG_CONFIG) --libs lua5.4) $(SQLITE_LIBS) $(LDFLAGS)

alloc-check: deps
	@$(MAKE) --no-print-directory BUILD=build/asan EXTRA_CFLAGS=-Werror CFLAGS="$(SANITIZE)" \
	    LDFLAGS="-fsanitize=address,undefined" all >/dev/null
	@$(MAKE) --no-print-directory EXTRA_CFLAGS=-Werror $(ALLOC_HOST)
	@tmp=$$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d) && \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86:intercept_tls_get_addr=0 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/spec/support/alloc/lsan.supp:print_suppressions=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(ALLOC_HOST) spec/support/alloc/driver.lua "build/asan/?.so" "$$tmp/store.db"; \
	rc=$$?; rm -rf "$$tmp"; exit $$rc

# the mutation campaign (spec/mutants/): each mutant of the catalogue in a
# scratch copy, its specs, the plain pass for a survivor; a table and a score.
# MUTATE_ARGS passes options (scripts/mutate --help), e.g. --only 'keys.*'
mutate: deps all
	@scripts/mutate $(MUTATE_ARGS)

# the suite on every Lua: build/NAME/cmpxchg/core.so for NAME in MATRIX, each
# tested under its own interpreter (make BUILD=build/luajit LUA_PC=luajit all
# builds one of them)
MATRIX ?= lua5.1 lua5.2 lua5.3 lua5.4 luajit
matrix: deps
	@MATRIX="$(MATRIX)" scripts/run-tests --only matrix

# `make install LUA_VERSION=5.3` (LuaJIT: LUA_PC=luajit LUA_VERSION=5.1) builds
# the core for that Lua, afresh in build/install (whatever was built last in
# the checkout is for another Lua, as often as not), and installs bin/cmpxchg
# to run on that Lua (or on LUA=... given here; never on $LUA from the
# environment, which the tests set for their own children).
INSTALL_LUA = $(if $(filter command line,$(origin LUA)),$(LUA),$(if $(filter luajit%,$(LUA_PC)),luajit,lua$(LUA_VERSION)))
install:
	@[ -n "$(LUA_INCDIR)" ] || $(PKG_CONFIG) --exists $(LUA_PC) || { echo "make install:" \
	    "no headers for $(LUA_PC) (pkg-config $(LUA_PC)): install them (Debian:" \
	    "$(if $(filter luajit%,$(LUA_PC)),libluajit2-5.1-dev,liblua$(LUA_VERSION)-dev)) or give" \
	    "LUA_INCDIR" >&2; exit 1; }
	@$(MAKE) --no-print-directory -B all BUILD=build/install
	install -d $(DESTDIR)$(LUA_LIBDIR)/cmpxchg $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/transport
	install -m 0755 build/install/cmpxchg/core.so $(DESTDIR)$(LUA_LIBDIR)/cmpxchg/core.so
	install -m 0644 $(LUA_MODULES) $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/
	install -m 0644 $(LUA_TRANSPORTS) $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/transport/
	install -d $(DESTDIR)$(BINDIR)
	sed '1s|.*|#!/usr/bin/env $(INSTALL_LUA)|' bin/cmpxchg >build/install/cmpxchg.bin
	install -m 0755 build/install/cmpxchg.bin $(DESTDIR)$(BINDIR)/cmpxchg

uninstall:
	rm -f $(DESTDIR)$(LUA_LIBDIR)/cmpxchg/core.so
	rm -f $(addprefix $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/,$(notdir $(LUA_MODULES)))
	rm -f $(addprefix $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/transport/,$(notdir $(LUA_TRANSPORTS)))
	rm -f $(DESTDIR)$(BINDIR)/cmpxchg

# `luarocks make` of the scm rockspec for LUA_VERSION, into ROCK_TREE (default:
# luarocks' own). luarocks' builtin build leaves cmpxchg/core.so in the
# directory it runs in: it runs in a copy, so that a rock (for another Lua,
# say) never replaces what `make` built.
ROCK_TREE ?=
rock:
	@scripts/install-deps rock
	@tmp=$$(mktemp -d) && cp -R rockspec csrc lua bin "$$tmp"/ && \
	(cd "$$tmp" && luarocks --lua-version=$(LUA_VERSION) \
	    $(if $(ROCK_TREE),--tree=$(abspath $(ROCK_TREE))) make \
	    rockspec/lua-cmpxchg-scm-1.rockspec); \
	rc=$$?; rm -rf "$$tmp"; exit $$rc

# `make dist`: DIST_DIR/lua-cmpxchg-VERSION-1.src.rock, VERSION being
# cmpxchg._VERSION's: the release rockspec and the tarball its source.url
# names, zipped as `luarocks pack` does (which would fetch that url), so that
# `luarocks install` builds it without a network
VERSION = $(shell sed -n 's/^ *_VERSION = "cmpxchg \([^"]*\)".*/\1/p' lua/cmpxchg/init.lua)
DIST_DIR ?= .
DIST_FILES = README.md Makefile bin csrc lua rockspec examples
dist:
	@scripts/install-deps rock
	@v=$(VERSION); spec=rockspec/lua-cmpxchg-$$v-1.rockspec; \
	[ -n "$$v" ] || { echo "make dist: no _VERSION in lua/cmpxchg/init.lua" >&2; exit 1; }; \
	[ -f $$spec ] || { echo "make dist: $$spec is missing (the release rockspec of" \
	    "cmpxchg._VERSION, $$v)" >&2; exit 1; }; \
	tmp=$$(mktemp -d) && mkdir "$$tmp/lua-cmpxchg-$$v" && \
	cp -R $(DIST_FILES) "$$tmp/lua-cmpxchg-$$v"/ && \
	tar -C "$$tmp" -czf "$$tmp/lua-cmpxchg-$$v.tar.gz" "lua-cmpxchg-$$v" && \
	cp $$spec "$$tmp"/ && (cd "$$tmp" && zip -q "lua-cmpxchg-$$v-1.src.rock" \
	    "lua-cmpxchg-$$v-1.rockspec" "lua-cmpxchg-$$v.tar.gz") && \
	mkdir -p $(DIST_DIR) && mv "$$tmp/lua-cmpxchg-$$v-1.src.rock" $(DIST_DIR)/ && \
	echo "$(DIST_DIR)/lua-cmpxchg-$$v-1.src.rock"; \
	rc=$$?; rm -rf "$$tmp"; exit $$rc

clean:
	rm -rf cmpxchg build
