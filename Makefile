# Thin wrapper: the real build is meson (see HACKING.md).
comma := ,
BUILD ?= build
BUILD_SAN ?= build-san
GUEST ?= cache/guest

.PHONY: all deps build build-san guest check demo bench clean

# $(call quiet,COMMAND): runs COMMAND with its output in a file, shown (and
# the step failed) only if COMMAND fails: never hides an error.
quiet = log=$$(mktemp) && if $(1) >$$log 2>&1; then rm -f $$log; \
	else rc=$$?; echo "make: '$(1)' failed:" >&2; cat $$log >&2; rm -f $$log; exit $$rc; fi

all: build

deps:
	@scripts/install-deps

$(BUILD)/build.ninja:
	@$(call quiet,meson setup $(BUILD))

$(BUILD_SAN)/build.ninja:
	@$(call quiet,meson setup $(BUILD_SAN) -Db_sanitize=address$(comma)undefined -Db_lundef=false)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

build-san: deps $(BUILD_SAN)/build.ninja
	ninja -C $(BUILD_SAN)

guest: deps
	@scripts/build-guest --out $(GUEST) >/dev/null

# Every test: unit and fuzz-corpus replays in the normal and the sanitizer
# build, bounded libFuzzer runs, and integration tests with real QEMU guests
# run against the sanitizer build.
check: build build-san guest
	@scripts/run-checks $(BUILD) $(BUILD_SAN)

demo: build guest
	@scripts/demo $(BUILD)

bench: build guest
	@bench/run --build $(BUILD)

clean:
	rm -rf $(BUILD) $(BUILD_SAN)
