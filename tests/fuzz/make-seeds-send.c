/*
 * Writes the seed corpus of fuzz-send: what a receiver could send on the
 * migration's connection after HELLO (and SUMMARY), built with the real
 * encoders.
 *
 *   ninja -C build tests/fuzz/make-seeds-send
 *   build/tests/fuzz/make-seeds-send tests/fuzz/corpus/send
 *
 * The contents are the fuzzing sender's (proxy_fuzz_content() in
 * src/proxy/internal.h): 2-9 it can serve, 0-1 it evicted, 10 only a
 * store would hold, 11 is not of this migration. Besides an ordinary end
 * (ACKs, NEED answered, RETURN, DONE, PREPARED, OUTCOME) there are
 * hostile ones: NEEDs beyond what the sender holds or handled, ACKs that
 * go back or wrap, ERROR after PREPARED, messages a receiver may not send,
 * truncated frames.
 */
#include "seedfile.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "proxy/internal.h"
#include "wire/codec.h"
#include "wire/wire.h"

static const char *dir;
static struct tsb_buf out;
static struct wire_zstd *z;
static uint8_t hashes[PROXY_FUZZ_CONTENTS][WIRE_HASH_LEN];

static void check(int r, const char *what)
{
	seed_check("make-seeds-send", r, what);
}

static void save(const char *name, size_t len)
{
	check(out.err, name);
	seed_write("make-seeds-send", dir, name, out.data, len);
	tsb_buf_reset(&out);
}

/* NEED for the contents listed (-1 ends the list). */
static void need(const int *which)
{
	uint8_t h[16][WIRE_HASH_LEN];
	size_t n = 0;

	for (; *which >= 0; which++)
		memcpy(h[n++], hashes[*which], WIRE_HASH_LEN);
	check(wire_encode_need(&out, (const uint8_t (*)[WIRE_HASH_LEN])h, n), "need");
}

static void ack(uint64_t v)
{
	check(wire_encode_u64(&out, WIRE_MSG_ACK, v), "ack");
}

static void status(uint8_t type, uint32_t code, const char *text)
{
	check(wire_encode_status(&out, type, code, text), "status");
}

/* QEMU's return path: a few MIG_RP_MSG records (SHUT, PONG), raw or zstd. */
static void ret(struct wire_zstd *zz)
{
	uint8_t rp[64] = { 0, 3, 0, 4, 0, 0, 0, 7 };	/* PONG 7 */

	for (size_t i = 8; i < sizeof(rp); i += 8)
		memcpy(rp + i, rp, 8);
	check(wire_encode_run(&out, WIRE_MSG_RETURN, rp, sizeof(rp), zz), "return");
}

int main(int argc, char **argv)
{
	uint8_t page[4096], unknown[WIRE_HASH_LEN];
	int k;

	if (argc != 2) {
		fprintf(stderr, "usage: make-seeds-send DIR\n");
		return 2;
	}
	dir = argv[1];
	tsb_buf_init(&out);
	z = wire_zstd_new(3);
	if (!z)
		return 1;
	for (k = 0; k < PROXY_FUZZ_CONTENTS; k++) {
		proxy_fuzz_content(k, page);
		check(wire_sha256(page, sizeof(page), hashes[k]), "sha256");
	}
	memset(unknown, 0x5a, sizeof(unknown));

	/* An ordinary migration's end, as a receiver sends it. */
	ack(512 << 10);
	need((const int[]){ 2, 3, 4, -1 });
	ack(1 << 20);
	ret(NULL);
	ack(3 << 20);
	ret(z);
	ack(5 << 20);
	status(WIRE_MSG_DONE, WIRE_CODE_OK, "");
	status(WIRE_MSG_PREPARED, 0, "");
	status(WIRE_MSG_OUTCOME, WIRE_OUTCOME_RUNNING, "destination running resume_ns=12345");
	save("ordinary", out.len);

	/* Every content it holds, twice over, in one NEED. */
	need((const int[]){ 2, 3, 4, 5, 6, 7, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2, -1 });
	need((const int[]){ 5, -1 });
	status(WIRE_MSG_DONE, WIRE_CODE_OK, "");
	save("need-held", out.len);

	/* Evicted from the cache, no store: the sender cannot serve it. */
	need((const int[]){ 3, 0, -1 });
	save("need-evicted", out.len);
	/* Left to a store the sender does not have. */
	need((const int[]){ 10, -1 });
	save("need-store", out.len);
	/* Held, but not this migration's: never served. */
	need((const int[]){ 2, 11, -1 });
	save("need-foreign", out.len);
	check(wire_encode_need(&out, (const uint8_t (*)[WIRE_HASH_LEN])&unknown, 1), "need");
	save("need-unknown", out.len);

	/* ACKs backwards, then at the top of the range. */
	ack(8 << 20);
	ack(1 << 20);
	ack(UINT64_MAX - 1);
	ack(UINT64_MAX);
	check(wire_encode_u64(&out, WIRE_MSG_PING, 1), "ping");
	check(wire_encode_u64(&out, WIRE_MSG_PONG, 2), "pong");
	save("ack-wrap", out.len);

	/* Holding the guest, the receiver reports an error, then fails. */
	ack(1 << 20);
	status(WIRE_MSG_PREPARED, 0, "");
	status(WIRE_MSG_ERROR, WIRE_CODE_QEMU, "destination QEMU died");
	status(WIRE_MSG_CANCEL, 0, "cancelled");
	status(WIRE_MSG_DONE, WIRE_CODE_QEMU, "load failed");
	status(WIRE_MSG_OUTCOME, WIRE_OUTCOME_DISCARDED, "destination discarded");
	save("prepared-error", out.len);

	status(WIRE_MSG_ERROR, WIRE_CODE_UNSUPPORTED, "stream construct not carried");
	save("error-unsupported", out.len);
	status(WIRE_MSG_CANCEL, 0, "operator cancelled");
	save("cancel", out.len);
	status(WIRE_MSG_DONE, WIRE_CODE_QEMU, "destination QEMU failed to load");
	save("done-failed", out.len);

	/* A sender's message from the receiver: refused. */
	ack(1 << 20);
	check(wire_encode_empty(&out, WIRE_MSG_SWITCHOVER), "switchover");
	save("wrong-role", out.len);

	/* A NEED cut short. */
	ack(1 << 20);
	need((const int[]){ 2, 3, -1 });
	save("truncated", out.len - 20);

	wire_zstd_free(z);
	tsb_buf_fini(&out);
	return 0;
}
