# pgshadow — see README.md. Targets: all (default), deps, test, unit, fuzz-regress,
# integration, bench, fuzz, demo, install, config-example, format, format-check, clean.
# SAN=1 (with any target): the sanitizer build in build-san/; `make test` runs both.

# SAN=1: everything built into build-san/ with AddressSanitizer, UndefinedBehaviorSanitizer
# and LeakSanitizer, and the integration tests run that agent (PGSHADOW_BIN).
ifeq ($(SAN),1)
BUILD     := build-san
CFLAGS    := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
             -fno-omit-frame-pointer -Wno-format-truncation
LDFLAGS   += -fsanitize=address,undefined
export PGSHADOW_BIN := $(CURDIR)/build-san/pgshadow
export ASAN_OPTIONS := abort_on_error=1:detect_leaks=1:quarantine_size_mb=16
export UBSAN_OPTIONS := print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS := suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
endif
# COV=1: everything built into build-cov/ with gcov instrumentation (make coverage).
ifeq ($(COV),1)
BUILD     := build-cov
CFLAGS    := -O0 -g --coverage -Wno-format-truncation
export PGSHADOW_BIN := $(CURDIR)/build-cov/pgshadow
endif
BUILD     ?= build
CC        ?= gcc
CLANG     ?= clang
BPFTOOL   ?= bpftool
PYTHON    ?= /usr/bin/python3
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)

ARCH      := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
# -flto: the decoder's hot path crosses modules (pipeline, tcpstream, pgwire, session,
# stats); link-time optimisation took an observing agent from 0.725 to 0.690 and from
# 0.728 to 0.700 us per request (14,000 requests/s, two runs of five interleaved rounds:
# lower in 8 of 10).
CFLAGS    ?= -O2 -g -flto=auto
CFLAGS    += -std=gnu11 -Wall -Wextra -Werror -Iinclude -I$(BUILD) -I/usr/include/postgresql \
             -DPGSHADOW_VERSION='"$(VERSION)"'
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Ivmlinux -Iinclude -Wall -Werror
LDLIBS    := -lbpf -lelf -lz -lmicrohttpd -lpq -lpg_query -lxxhash -lcjson -lcrypt -lm -lpthread
LDLIBS    += -linih -lcrypto

# Debian 12 packages the build, the tests and the demo need.
DEB_PACKAGES := make gcc clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev pkg-config \
                libmicrohttpd-dev libpg-query-dev libprotobuf-c-dev libxxhash-dev libpq-dev \
                libcmocka-dev python3-pytest python3-psycopg2 iproute2 nftables procps \
                postgresql postgresql-contrib prometheus openssl curl
DEB_PACKAGES += libinih-dev libcjson-dev libcrypt-dev systemd util-linux libssl-dev gcovr
# the landing page is checked in a real headless browser (test_landing_page.py)
DEB_PACKAGES += chromium
# the client matrix (tests/integration/test_clients.py): drivers and their runtimes.
# Debian's npm only when no npm is on PATH: NodeSource's nodejs ships npm and conflicts
# with the npm package.
DEB_PACKAGES += python3-psycopg python3-asyncpg libpostgresql-jdbc-java default-jdk-headless \
                nodejs $(if $(shell command -v npm 2>/dev/null),,npm)

AGENT_OBJS := $(BUILD)/main.o $(BUILD)/capture.o $(BUILD)/tcpstream.o $(BUILD)/dump.o \
              $(BUILD)/pgwire.o $(BUILD)/session.o $(BUILD)/pipeline.o $(BUILD)/stats.o \
              $(BUILD)/buf.o $(BUILD)/http.o $(BUILD)/resolver.o $(BUILD)/replay.o $(BUILD)/replay_submit.o \
              $(BUILD)/replay_conn.o $(BUILD)/replay_pool.o $(BUILD)/ownconn.o \
              $(BUILD)/fingerprint.o $(BUILD)/readiness.o $(BUILD)/sampler.o $(BUILD)/order.o \
              $(BUILD)/compare.o $(BUILD)/admission.o $(BUILD)/landing.o \
              $(BUILD)/statefile.o $(BUILD)/fleet.o $(BUILD)/webauth.o $(BUILD)/redact.o \
              $(BUILD)/authblank.o $(BUILD)/querystats.o $(BUILD)/plan.o $(BUILD)/explain.o \
              $(BUILD)/scram.o $(BUILD)/procnet.o $(BUILD)/tlsprobe.o
