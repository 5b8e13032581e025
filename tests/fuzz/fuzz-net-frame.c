/* Fuzz target: frames from the site segment and VXLAN datagrams from peers
 * (mob_frame_parse, mob_vxlan_parse, mob_csum_complete, mob_gso_*). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "net/net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mob_frame_info f;
	uint8_t copy[MOB_FRAME_MAX + 64];
	uint32_t vni;
	size_t off;

	(void)mob_frame_parse(data, size, &f);
	if (mob_vxlan_parse(data, size, &vni, &off) == 0) {
		if (off > size || vni > 0xffffff)
			__builtin_trap();
		(void)mob_frame_parse(data + off, size - off, &f);
	}
	/* Checksum completion with offsets taken from the input itself. */
	if (size >= 4 && size - 4 <= sizeof(copy)) {
		uint16_t start = (uint16_t)(data[0] << 8 | data[1]);
		uint16_t csoff = (uint16_t)(data[2] << 8 | data[3]);

		memcpy(copy, data + 4, size - 4);
		(void)mob_csum_complete(copy, size - 4, start, csoff);
	}
	/* Segmentation with the segment size from the first two bytes. */
	if (size >= 2) {
		struct mob_gso g;
		int n = mob_gso_prepare(data + 2, size - 2,
					(uint16_t)(data[0] << 8 | data[1]), &g);
		int i;

		for (i = 0; i < n; i++) {
			int len = mob_gso_segment(data + 2, &g, (unsigned)i, copy,
						  sizeof(copy));
			if (len < 0 || (size_t)len > sizeof(copy))
				__builtin_trap();
		}
	}
	return 0;
}
