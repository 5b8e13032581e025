#include "proxy/pagecache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>	/* memfd_create */
#include <unistd.h>

#define NIL UINT32_MAX

struct entry {
	uint8_t hash[PAGECACHE_HASH_LEN];
	uint32_t prev, next; /* LRU list: head = most recent */
	bool held;	     /* content in the memory file (else only the hash) */
};

struct pagecache {
	size_t capacity, page_size, count;
	struct entry *entries;	/* capacity slots, filled in order */
	int fd;			/* memfd: slot i's content at i * page_size */
	uint8_t *buf;		/* the page last read, returned by get/peek */
	uint32_t *table;	/* open addressing, linear probing: entry index or NIL */
	size_t table_mask;
	uint32_t head, tail;
};

static size_t slot_of(const struct pagecache *c, const uint8_t *hash)
{
	uint64_t k;

	/* SHA-256 output is uniform: its first bytes are a fine table hash. */
	memcpy(&k, hash, sizeof(k));
	return k & c->table_mask;
}

struct pagecache *pagecache_new(size_t capacity, size_t page_size)
{
	struct pagecache *c;
	size_t tsize = 1;

	if (!capacity || capacity >= NIL / 2 || !page_size)
		return NULL;
	while (tsize < capacity * 2)
		tsize <<= 1;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = -1;
	c->capacity = capacity;
	c->page_size = page_size;
	c->entries = calloc(capacity, sizeof(*c->entries));
	c->table = malloc(tsize * sizeof(*c->table));
	c->buf = malloc(page_size);
	/*
	 * Contents live in a memory file written and read with pwrite/pread:
	 * first-touch faults on fresh anonymous memory (one per 4 KiB page)
	 * cost several times more CPU than the copies, on virtualized hosts
	 * most of all.
	 */
	c->fd = memfd_create("tsubame-pagecache", MFD_CLOEXEC);
	if (!c->entries || !c->table || !c->buf || c->fd < 0) {
		pagecache_free(c);
		return NULL;
	}
	memset(c->table, 0xff, tsize * sizeof(*c->table));
	c->table_mask = tsize - 1;
	c->head = c->tail = NIL;
	return c;
}

void pagecache_free(struct pagecache *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	free(c->buf);
	free(c->entries);
	free(c->table);
	free(c);
}

/* Returns the table slot holding hash, or the empty slot where it would go. */
static size_t find_slot(const struct pagecache *c, const uint8_t *hash)
{
	size_t s = slot_of(c, hash);

	while (c->table[s] != NIL &&
	       memcmp(c->entries[c->table[s]].hash, hash, PAGECACHE_HASH_LEN))
		s = (s + 1) & c->table_mask;
	return s;
}

/* Reads slot i into buf; NULL if the memory file fails us. */
static const uint8_t *read_slot(const struct pagecache *c, uint32_t i)
{
	off_t off = (off_t)i * (off_t)c->page_size;

	if (pread(c->fd, c->buf, c->page_size, off) != (ssize_t)c->page_size)
		return NULL;
	return c->buf;
}

static void lru_unlink(struct pagecache *c, uint32_t i)
{
	struct entry *e = &c->entries[i];

	if (e->prev != NIL)
		c->entries[e->prev].next = e->next;
	else
		c->head = e->next;
	if (e->next != NIL)
		c->entries[e->next].prev = e->prev;
	else
		c->tail = e->prev;
}

static void lru_push_front(struct pagecache *c, uint32_t i)
{
	struct entry *e = &c->entries[i];

	e->prev = NIL;
	e->next = c->head;
	if (c->head != NIL)
		c->entries[c->head].prev = i;
	c->head = i;
	if (c->tail == NIL)
		c->tail = i;
}

/* Removes the table slot s, shifting later probes back (no tombstones). */
static void table_delete(struct pagecache *c, size_t s)
{
	size_t j = s, home;

	for (;;) {
		c->table[s] = NIL;
		for (;;) {
			j = (j + 1) & c->table_mask;
			if (c->table[j] == NIL)
				return;
			home = slot_of(c, c->entries[c->table[j]].hash);
			/* Move j back to s unless its home lies cyclically in (s, j]. */
			if (s <= j ? (s < home && home <= j) : (s < home || home <= j))
				continue;
			break;
		}
		c->table[s] = c->table[j];
		s = j;
	}
}

bool pagecache_touch(struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN])
{
	uint32_t i = c->table[find_slot(c, hash)];

	if (i == NIL)
		return false;
	lru_unlink(c, i);
	lru_push_front(c, i);
	return true;
}

const uint8_t *pagecache_get(struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN])
{
	return pagecache_touch(c, hash) ? pagecache_peek(c, hash) : NULL;
}

const uint8_t *pagecache_peek(const struct pagecache *c,
			      const uint8_t hash[PAGECACHE_HASH_LEN])
{
	uint32_t i = c->table[find_slot(c, hash)];

	return i == NIL || !c->entries[i].held ? NULL : read_slot(c, i);
}

bool pagecache_has(const struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN])
{
	return c->table[find_slot(c, hash)] != NIL;
}

int pagecache_put(struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN],
		  const void *page)
{
	size_t s = find_slot(c, hash);
	bool fresh = c->count < c->capacity;
	uint32_t i;

	if (c->table[s] != NIL) {
		i = c->table[s];
		lru_unlink(c, i);
		lru_push_front(c, i);
		return 0;
	}
	/* A new slot while there are some, else the least recently used one's. */
	i = fresh ? (uint32_t)c->count : c->tail;
	if (page && pwrite(c->fd, page, c->page_size, (off_t)i * (off_t)c->page_size) !=
	    (ssize_t)c->page_size)
		return -EIO;	/* a victim's bytes may be torn: gets verify hashes */
	if (fresh) {
		c->count++;
	} else {
		lru_unlink(c, i);
		table_delete(c, find_slot(c, c->entries[i].hash));
		s = find_slot(c, hash);
	}
	memcpy(c->entries[i].hash, hash, PAGECACHE_HASH_LEN);
	c->entries[i].held = page != NULL;
	c->table[s] = i;
	lru_push_front(c, i);
	return 0;
}

size_t pagecache_count(const struct pagecache *c)
{
	return c->count;
}
