/* Fuzz target: binding messages (UDP from anyone who can reach an agent). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "net/net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The key the seed corpus was made with (tests/fuzz/corpus/net-bmsg). */
static const uint8_t key[MOB_KEY_LEN] = "tsubame-fuzz-site-key-0123456789";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t buf[MOB_BMSG_MAX];
	struct mob_bmsg m, m2;
	int n;

	(void)mob_bmsg_decode(data, size, key, &m);
	if (mob_bmsg_decode(data, size, NULL, &m) != 0)
		return 0;
	/* Whatever decodes re-encodes, and decodes to the same message. */
	n = mob_bmsg_encode(&m, key, buf, sizeof(buf));
	if (n < 0 || mob_bmsg_decode(buf, (size_t)n, key, &m2) != 0 ||
	    m2.seq != m.seq || m2.n_addrs != m.n_addrs ||
	    strcmp(m2.vm, m.vm) || memcmp(m2.mac, m.mac, 6))
		__builtin_trap();
	return 0;
}
