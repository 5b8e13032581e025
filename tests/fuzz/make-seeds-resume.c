/*
 * Writes the seed corpus of fuzz-resume: what either end of a resumed
 * postcopy connection may receive (src/proxy/resume.c), built with the
 * real encoders. Each seed: one byte (bit 0: the fuzzed end is the sender,
 * bit 1: its QEMU already closed), then frames.
 *
 *   ninja -C build tests/fuzz/make-seeds-resume
 *   build/tests/fuzz/make-seeds-resume tests/fuzz/corpus/resume
 *
 * Ordinary ends (a receiver taking STREAM, PING and DONE; a sender taking
 * RETURN, PONG and OUTCOME after its QEMU closed) and hostile ones (DONE
 * or OUTCOME where they do not belong, ERROR, a message of the main
 * connection, a damaged zstd run, a truncated frame).
 */
#include "seedfile.h"
#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "wire/codec.h"
#include "wire/wire.h"

static const char *dir;
static struct tsb_buf out;

static void check(int r, const char *what)
{
	seed_check("make-seeds-resume", r, what);
}

static void start(uint8_t who)
{
	tsb_buf_reset(&out);
	check(tsb_buf_append(&out, &who, 1), "role");
}

static void save(const char *name)
{
	check(out.err, name);
	seed_write("make-seeds-resume", dir, name, out.data, out.len);
}

/* Stream bytes as QEMU would resume: a RECV_BITMAP command, then a page. */
static void stream(struct wire_zstd *z)
{
	uint8_t b[4200] = { 0x08, 0x00, 0x07, 0x00, 0x07, 0x06, 'p', 'c', '.', 'r', 'a', 'm' };

	memset(b + 64, 0x5a, sizeof(b) - 64);
	check(wire_encode_run(&out, WIRE_MSG_STREAM, b, sizeof(b), z), "stream");
}

/* A return path as after a recovery: RECV_BITMAP's header, RESUME_ACK. */
static void ret(struct wire_zstd *z)
{
	uint8_t rp[] = { 0, 5, 0, 7, 6, 'p', 'c', '.', 'r', 'a', 'm', 0, 6, 0, 4, 0, 0, 0, 1 };

	check(wire_encode_run(&out, WIRE_MSG_RETURN, rp, sizeof(rp), z), "return");
}

int main(int argc, char **argv)
{
	struct wire_zstd *z;

	if (argc != 2) {
		fprintf(stderr, "usage: make-seeds-resume DIR\n");
		return 2;
	}
	dir = argv[1];
	tsb_buf_init(&out);
	z = wire_zstd_new(1);
	check(z ? 0 : -1, "zstd");

	start(0);	/* receiver */
	stream(NULL);
	check(wire_encode_u64(&out, WIRE_MSG_PING, 0), "ping");
	stream(z);
	check(wire_encode_status(&out, WIRE_MSG_DONE, WIRE_CODE_OK, "resumed"), "done");
	save("receiver-ok");

	start(3);	/* sender, its QEMU closed */
	ret(NULL);
	check(wire_encode_u64(&out, WIRE_MSG_PONG, 0), "pong");
	ret(z);
	check(wire_encode_status(&out, WIRE_MSG_OUTCOME, WIRE_OUTCOME_RUNNING,
				 "destination running, resumed"), "outcome");
	save("sender-ok");

	start(1);	/* sender, QEMU still open: OUTCOME too early */
	ret(NULL);
	check(wire_encode_status(&out, WIRE_MSG_OUTCOME, WIRE_OUTCOME_RUNNING, "early"),
	      "outcome");
	save("sender-early-outcome");

	start(1);	/* a receiver that says DONE, then ERROR */
	check(wire_encode_status(&out, WIRE_MSG_DONE, WIRE_CODE_OK, "x"), "done");
	check(wire_encode_status(&out, WIRE_MSG_ERROR, WIRE_CODE_QEMU, "qemu failed"), "error");
	save("sender-done-error");

	start(0);	/* a main connection's message on a resumed one */
	check(wire_encode_u64(&out, WIRE_MSG_ACK, 4096), "ack");
	save("receiver-ack");

	start(0);	/* a damaged zstd run, then a truncated frame */
	stream(z);
	if (out.len > 40)
		out.data[out.len - 5] ^= 0xff;
	stream(NULL);
	out.len -= 100;
	save("receiver-damaged");

	wire_zstd_free(z);
	tsb_buf_fini(&out);
	return 0;
}
