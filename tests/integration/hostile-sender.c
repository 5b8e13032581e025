/*
 * A sender that holds the key but not the rules: it speaks tsubame's wire
 * protocol to a waiting `tsubame recv` and sends what an honest sender
 * never does, to check that the receiver refuses it (test 37).
 *
 *   hostile-sender --to HOST:PORT --key FILE --scenario NAME
 *
 * huge-blocks    BLOCKS naming 16 TiB of RAM
 * backlog-flood  a REF the receiver cannot resolve (so it asks NEED and
 *                waits), then 400 MiB of STREAM without answering
 * forged-decision  -m ID: a commit DECISION for migration ID, which a
 *                receiver in doubt must take only from the credential the
 *                migration began with (waits up to 20 s for the port)
 * stranger-lane  -m ID: a connection that claims to be another lane of
 *                migration ID, which a receiver must refuse unless ID is
 *                the migration it receives (waits up to 20 s for the port)
 *
 * Exit 0: the receiver refused (closed or said ERROR) before the scenario
 * was through; 1: it took everything; 2: usage or setup error.
 */
#include "common/util.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int expect_refusal(struct wire_conn *c, const char *what)
{
	struct wire_msg m;
	int r;

	for (;;) {
		r = wire_conn_read_msg(c, WIRE_ROLE_RECEIVER, &m);
		if (r <= 0) {
			printf("refused: the receiver closed the connection after %s\n", what);
			return 0;
		}
		if (m.type == WIRE_MSG_ERROR) {
			printf("refused: the receiver said \"%.*s\" after %s\n",
			       (int)m.u.status.text.len, m.u.status.text.p, what);
			return 0;
		}
	}
}

static int send_blocks(struct wire_conn *c, uint64_t used_length)
{
	struct wire_block b = { .index = 0, .name = { .p = "pc.ram", .len = 6 },
				.used_length = used_length };
	struct tsb_buf buf;
	int r;

	tsb_buf_init(&buf);
	r = wire_encode_blocks(&buf, &b, 1);
	if (r == 0)
		r = wire_conn_write(c, buf.data, buf.len);
	tsb_buf_fini(&buf);
	return r;
}

static int huge_blocks(struct wire_conn *c)
{
	if (send_blocks(c, 1ull << 44) < 0)
		return 0;
	wire_conn_set_timeout(c, 5000);
	return expect_refusal(c, "16 TiB of BLOCKS") == 0 ? 0 : 1;
}

static int backlog_flood(struct wire_conn *c)
{
	struct wire_pages_builder pb;
	uint8_t hash[WIRE_HASH_LEN];
	struct tsb_buf buf;
	struct wire_msg m;
	static uint8_t run[1u << 20];
	unsigned mib;
	int r;

	RAND_bytes(hash, sizeof(hash));
	RAND_bytes(run, sizeof(run));
	if (send_blocks(c, 64ull << 20) < 0)
		return 0;
	tsb_buf_init(&buf);
	wire_pages_builder_init(&pb, 4096);
	r = wire_pages_add_ref(&pb, 0, 0x08, 0, WIRE_ENC_REF, hash);
	if (r == 0)
		r = wire_pages_encode(&pb, &buf, NULL);
	if (r == 0)
		r = wire_conn_write(c, buf.data, buf.len);
	wire_pages_builder_fini(&pb);
	if (r < 0) {
		tsb_buf_fini(&buf);
		return 0;
	}
	/* The receiver cannot resolve that REF: it asks, and waits. */
	do {
		r = wire_conn_read_msg(c, WIRE_ROLE_RECEIVER, &m);
	} while (r > 0 && m.type != WIRE_MSG_NEED);
	if (r <= 0) {
		fprintf(stderr, "hostile-sender: no NEED came\n");
		tsb_buf_fini(&buf);
		return 2;
	}
	for (mib = 0; mib < 400; mib++) {
		tsb_buf_reset(&buf);
		if (wire_encode_run(&buf, WIRE_MSG_STREAM, run, sizeof(run), NULL) < 0 ||
		    wire_conn_write(c, buf.data, buf.len) < 0) {
			printf("refused: the receiver stopped taking frames after %u MiB\n", mib);
			tsb_buf_fini(&buf);
			return 0;
		}
	}
	tsb_buf_fini(&buf);
	wire_conn_set_timeout(c, 5000);
	return expect_refusal(c, "400 MiB during a NEED") == 0 ? 0 : 1;
}

/*
 * After HELLO a receiver refuses with ERROR at once; one that lets us in
 * waits for our DECISION instead (not sent: the test must stay settleable).
 */
static int forged_decision(struct wire_conn *c)
{
	struct wire_msg m;
	int r;

	wire_conn_set_timeout(c, 3000);
	r = wire_conn_read_msg(c, WIRE_ROLE_RECEIVER, &m);
	if (r > 0 && m.type == WIRE_MSG_ERROR) {
		printf("refused: the receiver said \"%.*s\"\n", (int)m.u.status.text.len,
		       m.u.status.text.p);
		/* Refused for naming another migration would prove nothing. */
		return memmem(m.u.status.text.p, m.u.status.text.len, "nothing else is accepted",
			      24) ? 2 : 0;
	}
	if (r == -ETIMEDOUT) {
		printf("the receiver let in the connection of a forged decision\n");
		return 1;
	}
	printf("unexpected: %d %s\n", r, r < 0 ? wire_conn_errmsg(c) : wire_msg_name(m.type));
	return 2;
}

