/* Helpers shared by the subcommands. */
#include "cli/cli.h"
#include "store/store.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tsubame %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "; try 'tsubame %s --help'\n", cmd);
	return TSB_EXIT_USAGE;
}

bool cli_id_ok(const char *v)
{
	size_t i, n = strlen(v);

	if (!n || n > STORE_MAX_ID)
		return false;
	for (i = 0; i < n; i++)
		if (v[i] < 0x21 || v[i] > 0x7e || v[i] == '/')
			return false;
	return true;
}
