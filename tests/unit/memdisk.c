/* A disk in memory behind our NBD server (memdisk.h). */
#include "memdisk.h"

#include "nbd/nbd.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MEMDISK_CONNS 16

struct conn {
	struct memdisk *m;
	struct nbd_server *srv;
	pthread_t th;
	int fd;
};

struct memdisk {
	char name[64];
	uint8_t *data;
	uint64_t size, export_size;
	unsigned flushes;
	pthread_mutex_t lock;		/* data, flushes, conns */
	struct conn conns[MEMDISK_CONNS];
	unsigned n_conns;
	int lfd;
	char path[108];
	pthread_t lth;
	bool listening;
	volatile bool stop;
};

static int cb_size(void *user, uint64_t *ret)
{
	*ret = ((struct memdisk *)user)->export_size;
	return 0;
}

/* The server checked the range against export_size; the memory may be smaller. */
static bool inside(struct memdisk *m, const struct nbd_io *io)
{
	return io->offset <= m->size && io->length <= m->size - io->offset;
}

static int cb_read(void *user, struct nbd_io *io)
{
	struct memdisk *m = user;

	if (!inside(m, io))
		return -EIO;
	pthread_mutex_lock(&m->lock);
	memcpy(io->data, m->data + io->offset, io->length);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int cb_write(void *user, struct nbd_io *io)
{
	struct memdisk *m = user;

	if (!inside(m, io))
		return -EIO;
	pthread_mutex_lock(&m->lock);
	memcpy(m->data + io->offset, io->data, io->length);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int cb_write_zeroes(void *user, struct nbd_io *io)
{
	struct memdisk *m = user;

	if (!inside(m, io))
		return -EIO;
	pthread_mutex_lock(&m->lock);
	memset(m->data + io->offset, 0, io->length);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int cb_flush(void *user, struct nbd_io *io)
{
	struct memdisk *m = user;

	(void)io;
	pthread_mutex_lock(&m->lock);
	m->flushes++;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static const struct nbd_export_ops ops = {
	.size = cb_size,
	.read = cb_read,
	.write = cb_write,
	.write_zeroes = cb_write_zeroes,
	.flush = cb_flush,
};

struct memdisk *memdisk_new(const char *name, uint64_t size, uint64_t export_size)
{
	struct memdisk *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->data = calloc(1, size ? size : 1);
	if (!m->data) {
		free(m);
		return NULL;
	}
	snprintf(m->name, sizeof(m->name), "%s", name);
	m->size = size;
	m->export_size = export_size;
	m->lfd = -1;
	pthread_mutex_init(&m->lock, NULL);
	return m;
}

uint8_t *memdisk_data(struct memdisk *m)
{
	return m->data;
}

unsigned memdisk_flushes(struct memdisk *m)
{
	unsigned n;

	pthread_mutex_lock(&m->lock);
	n = m->flushes;
	pthread_mutex_unlock(&m->lock);
	return n;
}

static void *serve_main(void *arg)
{
	struct conn *c = arg;

	(void)nbd_server_serve_fd(c->srv, c->fd);
	return NULL;
}

/* Serves fd (taken over) on a new thread. */
static int serve(struct memdisk *m, int fd)
{
	struct nbd_server_config cfg = { .export_name = m->name };
	struct conn *c;

	pthread_mutex_lock(&m->lock);
	if (m->n_conns == MEMDISK_CONNS) {
		pthread_mutex_unlock(&m->lock);
		close(fd);
		return -EMFILE;
	}
	c = &m->conns[m->n_conns];
	c->m = m;
	c->fd = fd;
	c->srv = nbd_server_new(&cfg, &ops, m);
	if (!c->srv || pthread_create(&c->th, NULL, serve_main, c)) {
		nbd_server_free(c->srv);
		c->srv = NULL;
		pthread_mutex_unlock(&m->lock);
		close(fd);
		return -ENOMEM;
	}
	m->n_conns++;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int memdisk_connect(struct memdisk *m, const struct nbd_client_config *cfg,
		    struct nbd_client **ret)
{
	int sv[2], r;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	r = serve(m, sv[1]);
	if (r < 0) {
		close(sv[0]);
		return r;
	}
	return nbd_client_connect_fd(sv[0], cfg, ret, NULL, 0);
}

static void *listen_main(void *arg)
{
	struct memdisk *m = arg;
	struct pollfd p = { .fd = m->lfd, .events = POLLIN };
	int fd;

	while (!m->stop) {
		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept4(m->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			(void)serve(m, fd);
	}
	return NULL;
}

int memdisk_listen(struct memdisk *m, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n = strlen(path);

	if (m->listening || n >= sizeof(sa.sun_path) || n >= sizeof(m->path))
		return -EINVAL;
	memcpy(sa.sun_path, path, n + 1);
	memcpy(m->path, path, n + 1);
	unlink(path);
	m->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (m->lfd < 0)
		return -errno;
	if (bind(m->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(m->lfd, 8) < 0 ||
	    pthread_create(&m->lth, NULL, listen_main, m)) {
		close(m->lfd);
		m->lfd = -1;
		return -EIO;
	}
	m->listening = true;
	return 0;
}

void memdisk_free(struct memdisk *m)
{
	unsigned i;

	if (!m)
		return;
	m->stop = true;
	if (m->listening) {
		pthread_join(m->lth, NULL);
		unlink(m->path);
	}
	if (m->lfd >= 0)
		close(m->lfd);
	for (i = 0; i < m->n_conns; i++) {
		nbd_server_stop(m->conns[i].srv);
		pthread_join(m->conns[i].th, NULL);
		nbd_server_free(m->conns[i].srv);
	}
	pthread_mutex_destroy(&m->lock);
	free(m->data);
	free(m);
}
