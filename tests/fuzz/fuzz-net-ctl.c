/* Fuzz target: the mobility agent's control requests (JSON lines). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "net/net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mob_ctl_req q;
	char err[160];

	if (mob_ctl_parse((const char *)data, size, &q, err, sizeof(err)) == 0) {
		if (q.n_addrs > MOB_ADDRS_MAX || strlen(q.vm) > MOB_ID_MAX)
			__builtin_trap();
	}
	return 0;
}
