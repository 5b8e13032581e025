/*
 * Writes the seed corpora of fuzz-qstream and fuzz-qstream-rp from the
 * QEMU captures in tests/unit/data (cut down to a few KiB each, keeping
 * the stream valid where possible) plus hand-made edge cases.
 *
 *   ninja -C build tests/fuzz/make-seeds-qstream
 *   build/tests/fuzz/make-seeds-qstream tests/unit/data tests/fuzz/corpus
 *
 * Every seed starts with the 4 control bytes of the harness (feed sizes).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zstd.h>

#include "common/reader.h"
#include "qstream/qstream.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->cap - b->len < n) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			exit(1);
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void put_u8(struct buf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void put_be16(struct buf *b, uint16_t v)
{
	uint8_t x[2];

	tsb_put_be16(x, v);
	put(b, x, 2);
}

static void put_be32(struct buf *b, uint32_t v)
{
	uint8_t x[4];

	tsb_put_be32(x, v);
	put(b, x, 4);
}

static void put_be64(struct buf *b, uint64_t v)
{
	uint8_t x[8];

	tsb_put_be64(x, v);
	put(b, x, 8);
}

static void put_idstr(struct buf *b, const char *s)
{
	put_u8(b, strlen(s));
	put(b, s, strlen(s));
}

static uint8_t *load(const char *dir, const char *name, size_t *ret_len)
{
	char path[1024];
	struct stat st;
	uint8_t *raw, *out;
	unsigned long long n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f || fstat(fileno(f), &st)) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(1);
	}
	raw = malloc(st.st_size);
	if (!raw || fread(raw, 1, st.st_size, f) != (size_t)st.st_size)
		exit(1);
	fclose(f);
	if (!strstr(name, ".zst")) {
		*ret_len = st.st_size;
		return raw;
	}
	n = ZSTD_getFrameContentSize(raw, st.st_size);
	out = malloc(n);
	if (!out || ZSTD_decompress(out, n, raw, st.st_size) != n)
		exit(1);
	free(raw);
	*ret_len = n;
	return out;
}

static const char *out_dir;

static void save(const char *target, const char *name, uint8_t mode,
		 const uint8_t *p, size_t n)
{
	char path[1024];
	uint8_t ctl[4] = { mode, 0x12, 0x34, 0x56 };
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", out_dir, target, name);
	f = fopen(path, "wb");
	if (!f || fwrite(ctl, 1, 4, f) != 4 || fwrite(p, 1, n, f) != n ||
	    fclose(f)) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(1);
	}
}

/* Offsets of interest in a capture, found with the parser itself. */
struct marks {
	uint64_t start_end;	/* end of the ram START section */
	uint64_t sec_begin[256];
	uint64_t sec_end[256];
	unsigned n_sec;
	uint64_t first_xbzrle;
	uint64_t first_discard;
	uint64_t packaged_end;
	uint64_t device;
	int sec_type;
};

static int m_page(void *opaque, const struct qs_page *pg)
{
	struct marks *m = opaque;

	if (pg->kind == QS_PAGE_XBZRLE && !m->first_xbzrle)
		m->first_xbzrle = pg->stream_offset;
	return 0;
}

static int m_event(void *opaque, const struct qs_event *ev)
{
	struct marks *m = opaque;

	switch (ev->type) {
	case QS_EV_SECTION_BEGIN:
		if (m->n_sec < 256)
			m->sec_begin[m->n_sec] = ev->stream_offset;
		break;
	case QS_EV_SECTION_END:
		if (m->n_sec < 256)
			m->sec_end[m->n_sec++] = 0;
		break;
	case QS_EV_COMMAND:
		if (ev->command.cmd == QS_CMD_POSTCOPY_RAM_DISCARD &&
		    !m->first_discard)
			m->first_discard = ev->stream_offset;
		break;
	case QS_EV_DEVICE_STATE:
		m->device = ev->stream_offset;
		break;
	default:
		break;
	}
	return 0;
}

