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
            -Wcast-qual -Wstrict-prototypes -Wmissing-prototypes
CC      ?= cc
CFLAGS  ?= -O2 -g
LIBFLAG ?= -shared
ALL_CFLAGS = $(CFLAGS) -fPIC -pthread -std=c99 -D_DEFAULT_SOURCE $(WARNINGS) $(EXTRA_CFLAGS) \
             $(LUA_CFLAGS) $(SQLITE_CFLAGS) $(CURL_CFLAGS)

SOURCES = csrc/cmpxchg_core.c csrc/embedded.c csrc/http.c csrc/jsonpath.c csrc/keycase.c csrc/renew.c
HEADERS = csrc/compat.h csrc/keycase.h csrc/cmpxchg_core.h csrc/embedded.h csrc/jsonpath.h
LUA_MODULES = $(wildcard lua/cmpxchg/*.lua)
LUA_TRANSPORTS = $(wildcard lua/cmpxchg/transport/*.lua)
BUILD   ?= .
CORE    = $(BUILD)/cmpxchg/core.so

.PHONY: all deps test demo bench bench-bin lint asan valgrind matrix alloc-check install uninstall clean rock

all: $(CORE)

$(CORE): $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) -o $@ $(SOURCES) $(SQLITE_LIBS) $(CURL_LIBS) -pthread $(LDFLAGS)

# Debian packages the build, the tests and the demo need (installed when missing)
deps:
	@scripts/install-deps

test: deps
	@$(MAKE) --no-print-directory all EXTRA_CFLAGS=-Werror
	@$(MAKE) --no-print-directory all EXTRA_CFLAGS=-Werror BUILD=build/luajit LUA_PC=luajit
	@scripts/run-tests

demo: deps all
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

bench: deps all
	@scripts/install-deps --bench
	@$(MAKE) --no-print-directory bench-bin
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

# the suite on every Lua: build/NAME/cmpxchg/core.so for NAME in MATRIX, each
# tested under its own interpreter (make BUILD=build/luajit LUA_PC=luajit all
# builds one of them)
MATRIX ?= lua5.1 lua5.2 lua5.3 lua5.4 luajit
matrix: deps
	@MATRIX="$(MATRIX)" scripts/run-tests --only matrix

install: all
	install -d $(DESTDIR)$(LUA_LIBDIR)/cmpxchg $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/transport
	install -m 0755 $(CORE) $(DESTDIR)$(LUA_LIBDIR)/cmpxchg/core.so
	install -m 0644 $(LUA_MODULES) $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/
	install -m 0644 $(LUA_TRANSPORTS) $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/transport/
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 bin/cmpxchg $(DESTDIR)$(BINDIR)/cmpxchg

uninstall:
	rm -f $(DESTDIR)$(LUA_LIBDIR)/cmpxchg/core.so
	rm -f $(addprefix $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/,$(notdir $(LUA_MODULES)))
	rm -f $(addprefix $(DESTDIR)$(LUA_SHAREDIR)/cmpxchg/transport/,$(notdir $(LUA_TRANSPORTS)))
	rm -f $(DESTDIR)$(BINDIR)/cmpxchg

# Debian keeps curl.h under the multiarch include directory, where luarocks
# does not look by itself. luarocks' builtin build leaves cmpxchg/core.so in
# the directory it runs in: it runs in a copy, so that a rock (for another Lua,
# say) never replaces what `make` built.
ROCK_TREE ?=
rock: deps
	@tmp=$$(mktemp -d) && cp -R rockspec csrc lua bin "$$tmp"/ && \
	(cd "$$tmp" && luarocks --lua-version=$(LUA_VERSION) \
	    $(if $(ROCK_TREE),--tree=$(abspath $(ROCK_TREE))) make \
	    --deps-mode=none rockspec/lua-cmpxchg-scm-1.rockspec \
	    CURL_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir libcurl)); \
	rc=$$?; rm -rf "$$tmp"; exit $$rc

clean:
	rm -rf cmpxchg build