UNIT_TESTS := $(BUILD)/test_tcpstream $(BUILD)/test_pgwire $(BUILD)/test_session \
              $(BUILD)/test_pipeline $(BUILD)/test_stats $(BUILD)/test_fingerprint \
              $(BUILD)/test_capture_bpf $(BUILD)/test_readiness
AGENT_OBJS += $(BUILD)/config.o
UNIT_TESTS += $(BUILD)/test_config
AGENT_OBJS += $(BUILD)/admin.o
UNIT_TESTS += $(BUILD)/test_admin
UNIT_TESTS += $(BUILD)/test_sampler
UNIT_TESTS += $(BUILD)/test_order $(BUILD)/test_compare $(BUILD)/test_admission
AGENT_OBJS += $(BUILD)/selfcheck.o
UNIT_TESTS += $(BUILD)/test_selfcheck $(BUILD)/test_landing $(BUILD)/test_statefile \
              $(BUILD)/test_fleet $(BUILD)/test_webauth $(BUILD)/test_redact \
              $(BUILD)/test_authblank $(BUILD)/test_querystats $(BUILD)/test_plan \
              $(BUILD)/test_scram $(BUILD)/test_dump $(BUILD)/test_http \
              $(BUILD)/test_explain $(BUILD)/test_resolver $(BUILD)/test_procnet \
              $(BUILD)/test_rxclock

.PHONY: all deps test unit integration bench demo format format-check clean install coverage

all: $(BUILD)/pgshadow

$(BUILD):
	mkdir -p $@

$(BUILD)/capture.bpf.o: bpf/capture.bpf.c include/capture_event.h vmlinux/vmlinux.h | $(BUILD)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BUILD)/capture.skel.h: $(BUILD)/capture.bpf.o
	$(BPFTOOL) gen skeleton $< name capture_bpf > $@