/* Fills section end offsets: the parser's offset after each END event. */
static void find_marks(const uint8_t *d, size_t len, struct marks *m)
{
	static const struct qs_handlers h = { .page = m_page, .event = m_event };
	struct qs_parser *p = qs_parser_new(&h, m);
	unsigned done = 0;

	memset(m, 0, sizeof(*m));
	/* Feed byte by byte so that offsets after events are exact. */
	for (size_t i = 0; i < len; i++) {
		if (qs_parser_feed(p, d + i, 1))
			break;
		while (done < m->n_sec) {
			m->sec_end[done++] = qs_parser_offset(p);
		}
	}
	m->start_end = m->sec_end[0];
	qs_parser_free(p);
}

static void trailer_end_eof(struct buf *b, uint32_t id)
{
	put_u8(b, QS_VM_SECTION_END);
	put_be32(b, id);
	put_be64(b, QS_RAM_EOS);
	put_u8(b, QS_VM_SECTION_FOOTER);
	put_be32(b, id);
	put_u8(b, QS_VM_EOF);
}

static void capture_seeds(const char *data_dir)
{
	struct marks *m = calloc(1, sizeof(*m));
	struct buf b = { 0 };
	size_t len;
	uint8_t *d;

	/* Plain precopy: the head (header, START, first records), and the
	 * setup + END section + the start of device state. */
	d = load(data_dir, "qemu72-precopy.bin.zst", &len);
	find_marks(d, len, m);
	save("qstream", "precopy-head", 0, d, 6000);
	save("qstream", "precopy-head-bytewise", 1, d, 1500);
	b.len = 0;
	put(&b, d, m->start_end);
	put(&b, d + m->sec_begin[m->n_sec - 1],
	    m->device + 3000 - m->sec_begin[m->n_sec - 1]);
	save("qstream", "precopy-end-device", 2, b.p, b.len);
	b.len = 0;
	put(&b, d, m->start_end);
	put(&b, d + m->sec_begin[m->n_sec - 1],
	    m->device + 1500 - m->sec_begin[m->n_sec - 1]);
	put(&b, d + len - 1500, 1500); /* end of the vmdesc */
	save("qstream", "precopy-end-tail", 3, b.p, b.len);
	free(d);

	d = load(data_dir, "qemu72-ignore-shared.bin.zst", &len);
	find_marks(d, len, m);
	save("qstream", "ignore-shared-head", 2, d, 4000);
	free(d);

	/* XBZRLE: setup + the section holding the first XBZRLE record. */
	d = load(data_dir, "qemu72-xbzrle.bin.zst", &len);
	find_marks(d, len, m);
	for (unsigned i = 1; i < m->n_sec; i++) {
		if (m->sec_begin[i] < m->first_xbzrle &&
		    m->sec_end[i] > m->first_xbzrle) {
			b.len = 0;
			put(&b, d, m->start_end);
			/* A PART naming pc.ram: the section may CONTINUE. */
			put_u8(&b, QS_VM_SECTION_PART);
			put_be32(&b, 2);
			put_be64(&b, QS_RAM_ZERO);
			put_idstr(&b, "pc.ram");
			put_u8(&b, 0);
			put_be64(&b, QS_RAM_EOS);
			put_u8(&b, QS_VM_SECTION_FOOTER);
			put_be32(&b, 2);
			put(&b, d + m->sec_begin[i],
			    m->sec_end[i] - m->sec_begin[i]);
			if (i != m->n_sec - 1)
				trailer_end_eof(&b, 2);
			else
				put_u8(&b, QS_VM_EOF);
			save("qstream", "xbzrle-section", 3, b.p, b.len);
		}
	}
	free(d);

	/* Postcopy: header .. setup, then DISCARD .. PACKAGED .. PING 4, the
	 * final END and EOF (the PART sections left out). */
	d = load(data_dir, "qemu72-postcopy.bin.zst", &len);
	find_marks(d, len, m);
	b.len = 0;
	put(&b, d, m->start_end);
	{
		/* The commands run up to the next PART after the discard. */
		unsigned i = 1;

		while (i < m->n_sec && m->sec_begin[i] < m->first_discard)
			i++;
		put(&b, d + m->first_discard,
		    m->sec_begin[i] - m->first_discard);
	}
	put(&b, d + m->sec_begin[m->n_sec - 1],
	    len - m->sec_begin[m->n_sec - 1]);
	save("qstream", "postcopy-packaged", 3, b.p, b.len);
	save("qstream", "postcopy-packaged-small-feeds", 2, b.p, b.len);
	free(d);

	d = load(data_dir, "qemu72-postcopy-rp.bin", &len);
	save("qstream-rp", "postcopy-rp", 0, d, len);
	save("qstream-rp", "postcopy-rp-bytewise", 1, d, len);
	free(d);
	free(b.p);
	free(m);
}

