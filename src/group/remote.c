/*
 * VMs on other hosts of the source site (internal.h): for each such host
 * an agent, 'tsubame group send --agent --host HOST', started over ssh
 * (the operator's authenticated channel; no protocol of our own between
 * hosts). Its stdin gets the plan (one line), then commands: {"start":
 * NAME} and {"bandwidth": BYTES_PER_S}; its stdout gives events
 * (event.c). Its end of stdin means the coordinator is gone: it cancels
 * what is moving (those sources keep their guests).
 */
#include "group/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"

static struct vm_run *find_vm(struct remote *rm, const char *name)
{
	struct group_run *g = rm->g;

	for (size_t i = 0; i < g->n; i++)
		if (g->v[i].remote == rm && !strcmp(g->v[i].vm->name, name))
			return &g->v[i];
	return NULL;
}

/* Under g->mu: the VM ended there (or we lost its agent). */
static void vm_ended(struct vm_run *r, enum vm_phase ph, const char *outcome, const char *why,
		     json_t *report)
{
	struct group_run *g = r->g;
	bool was_moving = r->phase >= PHASE_SETUP && r->phase <= PHASE_SWITCHOVER;

	r->phase = ph;
	r->oc = ph == PHASE_FAILED ? (strcmp(outcome, "interrupted") ? PROXY_FAILED :
				      PROXY_INTERRUPTED) : PROXY_OK;
	snprintf(r->why, sizeof(r->why), "%s", why);
	json_decref(r->report);
	r->report = report;
	r->end_ns = tsb_now_ns();
	if (was_moving)
		g->running--;
	pthread_cond_broadcast(&g->cv);
}

static void apply(struct remote *rm, struct group_event *ev)
{
	struct group_run *g = rm->g;
	struct vm_run *r;

	pthread_mutex_lock(&g->mu);
	r = find_vm(rm, ev->name);
	/* Only a VM we started there, and only once it has not ended. */
	if (!r || r->phase < PHASE_SETUP || r->phase > PHASE_SWITCHOVER) {
		pthread_mutex_unlock(&g->mu);
		json_decref(ev->report);
		log_warn("%s: an event for %s, which is not moving there", rm->host, ev->name);
		return;
	}
	if (ev->type == GROUP_EVENT_TICK) {
		struct proxy_tick t = { .status = ev->status, .pass = ev->pass,
					.ram_total = ev->ram_total,
					.ram_remaining = ev->ram_remaining, .wan_out = ev->wan_out };

		group_vm_tick(r, &t);
		pthread_mutex_unlock(&g->mu);
		/* A VM moves over there: the step where tests cut the agent off. */
		tsb_fault_point("group-agent-moving");
		return;
	} else {
		vm_ended(r, ev->phase, ev->outcome, ev->why, ev->report);
	}
	pthread_mutex_unlock(&g->mu);
}

