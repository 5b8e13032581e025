/* Fuzz target: the store's list of disk images (bytes from disk, store.h). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "store/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every path handed out is absolute, printable and shorter than the cap. */
static void check_path(const char *path, void *arg)
{
	size_t len = strlen(path), i;

	(*(int *)arg)++;
	if (path[0] != '/' || len >= STORE_DISK_PATH_MAX)
		__builtin_trap();
	for (i = 0; i < len; i++)
		if ((unsigned char)path[i] < 0x20 || path[i] == 0x7f)
			__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int seen = 0;
	int n = store_disks_parse((const char *)data, size, check_path, &seen);

	if (n >= 0 && (n != seen || n > STORE_MAX_DISKS))
		__builtin_trap();
	return 0;
}
