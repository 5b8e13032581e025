/* Fuzz target: the content filter parser (bytes from the WAN, in SUMMARY). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tsb_filter f;
	uint8_t probe[TSB_FILTER_HASH_LEN] = { 0 }, *out;

	if (tsb_filter_parse(&f, data, size) == 0) {
		/* A filter that parses re-serializes to the same bytes. */
		if (tsb_filter_size(&f) != size)
			__builtin_trap();
		out = malloc(size);
		if (out) {
			tsb_filter_write(&f, out);
			if (memcmp(out, data, size))
				__builtin_trap();
			free(out);
		}
		memcpy(probe, data, size < sizeof(probe) ? size : sizeof(probe));
		(void)tsb_filter_maybe(&f, probe);
		tsb_filter_fini(&f);
	}
	return 0;
}