static void header(struct buf *b, const char *cap, bool uuid)
{
	b->len = 0;
	put_be32(b, 0x5145564d);
	put_be32(b, 3);
	put_u8(b, QS_VM_CONFIGURATION);
	put_be32(b, 13);
	put(b, "pc-i440fx-7.2", 13);
	if (cap) {
		put_u8(b, QS_VM_SUBSECTION);
		put_idstr(b, "configuration/capabilities");
		put_be32(b, 1);
		put_be32(b, 1);
		put_idstr(b, cap);
	}
	if (uuid) {
		put_u8(b, QS_VM_SUBSECTION);
		put_idstr(b, "configuration/uuid");
		put_be32(b, 1);
		put(b, "0123456789abcdef", 16);
	}
}

static void ram_start(struct buf *b, bool gpa)
{
	put_u8(b, QS_VM_SECTION_START);
	put_be32(b, 2);
	put_idstr(b, "ram");
	put_be32(b, 0);
	put_be32(b, 4);
	put_be64(b, 0x3000 | QS_RAM_MEM_SIZE);
	put_idstr(b, "pc.ram");
	put_be64(b, 0x2000);
	if (gpa)
		put_be64(b, 0);
	put_idstr(b, "pc.bios");
	put_be64(b, 0x1000);
	if (gpa)
		put_be64(b, 0xfffff000);
	put_be64(b, QS_RAM_EOS);
	put_u8(b, QS_VM_SECTION_FOOTER);
	put_be32(b, 2);
}

