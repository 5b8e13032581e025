/*
 * Fuzz target: the sender's handling of the receiver's messages (ACK,
 * NEED answered with HASHDATA, RETURN, PREPARED, OUTCOME, DONE, ERROR,
 * CANCEL, ...), the return thread behind `tsubame send`, not only the
 * decoders. The input is a sequence of frames as on the wire; the sender
 * aborts when a handler breaks one of its promises (src/proxy/send.c,
 * proxy_send_fuzz). Seeds: make-seeds-send.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/log.h"
#include "proxy/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;

	if (!quiet) {
		quiet = 1;
		tsb_log_set_level(getenv("TSB_FUZZ_TRACE") ? TSB_LOG_DEBUG : TSB_LOG_ERROR);
	}
	(void)proxy_send_fuzz(data, size);
	return 0;
}
