/* tsubame resolve: settle a migration whose switchover is in doubt. */
#include "cli/cli.h"
#include "proxy/proxy.h"
#include "wire/wire.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

int cmd_resolve(int argc, char **argv)
{
	static const struct option options[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "qmp", required_argument, NULL, 'q' },
		{ "commit", no_argument, NULL, 'c' },
		{ "abort", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	struct proxy_resolve_options o = { .state_dir = PROXY_STATE_DIR_DEFAULT };
	int c;

	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (c) {
		case 's': o.state_dir = optarg; break;
		case 'q': o.qmp_path = optarg; break;
		case 'c':
		case 'a':
			if (o.decision)
				return cli_usage_error("resolve", "give one of --commit and --abort");
			o.decision = c == 'c' ? WIRE_DECIDE_COMMIT : WIRE_DECIDE_ABORT;
			break;
		case 'h':
			printf("Usage: tsubame resolve [ID] [--commit|--abort] [OPTIONS]\n"
			       "\n"
			       "Settles a migration that 'tsubame send' or 'tsubame recv' left in doubt\n"
			       "(exit status 7): the switchover could not be decided, so the guest is\n"
			       "paused on both sides. Without ID, lists the unsettled migrations here.\n"
			       "\n"
			       "The source's record decides (docs/protocol.md, \"Resolving\"):\n"
			       "  on the source host:  'tsubame resolve ID' resumes the source unless it\n"
			       "                       committed, and prints what to run on the\n"
			       "                       destination;\n"
			       "  on the destination:  'tsubame resolve ID --commit' runs the guest,\n"
			       "                       'tsubame resolve ID --abort' discards it.\n"
			       "A source that committed as it completed ('commit-early') waits for the\n"
			       "destination's word: --commit there runs the guest if it holds it, or\n"
			       "says it holds none; then '--commit' or '--abort' on the source.\n"
			       "\n"
			       "Options:\n"
			       "  --state-dir DIR   where the records are (default " PROXY_STATE_DIR_DEFAULT ")\n"
			       "  --qmp SOCKET      the QEMU's QMP socket, if not the one recorded\n"
			       "  --commit          destination: the source's resolve said so; source\n"
			       "                    (commit-early): the destination runs the guest\n"
			       "  --abort           destination: the source's resolve said so; source\n"
			       "                    (commit-early): the destination holds no guest\n"
			       "  -h, --help        show this help\n"
			       "\n"
			       "Exit status: 0 settled (or listed), 1 failed, 2 usage error or the\n"
			       "destination needs --commit/--abort.\n");
			return TSB_EXIT_OK;
		default:
			fprintf(stderr, "Try 'tsubame resolve --help'.\n");
			return TSB_EXIT_USAGE;
		}
	}
	if (optind + 1 < argc)
		return cli_usage_error("resolve", "unexpected argument '%s'", argv[optind + 1]);
	if (optind == argc) {
		if (o.decision)
			return cli_usage_error("resolve", "--commit and --abort need an ID");
		if (!proxy_resolve_list(o.state_dir))
			printf("no migration is in doubt here (%s)\n", o.state_dir);
		return TSB_EXIT_OK;
	}
	o.id = argv[optind];
	if (!*o.id || strchr(o.id, '/') || o.id[0] == '.')
		return cli_usage_error("resolve", "bad migration id '%s'", o.id);
	return proxy_resolve(&o);
}
