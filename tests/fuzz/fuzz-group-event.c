/*
 * Fuzz target: the lines between a group's coordinator and its agents on
 * other hosts (over ssh): events (agent -> coordinator) and commands
 * (coordinator -> agent), group/internal.h.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "group/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct group_command c;
	struct group_event ev;

	if (group_event_parse((const char *)data, size, &ev) == 0) {
		if (!store_id_valid(ev.name) || ev.ram_remaining > ev.ram_total ||
		    (ev.type != GROUP_EVENT_TICK && ev.type != GROUP_EVENT_END) ||
		    (ev.type == GROUP_EVENT_END && ev.phase != PHASE_MOVED &&
		     ev.phase != PHASE_SKIPPED && ev.phase != PHASE_FAILED) ||
		    strlen(ev.why) >= sizeof(ev.why) || strlen(ev.status) >= sizeof(ev.status))
			__builtin_trap();
		json_decref(ev.report);
	} else if (ev.report) {
		__builtin_trap();	/* nothing is handed out on a refusal */
	}
	if (group_command_parse((const char *)data, size, &c) == 0 &&
	    !!c.start[0] == !!c.bandwidth)
		__builtin_trap();	/* exactly one thing per command */
	return 0;
}
