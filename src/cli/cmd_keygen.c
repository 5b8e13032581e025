/* tsubame keygen: write a new shared key (TLS 1.3 PSK) for a pair of sites. */
#include "cli/cli.h"
#include "wire/tls.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void keygen_usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame keygen [--id KEY-ID] [--tenants T1,T2] FILE\n"
"\n"
"Writes a new random 256-bit shared key to FILE (created with mode 0600;\n"
"an existing FILE is never overwritten). Copy the file to both sites over a\n"
"secure channel: 'tsubame send' and 'tsubame recv' authenticate each other\n"
"and encrypt the migration with it (TLS 1.3, external PSK). The file holds\n"
"one line: \"%s <key-id> <64 hex digits> [tenants=T1,T2]\", or two\n"
"during a key rollover (a client uses the first, a server accepts both;\n"
"docs/security.md).\n"
"Key files that are symbolic links, owned by another user, or readable by\n"
"group or others are refused.\n"
"\n"
"  --id KEY-ID   name of the key, sent in clear during the handshake so the\n"
"                peer can tell which key is meant (1 to %d printable\n"
"                characters, no spaces; default: tsb-<8 random hex digits>)\n"
"  --tenants T1,T2\n"
"                bind the key to these tenants: a receiver refuses its\n"
"                holder any VM of another tenant (default: a site key, good\n"
"                for every tenant the receiver serves)\n"
"  -h, --help    this text\n"
"\n"
"Example: tsubame keygen --id tokyo-osaka /etc/tsubame/tokyo-osaka.key\n"
"Exit: 0 success, 1 failure (reason on stderr), 2 usage.\n",
		WIRE_KEY_MAGIC, WIRE_KEY_ID_MAX);
}

#define usage_error(...) cli_usage_error("keygen", __VA_ARGS__)

enum {
	OPT_ID = 256,
	OPT_TENANTS,
};

int cmd_keygen(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "id", required_argument, NULL, OPT_ID },
		{ "tenants", required_argument, NULL, OPT_TENANTS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char msg[WIRE_ERRMSG_MAX];
	const char *id = NULL, *tenants = NULL;
	struct wire_key k;
	int c, err;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_ID:
			id = optarg;
			break;
		case OPT_TENANTS:
			tenants = optarg;
			break;
		case 'h':
			keygen_usage(stdout);
			return TSB_EXIT_OK;
		default:
			return usage_error("unknown option");
		}
	}
	if (optind != argc - 1)
		return usage_error(optind == argc ? "missing FILE" :
						    "too many arguments");
	err = wire_keygen(argv[optind], id, tenants, msg, sizeof(msg));
	if (err == -EINVAL)
		return usage_error("%s", msg);
	if (err) {
		fprintf(stderr, "tsubame keygen: %s\n", msg);
		return TSB_EXIT_FAILED;
	}
	/* Read it back: proves the file is what send/recv will accept. */
	err = wire_key_load(argv[optind], &k, msg, sizeof(msg));
	if (err) {
		fprintf(stderr, "tsubame keygen: %s\n", msg);
		return TSB_EXIT_FAILED;
	}
	printf("wrote key '%s' to %s (mode 0600); copy it to the peer site securely\n",
	       k.id, argv[optind]);
	wire_key_wipe(&k);
	return TSB_EXIT_OK;
}
