/* Fuzz target: a group's plan (a JSON file from the operator, group.h). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "group/group.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_string(const char *s)
{
	if (!s)
		return;
	if (!*s || strlen(s) > GROUP_MAX_STRING)
		__builtin_trap();
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct group_plan p;
	char err[256];

	if (group_plan_parse((const char *)data, size, &p, err, sizeof(err)) < 0) {
		if (!err[0] || p.vms)
			__builtin_trap();
		return 0;
	}
	/* What a plan hands out is bounded, named and unique. */
	if (!p.n_vms || p.n_vms > GROUP_MAX_VMS || p.concurrency > GROUP_MAX_CONCURRENCY)
		__builtin_trap();
	for (size_t i = 0; i < p.n_vms; i++) {
		if (!store_id_valid(p.vms[i].name))
			__builtin_trap();
		for (size_t j = 0; j < i; j++)
			if (!strcmp(p.vms[i].name, p.vms[j].name))
				__builtin_trap();
		check_string(p.vms[i].qmp);
		check_string(p.vms[i].to);
		check_string(p.vms[i].dest_qmp);
		check_string(p.vms[i].listen);
		check_string(p.vms[i].domain);
		check_string(p.vms[i].dest_uri);
		check_string(p.vms[i].connect);
		check_string(p.vms[i].dest_connect);
		check_string(p.vms[i].affinity);
		/* A libvirt VM's ports (the stream's and the disks' after it) exist and never meet. */
		if (p.vms[i].domain && (p.vms[i].qemu_port < 1 || p.vms[i].qemu_port > 65534))
			__builtin_trap();
		for (size_t j = 0; j < i && p.vms[i].domain; j++)
			if (p.vms[j].domain && p.vms[i].qemu_port + 1 >= p.vms[j].qemu_port &&
			    p.vms[j].qemu_port + 1 >= p.vms[i].qemu_port)
				__builtin_trap();
		if (p.vms[i].n_disks > GROUP_MAX_DISKS || (p.vms[i].n_disks && !p.vms[i].domain))
			__builtin_trap();
	}
	(void)group_plan_check(&p, true, err, sizeof(err));
	(void)group_plan_check(&p, false, err, sizeof(err));
	group_plan_free(&p);
	return 0;
}