/* After HELLO a receiver refuses a stranger's lane with ERROR at once. */
static int stranger_lane(struct wire_conn *c)
{
	struct wire_msg m;
	int r;

	(void)wire_conn_send_lane(c, 1, 3);
	wire_conn_set_timeout(c, 3000);
	r = wire_conn_read_msg(c, WIRE_ROLE_RECEIVER, &m);
	if (r > 0 && m.type == WIRE_MSG_ERROR) {
		printf("refused: the receiver said \"%.*s\"\n", (int)m.u.status.text.len,
		       m.u.status.text.p);
		return memmem(m.u.status.text.p, m.u.status.text.len, "lanes of migration", 18) ?
		       0 : 2;
	}
	if (r == -ETIMEDOUT) {
		printf("the receiver took a stranger as a lane of its migration\n");
		return 1;
	}
	printf("unexpected: %d %s\n", r, r < 0 ? wire_conn_errmsg(c) : wire_msg_name(m.type));
	return 2;
}

/* Connects, retrying while the port is closed (a receiver about to listen). */
static int connect_retry(const char *host, const char *port, bool retry, int *fd, char *msg,
			 size_t len)
{
	uint64_t end = tsb_now_ns() + 20000000000ull;
	int r;

	while ((r = wire_tcp_connect(host, port, 5000, fd, msg, len)) == -ECONNREFUSED &&
	       retry && tsb_now_ns() < end)
		usleep(50000);
	return r;
}

int main(int argc, char **argv)
{
	const char *to = NULL, *key_path = NULL, *scenario = NULL;
	bool forge = false, lane = false;
	char host[256], port[32], msg[256];
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_SENDER, .site = "hostile", .vm = "hostile",
		.migration = "00112233445566778899aabbccddeeff",
		.caps = WIRE_CAP_REF | WIRE_CAP_ACK | WIRE_CAP_COMMIT,
	};
	struct wire_hello peer;
	struct wire_key key = { 0 };
	struct wire_tls *tls;
	struct wire_conn *c;
	int opt, fd, rc = 2;

	while ((opt = getopt(argc, argv, "t:k:s:m:")) != -1) {
		if (opt == 'm')
			hello.migration = optarg;
		else if (opt == 't')
			to = optarg;
		else if (opt == 'k')
			key_path = optarg;
		else if (opt == 's')
			scenario = optarg;
		else
			return 2;
	}
	if (!to || !key_path || !scenario ||
	    tsb_split_hostport(to, host, sizeof(host), port, sizeof(port)) < 0) {
		fprintf(stderr, "usage: hostile-sender -t HOST:PORT -k KEYFILE -s SCENARIO\n");
		return 2;
	}
	tls = wire_tls_new(WIRE_TLS_CLIENT);
	if (!tls || wire_key_load(key_path, &key, msg, sizeof(msg)) < 0 ||
	    wire_tls_set_psk(tls, &key) < 0) {
		fprintf(stderr, "hostile-sender: key: %s\n", msg);
		goto out;
	}
	forge = !strcmp(scenario, "forged-decision");
	lane = !strcmp(scenario, "stranger-lane");
	if (forge)
		hello.caps = WIRE_CAP_COMMIT | WIRE_CAP_RESOLVE;
	if (lane)
		hello.caps = WIRE_CAP_LANES;
	if (connect_retry(host, port, forge || lane, &fd, msg, sizeof(msg)) < 0) {
		fprintf(stderr, "hostile-sender: %s\n", msg);
		goto out;
	}
	c = wire_conn_new_take(tls, fd);
	if (!c)
		goto out;
	wire_conn_set_timeout(c, 30000);
	if (wire_conn_handshake(c, 10000) < 0) {
		fprintf(stderr, "hostile-sender: %s\n", wire_conn_errmsg(c));
	} else if (wire_conn_hello(c, &hello, &peer) < 0) {
		/* Refused at HELLO: the outcome a forged decision or lane must get. */
		printf("%s: %s\n", forge || lane ? "refused" : "HELLO failed", wire_conn_errmsg(c));
		rc = (forge && !strstr(wire_conn_errmsg(c), "nothing else is accepted")) ||
		     (lane && strstr(wire_conn_errmsg(c), "lanes of migration")) ? 0 : 2;
	} else if (lane) {
		rc = stranger_lane(c);
	} else if (forge) {
		rc = forged_decision(c);
	} else if (!strcmp(scenario, "huge-blocks"))
		rc = huge_blocks(c);
	else if (!strcmp(scenario, "backlog-flood"))
		rc = backlog_flood(c);
	else
		fprintf(stderr, "hostile-sender: unknown scenario '%s'\n", scenario);
	wire_conn_free(c);
out:
	wire_tls_free(tls);
	wire_key_wipe(&key);
	return rc;
}