static void *reader_thread(void *arg)
{
	struct remote *rm = arg;
	struct group_run *g = rm->g;
	char *buf = malloc(GROUP_EVENT_MAX + 1);
	size_t len = 0;
	ssize_t n = 0;
	char why[256];

	while (buf) {
		char *nl = memchr(buf, '\n', len);

		if (nl) {
			struct group_event ev;
			size_t l = (size_t)(nl - buf);

			if (group_event_parse(buf, l, &ev) == 0)
				apply(rm, &ev);
			else
				log_warn("%s: a line from its agent that is not an event", rm->host);
			memmove(buf, nl + 1, len - l - 1);
			len -= l + 1;
			continue;
		}
		if (len == GROUP_EVENT_MAX) {
			log_error("%s: a line from its agent longer than %u bytes", rm->host,
				  GROUP_EVENT_MAX);
			break;
		}
		n = read(rm->out, buf + len, GROUP_EVENT_MAX - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	free(buf);
	/* The agent is gone: what it had not finished did not move. */
	snprintf(why, sizeof(why), "lost the agent on %.200s (ssh ended)", rm->host);
	pthread_mutex_lock(&g->mu);
	rm->gone = true;
	for (size_t i = 0; i < g->n; i++) {
		struct vm_run *r = &g->v[i];

		if (r->remote == rm && r->phase >= PHASE_SETUP && r->phase <= PHASE_SWITCHOVER)
			vm_ended(r, PHASE_FAILED, "link-lost", why, NULL);
	}
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

/* One JSON line to the agent; false if it is gone. */
static bool command(struct remote *rm, json_t *cmd)
{
	bool ok = rm->in && json_dumpf(cmd, rm->in, JSON_COMPACT) == 0 && fputc('\n', rm->in) != EOF &&
		  fflush(rm->in) == 0;

	json_decref(cmd);
	return ok;
}

/* 'word' for a POSIX shell ('\'' for a quote inside). NULL on ENOMEM. */
static char *shell_quote(const char *w)
{
	size_t n = 3;
	char *q, *p;

	for (const char *c = w; *c; c++)
		n += *c == '\'' ? 4 : 1;
	q = p = malloc(n);
	if (!q)
		return NULL;
	*p++ = '\'';
	for (const char *c = w; *c; c++) {
		if (*c == '\'') {
			memcpy(p, "'\\''", 4);
			p += 4;
		} else {
			*p++ = *c;
		}
	}
	*p++ = '\'';
	*p = 0;
	return q;
}

int group_remote_start(struct group_run *g, struct remote *rm, const char *host)
{
	const struct group_send_options *o = g->o;
	int to_agent[2], from_agent[2];
	size_t n_ssh = 0, n_rem = 0, k = 0;
	json_t *plan;
	const char **argv;
	char **quoted;
	char *line;
	int e = 0;

	rm->g = g;
	if (host != rm->host)
		snprintf(rm->host, sizeof(rm->host), "%s", host);
	while (o->ssh_argv[n_ssh])
		n_ssh++;
	while (o->remote_argv[n_rem])
		n_rem++;
	argv = calloc(n_ssh + n_rem + 3, sizeof(*argv));
	quoted = calloc(n_rem + 1, sizeof(*quoted));
	for (size_t i = 0; quoted && i < n_rem; i++)
		if (!(quoted[i] = shell_quote(o->remote_argv[i])))
			e = -ENOMEM;
	if (argv && quoted && !e) {
		for (size_t i = 0; i < n_ssh; i++)
			argv[k++] = o->ssh_argv[i];
		argv[k++] = host;
		/* ssh hands the rest to the remote shell as one string: quoted words. */
		for (size_t i = 0; i < n_rem; i++)
			argv[k++] = quoted[i];
		if (pipe2(to_agent, O_CLOEXEC) == 0) {
			if (pipe2(from_agent, O_CLOEXEC) == 0) {
				rm->pid = fork();
				if (rm->pid == 0) {
					dup2(to_agent[0], 0);
					dup2(from_agent[1], 1);
					execvp(argv[0], (char *const *)argv);
					_exit(127);
				}
				e = rm->pid < 0 ? -errno : 0;
				close(from_agent[1]);
				if (e)
					close(from_agent[0]);
			} else {
				e = -errno;
			}
			close(to_agent[0]);
			if (e)
				close(to_agent[1]);
		} else {
			e = -errno;
		}
	} else {
		e = -ENOMEM;
	}
	for (size_t i = 0; quoted && i < n_rem; i++)
		free(quoted[i]);
	free(quoted);
	free(argv);
	if (e)
		return e;
	rm->in = fdopen(to_agent[1], "w");
	rm->out = from_agent[0];
	/* The plan: this host's VMs, as the plan names them. */
	plan = json_array();
	for (size_t i = 0; i < g->n; i++) {
		const struct group_vm *vm = g->v[i].vm;

		if (g->v[i].remote == rm)
			json_array_append_new(plan, group_vm_json(vm));
	}
	{
		json_t *top = json_pack("{s:o}", "vms", plan);

		if (o->base->c.tenant)
			json_object_set_new(top, "tenant", json_string(o->base->c.tenant));
		line = json_dumps(top, JSON_COMPACT);
		json_decref(top);
	}
	if (!rm->in || !line || fprintf(rm->in, "%s\n", line) < 0 || fflush(rm->in)) {
		free(line);
		return -EPIPE;
	}
	free(line);
	e = tsb_thread_create(&rm->reader, reader_thread, rm);
	rm->reader_started = !e;
	return -e;
}

bool group_remote_start_vm(struct remote *rm, const char *name)
{
	return command(rm, json_pack("{s:s}", "start", name));
}

void group_remote_set_bandwidth(struct remote *rm, uint64_t rate)
{
	if (rate != rm->bandwidth && command(rm, json_pack("{s:I}", "bandwidth",
							   (json_int_t)rate)))
		rm->bandwidth = rate;
}

void group_remote_finish(struct remote *rm)
{
	int st;

	if (rm->in)
		fclose(rm->in);	/* EOF: the agent ends once its VMs have */
	rm->in = NULL;
	if (rm->reader_started)
		pthread_join(rm->reader, NULL);
	if (rm->out >= 0)
		close(rm->out);
	rm->out = -1;
	if (rm->pid > 0 && waitpid(rm->pid, &st, 0) == rm->pid && !(WIFEXITED(st) &&
	    WEXITSTATUS(st) <= 1))
		log_warn("%s: its agent (ssh) ended with status %d", rm->host,
			 WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	rm->pid = 0;
}
