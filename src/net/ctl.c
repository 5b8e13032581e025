/*
 * net: the agent's control protocol, one JSON object per line:
 *
 *   {"op":"arrive","vm":ID,"mac":MAC,"addrs":[IP...],"home":SITE,
 *    "lifetime":S,"seq":N,"wait_ms":MS,"when_seen":BOOL}
 *   {"op":"depart","vm":ID}
 *   {"op":"bind","vm":ID,"mac":MAC,"addrs":[...],"home":SITE,
 *    "current":SITE,"lifetime":S}
 *   {"op":"unbind","vm":ID}
 *   {"op":"status"}
 *
 * Replies are one JSON object per line with "ok": true|false.
 */
#include "net/net.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

static int bad(char *err, size_t errlen, const char *what)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", what);
	return -EBADMSG;
}

static int copy_name(const char *s, char *out, size_t max)
{
	if (!s)
		return 0;
	if (!mob_name_ok(s, max))
		return -EBADMSG;
	memcpy(out, s, strlen(s) + 1);
	return 0;
}

int mob_ctl_parse(const char *line, size_t len, struct mob_ctl_req *ret,
		  char *err, size_t errlen)
{
	const char *op = NULL, *vm = NULL, *mac = NULL, *home = NULL;
	const char *current = NULL;
	json_int_t lifetime = 0, seq = 0, wait_ms = 0;
	int when_seen = 0;
	json_t *root, *addrs = NULL;
	struct mob_ctl_req q;
	json_error_t jerr;
	int rc = -EBADMSG;
	size_t i;

	if (len > MOB_CTL_LINE_MAX) {
		bad(err, errlen, "request line too long");
		return -EMSGSIZE;
	}
	memset(&q, 0, sizeof(q));
	root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return bad(err, errlen, "request is not valid JSON");
	if (json_unpack_ex(root, &jerr, 0,
			   "{s:s, s?s, s?s, s?o, s?s, s?s, s?I, s?I, s?I, s?b}",
			   "op", &op, "vm", &vm, "mac", &mac, "addrs", &addrs,
			   "home", &home, "current", &current,
			   "lifetime", &lifetime, "seq", &seq,
			   "wait_ms", &wait_ms, "when_seen", &when_seen)) {
		bad(err, errlen, "request fields have the wrong types");
		goto out;
	}
	if (!strcmp(op, "arrive"))
		q.op = MOB_CTL_ARRIVE;
	else if (!strcmp(op, "depart"))
		q.op = MOB_CTL_DEPART;
	else if (!strcmp(op, "bind"))
		q.op = MOB_CTL_BIND;
	else if (!strcmp(op, "unbind"))
		q.op = MOB_CTL_UNBIND;
	else if (!strcmp(op, "status"))
		q.op = MOB_CTL_STATUS;
	else {
		bad(err, errlen, "unknown op");
		goto out;
	}
	if (copy_name(vm, q.vm, MOB_ID_MAX) ||
	    copy_name(home, q.home, MOB_SITE_MAX) ||
	    copy_name(current, q.current, MOB_SITE_MAX)) {
		bad(err, errlen, "vm, home and current are 1..64 (vm) or 1..32 of [A-Za-z0-9._-]");
		goto out;
	}
	if (mac) {
		if (mob_parse_mac(mac, q.mac)) {
			bad(err, errlen, "mac is not xx:xx:xx:xx:xx:xx");
			goto out;
		}
		q.has_mac = true;
	}
	if (addrs) {
		if (!json_is_array(addrs) ||
		    json_array_size(addrs) > MOB_ADDRS_MAX) {
			bad(err, errlen, "addrs must be an array of at most 8 addresses");
			goto out;
		}
		for (i = 0; i < json_array_size(addrs); i++) {
			const char *s = json_string_value(json_array_get(addrs, i));

			if (!s || mob_parse_addr(s, &q.addrs[i])) {
				bad(err, errlen, "addrs holds something that is not an IP address");
				goto out;
			}
		}
		q.n_addrs = (unsigned)json_array_size(addrs);
	}
	if (lifetime < 0 || lifetime > 86400 || seq < 0 || seq > UINT32_MAX ||
	    wait_ms < 0 || wait_ms > 60000) {
		bad(err, errlen, "lifetime (0..86400), seq or wait_ms (0..60000) out of range");
		goto out;
	}
	q.lifetime = (uint32_t)lifetime;
	q.seq = (uint32_t)seq;
	q.wait_ms = (uint32_t)wait_ms;
	q.when_seen = when_seen;
	if (q.op != MOB_CTL_STATUS && !q.vm[0]) {
		bad(err, errlen, "vm is required");
		goto out;
	}
	if ((q.op == MOB_CTL_ARRIVE || q.op == MOB_CTL_BIND) &&
	    (!q.has_mac || !q.home[0])) {
		bad(err, errlen, "arrive and bind need mac and home");
		goto out;
	}
	if (q.op == MOB_CTL_BIND && !q.current[0]) {
		bad(err, errlen, "bind needs current");
		goto out;
	}
	*ret = q;
	rc = 0;
out:
	json_decref(root);
	return rc;
}