static void synthetic_seeds(void)
{
	struct buf b = { 0 };
	uint8_t page[4096];

	memset(page, 0xa5, sizeof(page));

	/* Every record kind, CONTINUE across sections, device state. */
	header(&b, "x-ignore-shared", true);
	ram_start(&b, true);
	put_u8(&b, QS_VM_SECTION_PART);
	put_be32(&b, 2);
	put_be64(&b, 0x0000 | QS_RAM_ZERO);
	put_idstr(&b, "pc.ram");
	put_u8(&b, 0);
	put_be64(&b, 0x1000 | QS_RAM_PAGE | QS_RAM_CONTINUE);
	put(&b, page, sizeof(page));
	put_be64(&b, QS_RAM_EOS);
	put_u8(&b, QS_VM_SECTION_FOOTER);
	put_be32(&b, 2);
	put_u8(&b, QS_VM_SECTION_END);
	put_be32(&b, 2);
	put_be64(&b, 0x1000 | QS_RAM_XBZRLE | QS_RAM_CONTINUE);
	put_u8(&b, 1);
	put_be16(&b, 4);
	put(&b, "\x02\x02\xff\xee", 4);
	put_be64(&b, QS_RAM_EOS);
	put_u8(&b, QS_VM_SECTION_FOOTER);
	put_be32(&b, 2);
	put_u8(&b, QS_VM_SECTION_FULL);
	put_be32(&b, 0);
	put_idstr(&b, "timer");
	put_be32(&b, 0);
	put_be32(&b, 2);
	put(&b, "\0\0\0\0\0\0\0\7", 8);
	put_u8(&b, QS_VM_SECTION_FOOTER);
	put_be32(&b, 0);
	put_u8(&b, QS_VM_EOF);
	put_u8(&b, QS_VM_VMDESCRIPTION);
	put_be32(&b, 2);
	put(&b, "{}", 2);
	save("qstream", "synthetic-all-records", 2, b.p, b.len);

	/* Postcopy commands, hugepage setup list, PACKAGED, EOF. */
	header(&b, NULL, false);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_OPEN_RETURN_PATH);
	put_be16(&b, 0);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_POSTCOPY_ADVISE);
	put_be16(&b, 16);
	put_be64(&b, 0x201000);
	put_be64(&b, 0x1000);
	put_u8(&b, QS_VM_SECTION_START);
	put_be32(&b, 2);
	put_idstr(&b, "ram");
	put_be32(&b, 0);
	put_be32(&b, 4);
	put_be64(&b, 0x201000 | QS_RAM_MEM_SIZE);
	put_idstr(&b, "pc.ram");
	put_be64(&b, 0x200000);
	put_be64(&b, 0x200000);
	put_idstr(&b, "pc.bios");
	put_be64(&b, 0x1000);
	put_be64(&b, QS_RAM_EOS);
	put_u8(&b, QS_VM_SECTION_FOOTER);
	put_be32(&b, 2);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_POSTCOPY_RAM_DISCARD);
	put_be16(&b, 3 + 6 + 16);
	put_u8(&b, 0);
	put_idstr(&b, "pc.ram");
	put_u8(&b, 0);
	put_be64(&b, 0);
	put_be64(&b, 0x200000);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_PACKAGED);
	put_be16(&b, 4);
	put_be32(&b, 5 + 9 + 5);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_POSTCOPY_LISTEN);
	put_be16(&b, 0);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_PING);
	put_be16(&b, 4);
	put_be32(&b, 3);
	put_u8(&b, QS_VM_COMMAND);
	put_be16(&b, QS_CMD_POSTCOPY_RUN);
	put_be16(&b, 0);
	put_u8(&b, QS_VM_SECTION_END);
	put_be32(&b, 2);
	put_be64(&b, 0x1ff000 | QS_RAM_PAGE);
	put_idstr(&b, "pc.ram");
	put(&b, page, sizeof(page));
	put_be64(&b, QS_RAM_EOS);
	put_u8(&b, QS_VM_SECTION_FOOTER);
	put_be32(&b, 2);
	put_u8(&b, QS_VM_EOF);
	save("qstream", "synthetic-postcopy-hugepage", 1, b.p, b.len);

	/* Errors the parser must name. */
	header(&b, NULL, false);
	ram_start(&b, false);
	put_u8(&b, QS_VM_SECTION_PART);
	put_be32(&b, 2);
	put_be64(&b, 0x1000 | QS_RAM_COMPRESS_PAGE);
	put_idstr(&b, "pc.ram");
	put_be32(&b, 10);
	save("qstream", "error-compress-page", 0, b.p, b.len);
	b.len -= 4 + 7 + 8;
	put_be64(&b, 0x1000 | QS_RAM_ZERO | QS_RAM_CONTINUE);
	put_u8(&b, 0);
	save("qstream", "error-continue-first", 0, b.p, b.len);
	header(&b, "mapped-ram", false);
	save("qstream", "error-capability", 0, b.p, b.len);

	/* Return path: RECV_BITMAP with its out-of-band bitmap. */
	b.len = 0;
	put_be16(&b, QS_RP_RECV_BITMAP);
	put_be16(&b, 7);
	put_idstr(&b, "pc.ram");
	put_be64(&b, 16);
	put(&b, "\xff\xff\0\0\0\0\0\0\1\0\0\0\0\0\0\0", 16);
	put_be64(&b, 0x0123456789abcdefull);
	put_be16(&b, QS_RP_RESUME_ACK);
	put_be16(&b, 4);
	put_be32(&b, 1);
	put_be16(&b, QS_RP_SWITCHOVER_ACK);
	put_be16(&b, 0);
	put_be16(&b, QS_RP_SHUT);
	put_be16(&b, 4);
	put_be32(&b, 0);
	save("qstream-rp", "synthetic-recv-bitmap", 2, b.p, b.len);
	free(b.p);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s DATA_DIR CORPUS_DIR\n", argv[0]);
		return 2;
	}
	out_dir = argv[2];
	capture_seeds(argv[1]);
	synthetic_seeds();
	return 0;
}
