/*
 * A migration that will not start after all (group send: its source
 * failed before it connected, or the group was interrupted first) tells
 * its receiver so, which would otherwise wait for it until its --timeout.
 */
#include "proxy/commit.h"
#include "proxy/content.h"
#include "proxy/internal.h"

#include "common/buf.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int proxy_send_withdraw(const struct proxy_send_options *o, const char *why, char *err,
			size_t errlen)
{
	char id[33];
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_SENDER, .caps = WIRE_CAP_COMMIT, .site = "source",
		.migration = id, .vm = o->vm_id, .tenant = o->c.tenant,
	};
	struct wire_tls *tls = NULL;
	struct wire_conn *c = NULL;
	struct wire_hello peer;
	struct tsb_buf b;
	int r;

	content_new_id(id);
	r = proxy_tls_setup(&o->c, WIRE_TLS_CLIENT, &tls, err, errlen);
	if (r < 0)
		return r;
	r = proxy_dial(tls, o->to, &hello, &c, &peer, err, errlen);
	if (r == 0) {
		tsb_buf_init(&b);
		r = wire_encode_status(&b, WIRE_MSG_CANCEL, WIRE_CODE_OK, why);
		if (r == 0)
			r = wire_conn_write(c, b.data, b.len);
		tsb_buf_fini(&b);
		if (r < 0)
			snprintf(err, errlen, "%s", wire_conn_errmsg(c)[0] ? wire_conn_errmsg(c) :
				 strerror(-r));
		else
			(void)wire_conn_close(c);
		wire_conn_free(c);
	}
	wire_tls_free(tls);
	return r;
}
