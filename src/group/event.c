/*
 * The lines a group's agent on another host sends its coordinator over
 * ssh (internal.h): a VM's tick, and its end with its report. Bytes from
 * another host: every field is checked (fuzz target fuzz-group-event).
 */
#include "group/internal.h"

#include <errno.h>
#include <string.h>

/* Copies a string field of at most len - 1 bytes; false if absent or bad. */
static bool get_str(json_t *o, const char *key, char *out, size_t len)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_string(v) || json_string_length(v) >= len ||
	    strlen(json_string_value(v)) != json_string_length(v))
		return false;
	memcpy(out, json_string_value(v), json_string_length(v) + 1);
	return true;
}

static uint64_t get_u64(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v)
							       : 0;
}

int group_event_parse(const char *line, size_t len, struct group_event *ev)
{
	char type[16];
	json_t *o;
	int r = -EBADMSG;

	memset(ev, 0, sizeof(*ev));
	if (len > GROUP_EVENT_MAX)
		return -EMSGSIZE;
	o = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(o) || !get_str(o, "event", type, sizeof(type)) ||
	    !get_str(o, "name", ev->name, sizeof(ev->name)) || !store_id_valid(ev->name))
		goto out;
	if (!strcmp(type, "tick")) {
		ev->type = GROUP_EVENT_TICK;
		if (!get_str(o, "status", ev->status, sizeof(ev->status)))
			goto out;
		ev->pass = (unsigned)(get_u64(o, "pass") & 0xffffffffu);
		ev->ram_total = get_u64(o, "ram_total");
		ev->ram_remaining = get_u64(o, "ram_remaining");
		if (ev->ram_remaining > ev->ram_total)
			ev->ram_remaining = ev->ram_total;
		ev->wan_out = get_u64(o, "wan_out");
	} else if (!strcmp(type, "vm-end")) {
		char phase[24];
		json_t *rep = json_object_get(o, "report");

		ev->type = GROUP_EVENT_END;
		if (!get_str(o, "phase", phase, sizeof(phase)))
			goto out;
		if (!strcmp(phase, "moved"))
			ev->phase = PHASE_MOVED;
		else if (!strcmp(phase, "moved-earlier"))
			ev->phase = PHASE_SKIPPED;
		else if (!strcmp(phase, "failed"))
			ev->phase = PHASE_FAILED;
		else
			goto out;
		if (!get_str(o, "why", ev->why, sizeof(ev->why)))
			ev->why[0] = 0;
		if (!get_str(o, "outcome", ev->outcome, sizeof(ev->outcome)))
			goto out;
		if (json_is_object(rep))
			ev->report = json_incref(rep);
	} else {
		goto out;
	}
	r = 0;
out:
	json_decref(o);
	return r;
}

json_t *group_event_tick(const char *name, const struct proxy_tick *t)
{
	return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "event", "tick", "name", name,
			 "status", t->status ? t->status : "", "pass", (json_int_t)t->pass,
			 "ram_total", (json_int_t)t->ram_total,
			 "ram_remaining", (json_int_t)t->ram_remaining,
			 "wan_out", (json_int_t)t->wan_out);
}

int group_command_parse(const char *line, size_t len, struct group_command *c)
{
	json_t *o, *v;
	int r = -EBADMSG;

	memset(c, 0, sizeof(*c));
	if (len > GROUP_COMMAND_MAX)
		return -EBADMSG;
	o = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(o) || json_object_size(o) != 1)
		goto out;
	if ((v = json_object_get(o, "start"))) {
		if (!get_str(o, "start", c->start, sizeof(c->start)) || !store_id_valid(c->start))
			goto out;
	} else if ((v = json_object_get(o, "bandwidth"))) {
		if (!json_is_integer(v) || json_integer_value(v) <= 0)
			goto out;
		c->bandwidth = (uint64_t)json_integer_value(v);
	} else {
		goto out;
	}
	r = 0;
out:
	json_decref(o);
	return r;
}
