# Thin wrapper: the real build is meson (see HACKING.md).
BUILD ?= build
BUILD_SAN ?= build-san
GUEST ?= cache/guest

.PHONY: all deps build build-san guest check demo bench clean

all: build

deps:
	@scripts/install-deps

$(BUILD)/build.ninja:
	meson setup $(BUILD) >/dev/null

$(BUILD_SAN)/build.ninja:
	meson setup $(BUILD_SAN) -Db_sanitize=address,undefined -Db_lundef=false >/dev/null

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
