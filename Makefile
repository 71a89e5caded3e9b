# luster - build, test and run.
#   make deps    install the Debian packages the build and the specs need
#   make         build/luster (warnings are errors)
#   make test    deps + build + the layering check + every spec
#   make layers  the layering check alone (tools/layers.lua: includes go downward only)
#   make run     deps + build + run examples/counter on embedded storage
#   make asan    AddressSanitizer + UBSan build in build-asan/, then the specs on it
#   make tsan    ThreadSanitizer build of build-tsan/two_runtimes, then spec/runtimes_spec.lua on it
#   make soak    three runners under load and churn for SOAK_MINUTES (default 30), CSV + PNG in build/soak
#   make fuzz    every libFuzzer target of fuzz/ for FUZZ_SECONDS (600) each

CC       ?= gcc
PKGS     := lua5.4 libuv
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
               -Iruntime $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -I/usr/include/postgresql
OPT      ?= -O2 -g
LIBS     := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -llua5.4 -luv) -lhttp_parser -lpq -lsqlite3 -lcrypto -lm
# mimalloc replaces malloc in the release build: Lua states, messages and
# calls allocate and free at every hop (measured: +8% sequential calls, +15%
# concurrent calls, +25% activations). Sanitizer builds keep their own.
ALLOC_LIB := $(if $(SANITIZE),,-lmimalloc)

