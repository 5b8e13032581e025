/* Subcommands of the tsubame binary: each is int cmd_<name>(argc, argv). */
#ifndef TSB_CLI_H
#define TSB_CLI_H

#include <stdbool.h>

/* Exit codes shared by every subcommand. */
enum {
	TSB_EXIT_OK = 0,
	TSB_EXIT_FAILED = 1,
	TSB_EXIT_USAGE = 2,
};

/*
 * Prints "tsubame CMD: <message>; try 'tsubame CMD --help'" to stderr and
 * returns TSB_EXIT_USAGE.
 */
int cli_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* An id for stores and the wire (--tenant, --vm-id): 1..STORE_MAX_ID printable, no '/'. */
bool cli_id_ok(const char *v);

int cmd_vm(int argc, char **argv);
int cmd_qmp(int argc, char **argv);
int cmd_migrate_native(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_recv(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_store(int argc, char **argv);
int cmd_net(int argc, char **argv);
int cmd_resolve(int argc, char **argv);
int cmd_group(int argc, char **argv);
int cmd_sync(int argc, char **argv);

#endif
