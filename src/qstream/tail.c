/*
 * The end of a precopy stream. QEMU 7.2 ends it with QEMU_VM_EOF, then,
 * unless the machine suppresses it, QEMU_VM_VMDESCRIPTION, a be32 length
 * and that much JSON describing the devices (migration/savevm.c,
 * qemu_savevm_state_complete_precopy_non_iterable); then it flushes and,
 * with a return path, waits for the destination's SHUT. The device state
 * before it is opaque (no lengths), so the end is recognized from the
 * back: the bytes seen so far end exactly with such a trailer.
 */
#include "qstream/qstream.h"

#include "common/reader.h"

#include <stdlib.h>
#include <string.h>

#define QS_VM_EOF 0x00
#define QS_VM_VMDESCRIPTION 0x06
/* The JSON always begins so (QEMU's JSON writer, page_size first). */
static const char vmdesc_start[] = "{\"page_size\":";

void qs_tail_init(struct qs_tail *t)
{
	memset(t, 0, sizeof(*t));
}

void qs_tail_fini(struct qs_tail *t)
{
	free(t->buf);
	memset(t, 0, sizeof(*t));
}

/* Keeps the last QS_TAIL_KEEP bytes: a longer trailer is not recognized. */
static int keep(struct qs_tail *t, const uint8_t *p, size_t n)
{
	size_t want;
	uint8_t *nb;

	if (n >= QS_TAIL_KEEP) {
		p += n - QS_TAIL_KEEP;
		n = QS_TAIL_KEEP;
	}
	if (t->len + n > QS_TAIL_KEEP) {
		size_t drop = t->len + n - QS_TAIL_KEEP;

		memmove(t->buf, t->buf + drop, t->len - drop);
		t->len -= drop;
	}
	if (t->len + n > t->cap) {
		want = t->cap ? t->cap : 64 * 1024;
		while (want < t->len + n)
			want *= 2;
		if (want > QS_TAIL_KEEP)
			want = QS_TAIL_KEEP;
		nb = realloc(t->buf, want);
		if (!nb)
			return -1;
		t->buf = nb;
		t->cap = want;
	}
	memcpy(t->buf + t->len, p, n);
	t->len += n;
	return 0;
}

bool qs_tail_feed(struct qs_tail *t, const void *p, size_t n)
{
	const size_t head = 6, min_json = sizeof(vmdesc_start) - 1 + 1;
	const uint8_t *b;

	if (t->failed || !n)
		return false;
	if (keep(t, p, n) < 0) {
		t->failed = true;	/* out of memory: QEMU waits for the real SHUT */
		return false;
	}
	b = t->buf;
	if (t->len < head + min_json || b[t->len - 1] != '}')
		return false;
	/* Where a trailer would have to begin for its length to end here. */
	for (size_t i = t->len - head - min_json + 1; i-- > 0;) {
		if (b[i] != QS_VM_EOF || b[i + 1] != QS_VM_VMDESCRIPTION)
			continue;
		if (tsb_load_be32(b + i + 2) != t->len - i - head)
			continue;
		if (!memcmp(b + i + head, vmdesc_start, sizeof(vmdesc_start) - 1))
			return true;
	}
	return false;
}