$(BUILD)/%.o: user/%.c $(wildcard include/*.h) $(wildcard user/*.h) | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/capture.o: $(BUILD)/capture.skel.h

$(BUILD)/pgshadow: $(AGENT_OBJS)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/test_tcpstream: tests/unit/test_tcpstream.c $(BUILD)/tcpstream.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_pgwire: tests/unit/test_pgwire.c $(BUILD)/pgwire.o tests/unit/wire_script.h
	$(CC) $(CFLAGS) $(filter-out %.h,$^) -lcmocka -o $@

$(BUILD)/test_session: tests/unit/test_session.c $(BUILD)/session.o $(BUILD)/pgwire.o \
		tests/unit/wire_script.h
	$(CC) $(CFLAGS) $(filter-out %.h,$^) -lcmocka -lxxhash -o $@

$(BUILD)/test_pipeline: tests/unit/test_pipeline.c $(BUILD)/pipeline.o $(BUILD)/tcpstream.o \
		$(BUILD)/session.o $(BUILD)/pgwire.o $(BUILD)/stats.o $(BUILD)/buf.o $(BUILD)/dump.o \
		$(BUILD)/authblank.o
	$(CC) $(CFLAGS) $^ -lcmocka -lxxhash -lpthread -o $@

$(BUILD)/test_stats: tests/unit/test_stats.c $(BUILD)/stats.o $(BUILD)/buf.o $(BUILD)/http.o \
		$(BUILD)/webauth.o
	$(CC) $(CFLAGS) $^ -lcmocka -lmicrohttpd -lcrypt -lxxhash -lpthread -o $@

$(BUILD)/test_http: tests/unit/test_http.c $(BUILD)/http.o $(BUILD)/buf.o $(BUILD)/stats.o \
		$(BUILD)/webauth.o tests/unit/peer.h
	$(CC) $(CFLAGS) $(filter-out %.h,$^) -lcmocka -lmicrohttpd -lcrypt -lxxhash -lpthread -o $@

$(BUILD)/test_explain: tests/unit/test_explain.c $(BUILD)/explain.o $(BUILD)/ownconn.o \
		$(BUILD)/plan.o tests/unit/peer.h
	$(CC) $(CFLAGS) $(filter-out %.h,$^) -lcmocka -lpq -lcjson -lpthread -o $@

$(BUILD)/test_resolver: tests/unit/test_resolver.c $(BUILD)/resolver.o $(BUILD)/ownconn.o \
		$(BUILD)/redact.o tests/unit/peer.h
	$(CC) $(CFLAGS) $(filter-out %.h,$^) -lcmocka -lpq -lpthread -o $@

$(BUILD)/test_readiness: tests/unit/test_readiness.c $(BUILD)/readiness.o $(BUILD)/stats.o \
		$(BUILD)/buf.o
	$(CC) $(CFLAGS) $^ -lcmocka -lcjson -lm -lpthread -o $@

$(BUILD)/test_admin: tests/unit/test_admin.c $(BUILD)/admin.o $(BUILD)/buf.o $(BUILD)/http.o \
		$(BUILD)/stats.o $(BUILD)/webauth.o $(BUILD)/scram.o
	$(CC) $(CFLAGS) $^ -lcmocka -lmicrohttpd -lcrypt -lcrypto -lxxhash -lm -lpthread -o $@

$(BUILD)/test_config: tests/unit/test_config.c $(BUILD)/config.o
	$(CC) $(CFLAGS) -DSRCDIR='"$(CURDIR)"' $^ -lcmocka -linih -lm -lpthread -o $@

$(BUILD)/test_fingerprint: tests/unit/test_fingerprint.c $(BUILD)/fingerprint.o
	$(CC) $(CFLAGS) $^ -lcmocka -lpg_query -lxxhash -o $@

$(BUILD)/test_sampler: tests/unit/test_sampler.c $(BUILD)/sampler.o $(BUILD)/fingerprint.o
	$(CC) $(CFLAGS) $^ -lcmocka -lpg_query -lxxhash -o $@

$(BUILD)/test_selfcheck: tests/unit/test_selfcheck.c $(BUILD)/selfcheck.o
	$(CC) $(CFLAGS) $^ -lcmocka -lpq -o $@

$(BUILD)/test_order: tests/unit/test_order.c $(BUILD)/order.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_compare: tests/unit/test_compare.c $(BUILD)/compare.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_admission: tests/unit/test_admission.c $(BUILD)/admission.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_landing: tests/unit/test_landing.c $(BUILD)/landing.o $(BUILD)/buf.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_statefile: tests/unit/test_statefile.c $(BUILD)/statefile.o $(BUILD)/buf.o
	$(CC) $(CFLAGS) $^ -lcmocka -lxxhash -o $@

$(BUILD)/test_fleet: tests/unit/test_fleet.c $(BUILD)/fleet.o $(BUILD)/buf.o
	$(CC) $(CFLAGS) $^ -lcmocka -lcjson -o $@

$(BUILD)/test_authblank: tests/unit/test_authblank.c $(BUILD)/authblank.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_querystats: tests/unit/test_querystats.c $(BUILD)/querystats.o \
		$(BUILD)/fingerprint.o $(BUILD)/buf.o
	$(CC) $(CFLAGS) $^ -lcmocka -lpg_query -lcjson -lxxhash -lm -o $@

$(BUILD)/test_dump: tests/unit/test_dump.c $(BUILD)/dump.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_scram: tests/unit/test_scram.c $(BUILD)/scram.o
	$(CC) $(CFLAGS) $^ -lcmocka -lcrypto -o $@

$(BUILD)/test_plan: tests/unit/test_plan.c $(BUILD)/plan.o
	$(CC) $(CFLAGS) $^ -lcmocka -lcjson -o $@

$(BUILD)/test_procnet: tests/unit/test_procnet.c $(BUILD)/procnet.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_rxclock: tests/unit/test_rxclock.c include/rxclock.h include/capture_event.h | $(BUILD)
	$(CC) $(CFLAGS) $< -lcmocka -o $@

$(BUILD)/test_redact: tests/unit/test_redact.c $(BUILD)/redact.o
	$(CC) $(CFLAGS) $^ -lcmocka -o $@

$(BUILD)/test_webauth: tests/unit/test_webauth.c $(BUILD)/webauth.o
	$(CC) $(CFLAGS) $^ -lcmocka -lcrypt -lxxhash -o $@

$(BUILD)/test_capture_bpf: tests/unit/test_capture_bpf.c $(BUILD)/capture.skel.h
	$(CC) $(CFLAGS) $< -lcmocka $(LDLIBS) -o $@

# deploy/pgshadow.ini is the agent's --print-config output (test_config checks it).
.PHONY: config-example
config-example: $(BUILD)/pgshadow
	$(BUILD)/pgshadow --print-config > deploy/pgshadow.ini

# make install [PREFIX=/usr/local] [DESTDIR=]: the binary, the systemd unit (ExecStart
# at the installed binary) and, when none exists yet, /etc/pgshadow/pgshadow.ini.
PREFIX ?= /usr/local
install: $(BUILD)/pgshadow
	install -D -m 0755 $(BUILD)/pgshadow $(DESTDIR)$(PREFIX)/bin/pgshadow
	install -d -m 0755 $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|@BINDIR@|$(PREFIX)/bin|' deploy/systemd/pgshadow.service \
		> $(DESTDIR)$(PREFIX)/lib/systemd/system/pgshadow.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/pgshadow.service
	install -d -m 0755 $(DESTDIR)/etc/pgshadow
	[ -e $(DESTDIR)/etc/pgshadow/pgshadow.ini ] || \
		install -m 0644 deploy/pgshadow.ini $(DESTDIR)/etc/pgshadow/pgshadow.ini

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/integration/clients/node --no-audit --no-fund --loglevel=error \
			>/dev/null; fi

unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; $$t; done

integration: $(BUILD)/pgshadow $(BUILD)/lossy.bpf.o
	PGSHADOW_LOSSY_BPF=$(CURDIR)/$(BUILD)/lossy.bpf.o $(PYTHON) -m pytest -v -rs tests/integration

# A test-only tc program that loses and duplicates segments on a test veth (no netem here).
$(BUILD)/lossy.bpf.o: tests/integration/lossy.bpf.c vmlinux/vmlinux.h | $(BUILD)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# `make test`: the whole suite, then again under the sanitizers (ASan, UBSan, LSan: the
# unit and integration tests against build-san/pgshadow). `make test SAN=1`: only the
# sanitizer pass.
test: deps all unit fuzz-regress integration
ifneq ($(SAN),1)
	$(MAKE) SAN=1 all unit integration
endif

# `make coverage`: line and branch coverage of user/ from the unit and integration tests
# (gcov instrumentation in build-cov/, every agent the tests start writes its counts at
# exit), reported by gcovr into build-cov/coverage.txt and on stdout.
coverage:
	rm -f build-cov/*.gcda
	$(MAKE) COV=1 all unit
	-$(MAKE) COV=1 integration
	gcovr --root . --object-directory build-cov --filter 'user/' --txt --print-summary \
		-o build-cov/coverage.txt
	@cat build-cov/coverage.txt

# The kernel program's cost per packet beside an empty program (tests/bench/bpf_cost.c).
# Its floors (any port filter, any per-packet copy into the ring): tests/bench/floor.bpf.c.
$(BUILD)/bpf_cost: tests/bench/bpf_cost.c $(BUILD)/capture.skel.h $(BUILD)/floor.bpf.o
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

$(BUILD)/floor.bpf.o: tests/bench/floor.bpf.c vmlinux/vmlinux.h | $(BUILD)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

bench: $(BUILD)/pgshadow $(BUILD)/bpf_cost
	$(BUILD)/bpf_cost run
	$(PYTHON) tests/bench/capture.py
	$(PYTHON) tests/bench/overhead.py
	$(PYTHON) tests/bench/tls.py
	$(PYTHON) tests/bench/replay.py
	$(PYTHON) tests/bench/mirror_clock.py
	$(PYTHON) tests/bench/contention.py
	$(PYTHON) tests/bench/scale.py
	$(PYTHON) tests/bench/soak.py

demo: deps all
	$(PYTHON) tests/demo.py

format:
	clang-format -i user/*.c user/*.h include/*.h bpf/*.c tests/integration/*.bpf.c tests/bench/*.bpf.c tests/unit/*.[ch]

format-check:
	clang-format --dry-run --Werror user/*.c user/*.h include/*.h bpf/*.c tests/integration/*.bpf.c tests/bench/*.bpf.c tests/unit/*.[ch]

clean:
	rm -rf $(BUILD)

# ---- fuzzing (tests/fuzz/, clang's libFuzzer with ASan and UBSan) ----
# `make fuzz` runs each harness FUZZ_SECONDS (60) from its corpus, adding what it finds;
# `make fuzz-regress` (part of `make test`) runs every harness over its corpus once.
FUZZ_BUILD   := $(BUILD)/fuzz
FUZZ_SECONDS ?= 60
FUZZ_FLAGS   := -g -O1 -std=gnu11 -fno-omit-frame-pointer -Iinclude -I$(BUILD) \
                -I/usr/include/postgresql -I/usr/include/pg_query
FUZZ_TARGETS := fuzz_wire fuzz_stream fuzz_admin fuzz_config fuzz_parsers
FUZZ_SRC_fuzz_wire    := user/session.c user/pgwire.c
FUZZ_LIB_fuzz_wire    := -lxxhash
FUZZ_SRC_fuzz_stream  := user/tcpstream.c user/session.c user/pgwire.c
FUZZ_LIB_fuzz_stream  := -lxxhash
FUZZ_SRC_fuzz_admin   := user/admin.c user/buf.c user/http.c user/stats.c user/webauth.c \
                         user/scram.c
FUZZ_LIB_fuzz_admin   := -lmicrohttpd -lcrypt -lcrypto -lxxhash -lm -lpthread
FUZZ_SRC_fuzz_config  := user/config.c
FUZZ_LIB_fuzz_config  := -linih -lm -lpthread
FUZZ_SRC_fuzz_parsers := user/readiness.c user/stats.c user/buf.c user/fleet.c user/statefile.c \
                         user/webauth.c user/redact.c user/authblank.c user/http.c \
                         user/procnet.c
FUZZ_LIB_fuzz_parsers := -lcjson -lmicrohttpd -lcrypt -lxxhash -lm -lpthread

# the harnesses' sources, named by target: $$(FUZZ_SRC_$$*) after the second expansion
.SECONDEXPANSION:
$(FUZZ_BUILD)/%: tests/fuzz/%.c $$(FUZZ_SRC_$$*) include/*.h tests/fuzz/*.h
	@mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined $< $(FUZZ_SRC_$*) $(FUZZ_LIB_$*) -o $@

.PHONY: fuzz fuzz-regress
fuzz: $(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS))
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p tests/fuzz/corpus/$$t; \
		echo "== $$t ($(FUZZ_SECONDS) s)"; \
		$(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
			-artifact_prefix=$(FUZZ_BUILD)/$$t- tests/fuzz/corpus/$$t; \
	done

fuzz-regress: $(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS))
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $$t: $$(ls tests/fuzz/corpus/$$t | wc -l) inputs"; \
		$(FUZZ_BUILD)/$$t -runs=0 tests/fuzz/corpus/$$t 2>&1 | tail -1; \
	done
