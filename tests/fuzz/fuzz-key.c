/* Fuzz target: the key file parser (bytes from disk; one key or two, tenants=). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "wire/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_key k;

	memset(&k, 0, sizeof(k));
	if (wire_key_parse((const char *)data, size, &k) == 0) {
		/* A key that parses has a printable id and a full secret. */
		if (!k.id[0] || strlen(k.id) > WIRE_KEY_ID_MAX)
			__builtin_trap();
		/* A second key (rollover) has an id of its own. */
		if (k.has_alt && (!k.alt_id[0] || strlen(k.alt_id) > WIRE_KEY_ID_MAX ||
				  !strcmp(k.id, k.alt_id)))
			__builtin_trap();
		/* Tenant bindings that parse are valid lists, and allow what they name. */
		if (!wire_tenants_valid(k.tenants, strlen(k.tenants)) ||
		    (k.has_alt && !wire_tenants_valid(k.alt_tenants, strlen(k.alt_tenants))))
			__builtin_trap();
		if (k.tenants[0] && !wire_tenants_allow(k.tenants, k.tenants,
							strcspn(k.tenants, ",")))
			__builtin_trap();
	}
	wire_key_wipe(&k);
	return 0;
}
