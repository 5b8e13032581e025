/*
 * Fuzz target: a resumed postcopy connection's messages (STREAM, RETURN,
 * PING, PONG, DONE, OUTCOME, ERROR and whatever else a peer sends), as
 * either end handles them (src/proxy/resume.c). The input is one byte
 * (the end we play) and then frames as on the wire.
 */
#include <stddef.h>
#include <stdint.h>

#include "proxy/resume.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(void)resume_relay_fuzz(data, size);
	return 0;
}