BUILD    ?= build
SPECS    ?= spec
SRC      := $(sort $(wildcard runtime/*.c runtime/*/*.c))
CORE_SRC := $(sort $(wildcard runtime/core/*.c))
LUA_SRC  := $(sort $(wildcard lua/luster/*.lua))
OBJ      := $(patsubst %.c,$(BUILD)/obj/%.o,$(SRC)) $(BUILD)/obj/lua_embed.o

DEBIAN_PKGS := build-essential pkg-config liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev libuv1-dev \
               libpq-dev libsqlite3-dev libhttp-parser-dev libssl-dev libmimalloc-dev lua-busted lua-socket postgresql curl wrk
# Only the specs need these (clang: the libFuzzer targets; chromium: the console page; promtool: the
# /metrics format; iproute2: network namespaces for the partition specs;
# gnuplot: the soak's plot); `make run` does not install them.
TEST_PKGS := clang iproute2 gnuplot-nox prometheus chromium
SOAK_MINUTES ?= 30

.PHONY: all deps test-deps test layers run asan asan-test tsan clean bench soak fuzz fuzz-build
all: $(BUILD)/luster $(BUILD)/luster_core.so $(BUILD)/luster_sqlite.so $(BUILD)/pgconn_check $(BUILD)/luster_otlp.so $(BUILD)/luster_loop.so $(BUILD)/luster_memstore.so $(BUILD)/luster_em.so $(BUILD)/two_runtimes

$(BUILD)/luster: $(OBJ)
	$(CC) $(OPT) $(SANITIZE) -rdynamic -o $@ $(OBJ) $(ALLOC_LIB) $(LIBS)

$(BUILD)/obj/%.o: %.c $(wildcard runtime/*/*.h runtime/*.h)
	@mkdir -p $(dir $@)
	@echo "  CC $<"
	@$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -c -o $@ $<

# The lua/luster library is compiled into the binary, so a runner needs no
# files besides its own script directory.
$(BUILD)/gen/lua_embed.c: $(LUA_SRC) tools/embed.sh
	@mkdir -p $(dir $@)
	sh tools/embed.sh $(LUA_SRC) > $@

$(BUILD)/obj/lua_embed.o: $(BUILD)/gen/lua_embed.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -c -o $@ $<

# The console page (admin/console.html) is compiled in the same way, for
# admin/console.c's console_page().
# (OBJ is extended here, after build/luster's rule read it: the object is
# named as a prerequisite of its own.)
OBJ += $(BUILD)/obj/console_html.o
$(BUILD)/luster: $(BUILD)/obj/console_html.o
$(BUILD)/gen/console_html.c: runtime/admin/console.html tools/embed_file.sh
	@mkdir -p $(dir $@)
	sh tools/embed_file.sh console_html runtime/admin/console.html > $@

$(BUILD)/obj/console_html.o: $(BUILD)/gen/console_html.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -c -o $@ $<

# The starter project `luster new` writes (runtime/cli/starter/, every file),
# compiled in as a table for cli/new.c.
STARTER_FILES := $(shell find runtime/cli/starter -type f 2>/dev/null)
OBJ += $(BUILD)/obj/starter_files.o
$(BUILD)/luster: $(BUILD)/obj/starter_files.o
$(BUILD)/gen/starter_files.c: $(STARTER_FILES) tools/embed_tree.sh
	@mkdir -p $(dir $@)
	sh tools/embed_tree.sh starter_files runtime/cli/starter > $@

$(BUILD)/obj/starter_files.o: $(BUILD)/gen/starter_files.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -c -o $@ $<

# Two runtimes in one process, one thread each (admin/runtime.h), for
# spec/runtimes_spec.lua: every object of the runner but main.c's CLI.
# (After OBJ has its last object, as prerequisites expand when read.)
RUNTIME_OBJ := $(filter-out $(BUILD)/obj/runtime/main.o,$(OBJ))
$(BUILD)/two_runtimes: spec/support/two_runtimes.c $(RUNTIME_OBJ) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -rdynamic -o $@ spec/support/two_runtimes.c $(RUNTIME_OBJ) $(ALLOC_LIB) $(LIBS)

# The pure C core (and the JSON codec of host/json.c) as a Lua module, for the specs.
$(BUILD)/luster_core.so: spec/support/luster_core.c $(CORE_SRC) runtime/host/json.c $(wildcard runtime/core/*.h) runtime/host/json.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -fPIC -shared -o $@ spec/support/luster_core.c $(CORE_SRC) runtime/host/json.c

# storage/sqlite.c on a loop of its own as a Lua module, for spec/sqlite_store_spec.lua.
SQLITE_MOD_SRC := spec/support/luster_sqlite.c runtime/storage/sqlite.c runtime/storage/msgstore.c \
                  runtime/core/jsoncanon.c runtime/core/buf.c
$(BUILD)/luster_sqlite.so: $(SQLITE_MOD_SRC) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -fPIC -shared -o $@ $(SQLITE_MOD_SRC) -luv -lsqlite3

# core/otlp.c and net/otlp_export.c on a loop of their own as a Lua module, for spec/otlp_spec.lua.
OTLP_MOD_SRC := spec/support/luster_otlp.c runtime/core/otlp.c runtime/net/otlp_export.c \
                runtime/core/trace.c runtime/core/buf.c
$(BUILD)/luster_otlp.so: $(OTLP_MOD_SRC) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -fPIC -shared -o $@ $(OTLP_MOD_SRC) -luv -lhttp_parser

# loop/sched.c on a virtual clock (loop/clock.h) as a Lua module, for spec/clock_spec.lua.
LOOP_MOD_SRC := spec/support/luster_loop.c runtime/loop/sched.c runtime/loop/clock.c runtime/loop/log.c \
                runtime/core/heap.c
$(BUILD)/luster_loop.so: $(LOOP_MOD_SRC) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -fPIC -shared -o $@ $(LOOP_MOD_SRC) -luv

# storage/memory.c alone on a scheduler and a virtual clock, for spec/memstore_spec.lua.
MEM_MOD_SRC := spec/support/luster_memstore.c runtime/storage/memory.c runtime/storage/estate_mem.c \
               runtime/loop/msg.c runtime/loop/sched.c runtime/loop/clock.c runtime/loop/log.c \
               runtime/core/heap.c runtime/core/htab.c runtime/core/hash.c runtime/core/buf.c runtime/core/jsoncanon.c
$(BUILD)/luster_memstore.so: $(MEM_MOD_SRC) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -fPIC -shared -o $@ $(MEM_MOD_SRC) -luv -lcrypto

# entity/ alone on a fake host and a virtual clock, for spec/em_spec.lua.
EM_MOD_SRC := spec/support/luster_em.c runtime/entity/entity.c runtime/entity/durable_state.c \
              runtime/loop/msg.c runtime/loop/sched.c runtime/loop/clock.c runtime/loop/log.c \
              runtime/core/heap.c runtime/core/htab.c runtime/core/hash.c runtime/core/buf.c runtime/core/prom.c
$(BUILD)/luster_em.so: $(EM_MOD_SRC) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -fPIC -shared -o $@ $(EM_MOD_SRC) -luv

# storage/pgconn.c on its own against a real server, for spec/pgconn_spec.lua.
PGCHECK_SRC := spec/support/pgconn_check.c runtime/storage/pgconn.c runtime/loop/log.c \
               runtime/core/hash.c runtime/core/heap.c runtime/core/htab.c
$(BUILD)/pgconn_check: $(PGCHECK_SRC) $(wildcard runtime/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(SANITIZE) -o $@ $(PGCHECK_SRC) $(LIBS)

deps test-deps: PKG_LIST = $(if $(filter test-deps,$@),$(TEST_PKGS),$(DEBIAN_PKGS))
deps test-deps:
	@missing=$$(for p in $(PKG_LIST); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Every #include of runtime/ goes to its own layer or a lower one, and no
# include cycle (docs/internals.md, "Layers"); first, as it takes a moment.
layers:
	lua5.4 tools/layers.lua

test: deps test-deps
	$(MAKE) layers
	$(MAKE) all fuzz-build
	$(if $(SPECS),,$(MAKE) tsan)
	LUSTER_BIN=$(abspath $(BUILD)/luster) BUILD=$(BUILD) sh tools/run-specs.sh $(BUSTED_ARGS) $(SPECS)

run: deps
	$(MAKE) all
	@echo
	@echo "  luster is starting examples/counter on http://127.0.0.1:8080 (embedded storage)."
	@echo "  In another terminal:"
	@echo "    curl -X POST localhost:8080/entities/Counter/counter-123/Increment -d '{\"amount\":1}'"
	@echo "    build/luster call Counter counter-123 Increment '{\"amount\":1}'"
	@echo "    build/luster status"
	@echo
	$(BUILD)/luster run examples/counter --http 127.0.0.1:8080

asan: deps test-deps
	$(MAKE) build/luster_core.so build/luster_sqlite.so build/luster_otlp.so build/luster_loop.so build/luster_memstore.so build/luster_em.so fuzz-build
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  LUSTER_BIN=$(abspath build-asan/luster) LUSTER_ASAN=1 BUILD=build-asan sh tools/run-specs.sh $(BUSTED_ARGS) $(SPECS)

# Data races between two runtimes on two threads: build-tsan/two_runtimes
# under ThreadSanitizer, then spec/runtimes_spec.lua on it (a race report
# in its log fails the spec).
tsan: deps test-deps
	$(MAKE) BUILD=build-tsan OPT="-O1 -g -fno-omit-frame-pointer" SANITIZE="-fsanitize=thread" build-tsan/two_runtimes
	TSAN_OPTIONS=halt_on_error=0 LUSTER_TSAN=1 BUILD=build-tsan sh tools/run-specs.sh $(BUSTED_ARGS) spec/runtimes_spec.lua

# libFuzzer targets (fuzz/, see docs/internals.md), always in build/fuzz:
# each links the real parser it fuzzes, instrumented, with ASan and UBSan.
FUZZ_CC      ?= clang
FUZZ_DIR     := build/fuzz
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := parse frame json http transport schema cron trace
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -Iruntime -Ifuzz \
                $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -g -O1 \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -DLUSTER_SRC_DIR=\"$(CURDIR)\"
LUA_LIBS     := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) -lm
FUZZ_SRC_parse     := runtime/core/parse.c
FUZZ_SRC_frame     := runtime/core/frame.c
FUZZ_SRC_json      := runtime/host/json.c
FUZZ_SRC_http      := fuzz/fake_uv.c runtime/net/http.c runtime/core/buf.c runtime/core/url.c runtime/loop/log.c runtime/core/prom.c runtime/core/histo.c
FUZZ_SRC_transport := fuzz/fake_uv.c runtime/net/tp_conn.c runtime/net/tp_server.c runtime/net/tp_client.c runtime/core/buf.c runtime/core/hash.c \
                      runtime/core/htab.c runtime/core/parse.c runtime/core/frame.c runtime/loop/log.c
FUZZ_SRC_schema    := fuzz/lua_harness.c runtime/host/json.c
FUZZ_SRC_cron      := fuzz/lua_harness.c runtime/host/json.c
FUZZ_SRC_trace     := runtime/core/trace.c
FUZZ_LIBS_json     := $(LUA_LIBS)
FUZZ_LIBS_http     := -lhttp_parser
FUZZ_LIBS_transport := -lcrypto
FUZZ_LIBS_schema   := $(LUA_LIBS)
FUZZ_LIBS_cron     := $(LUA_LIBS)

define FUZZ_RULE
$(FUZZ_DIR)/fuzz_$(1): fuzz/fuzz_$(1).c $$(FUZZ_SRC_$(1)) $$(wildcard fuzz/*.h runtime/*/*.h)
	@mkdir -p $$(dir $$@)
	@echo "  FUZZ $$@"
	@$$(FUZZ_CC) $$(FUZZ_CFLAGS) -o $$@ fuzz/fuzz_$(1).c $$(FUZZ_SRC_$(1)) $$(FUZZ_LIBS_$(1))
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call FUZZ_RULE,$(t))))

fuzz-build: test-deps
	$(MAKE) $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS))

# Ends with "fuzz: N targets, M executions, K crashes"; a crash leaves its
# input in build/fuzz-crashes/<target>/ and fails.
fuzz: fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_BIN=$(FUZZ_DIR) sh tools/fuzz.sh $(FUZZ_TARGETS)

# The benchmark scenarios of PERFORMANCE.md: `make bench`, one scenario with
# SCENARIO=local-seq, the Effect peer alongside with PEER=effect, RUNS=n.
bench: deps
	$(MAKE) all
	RUNS=$(or $(RUNS),3) PEER=$(PEER) SCENARIO=$(SCENARIO) lua5.4 bench/run.lua

soak: deps test-deps
	$(MAKE) all
	LUSTER_BIN=$(abspath $(BUILD)/luster) lua5.4 tools/soak.lua --minutes $(SOAK_MINUTES) --out $(BUILD)/soak

clean:
	rm -rf build build-asan build-tsan
