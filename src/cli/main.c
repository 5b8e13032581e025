#include "cli/cli.h"
#include "common/log.h"

#include <stdio.h>
#include <string.h>

struct command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{ "vm", cmd_vm, "start, stop and inspect QEMU guests" },
	{ "qmp", cmd_qmp, "send one QMP command to a QEMU and print the reply" },
	{ "send", cmd_send, "migrate the local VM to 'tsubame recv' over the WAN" },
	{ "recv", cmd_recv, "receive a migration from 'tsubame send' into the local QEMU" },
	{ "group", cmd_group, "move many VMs as one operation, within one WAN budget" },
	{ "sync", cmd_sync, "keep a standby site's store close to a running VM's memory" },
	{ "migrate", cmd_migrate, "move a running libvirt domain to another site through tsubame" },
	{ "keygen", cmd_keygen, "write a new shared key for a pair of sites" },
	{ "store", cmd_store, "stats, gc and verify of the persistent content store" },
	{ "migrate-native", cmd_migrate_native,
	  "run QEMU's own migration between two QEMUs and measure it" },
	{ "net", cmd_net, "mobility agent: keep moved VMs reachable at their addresses" },
	{ "resolve", cmd_resolve, "settle a migration left in doubt (exit status 7)" },
};

static void usage(FILE *f)
{
	size_t i;

	fprintf(f, "Usage: tsubame COMMAND [OPTIONS]\n\n"
		   "Moves live QEMU virtual machines between sites.\n\nCommands:\n");
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\nRun 'tsubame COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		usage(stderr);
		return TSB_EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return TSB_EXIT_OK;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("tsubame %s\n", TSB_VERSION);
		return TSB_EXIT_OK;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (!strcmp(argv[1], commands[i].name)) {
			tsb_log_set_prefix(commands[i].name);
			return commands[i].run(argc - 1, argv + 1);
		}
	}
	fprintf(stderr, "tsubame: unknown command '%s'; try 'tsubame --help'\n",
		argv[1]);
	return TSB_EXIT_USAGE;
}
