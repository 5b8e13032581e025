/* The options of send and recv, which 'tsubame group' takes for every VM (cmd_send_recv.c). */
#ifndef TSB_CLI_SEND_RECV_H
#define TSB_CLI_SEND_RECV_H

#include <stdbool.h>
#include <stdint.h>

#include "proxy/proxy.h"

/* What a group adds to them (and --bandwidth, which send takes too). */
struct cli_sr_extra {
	bool help;
	const char *plan;		/* --plan FILE */
	const char *timeline;		/* --timeline FILE.svg */
	uint64_t bandwidth;		/* --bandwidth, bytes/s; 0: none */
	unsigned concurrency;		/* --concurrency; 0: not given */
	bool json;			/* --json */
	bool no_seed;			/* --no-seed */
	uint64_t switch_window_ns;	/* --switchover-window; 0: each VM on its own */
	const char *host;		/* --host: this host's name in the plan */
	bool agent;			/* --agent: plan and commands on stdin */
	const char *ssh;		/* --ssh CMD: how to reach other hosts */
	const char *remote_tsubame;	/* --remote-tsubame PATH: tsubame there */
	bool persistent;		/* --persistent: libvirt domains defined there */
	bool undefine_source;		/* --undefinesource: and undefined here */
	bool plan_order;		/* --order plan: no sampling for the seed */
	bool dry_run;			/* --dry-run: print the order, move nothing */
	/* 'tsubame sync' and 'tsubame recv --standby' (docs/standby.md). */
	bool sync;			/* the command is 'tsubame sync' */
	bool standby;			/* --standby */
	uint64_t interval_ns;		/* --interval: between the starts of rounds */
	unsigned rounds;		/* --rounds: stop after this many kept; 0: never */
	int nice;			/* --nice: sync's CPU priority; -1: the default */
};

/*
 * Parses 'tsubame group send|recv' arguments (argv[0] is the verb): o
 * gets the options every VM shares (not its QEMU, address or id, which
 * the plan gives). 0 (x->help: print the help), or a usage exit code.
 */
int cli_group_parse_send(int argc, char **argv, struct proxy_send_options *o,
			 struct cli_sr_extra *x);
int cli_group_parse_recv(int argc, char **argv, struct proxy_recv_options *o,
			 struct cli_sr_extra *x);
/* Parses 'tsubame sync' arguments as send's, with its own checks. */
int cli_sync_parse(int argc, char **argv, struct proxy_send_options *o, struct cli_sr_extra *x);

/* send's and recv's exit status for an outcome (documented in their --help). */
int cli_proxy_exit_code(enum proxy_outcome oc);

/* cmd_sync.c: the rounds of 'tsubame sync' and of 'tsubame recv --standby'. */
int cli_sync_run(const struct proxy_send_options *o, const struct cli_sr_extra *x);
int cli_standby_run(const struct proxy_recv_options *o, const struct cli_sr_extra *x);

#endif
