/* Fuzz target: the migration record parser (bytes from disk). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mig_record r;
	char err[256];

	if (record_parse((const char *)data, size, &r, err, sizeof(err)) == 0) {
		/* A record that parses names a side and an id that is a file name. */
		if (!r.id[0] || strchr(r.id, '/') ||
		    (strcmp(r.side, "send") && strcmp(r.side, "recv")))
			__builtin_trap();
	}
	return 0;
}
