/*
 * Fuzz target: the receiver's handling of a sender's frames (BLOCKS,
 * STREAM, PAGES with every encoding, HASHDATA after its own NEEDs, BASE,
 * DECISION, ...), the state machine behind `tsubame recv`, not only the
 * decoders. The input is a sequence of frames as on the wire.
 */
#include <stddef.h>
#include <stdint.h>

#include "proxy/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(void)proxy_recv_fuzz(data, size);
	return 0;
}
