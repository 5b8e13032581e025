/* Threads that keep their creator's log tag (common/log.h). */
#ifndef TSB_THREAD_H
#define TSB_THREAD_H

#include <pthread.h>

/* pthread_create() with default attributes; the new thread logs under the caller's tag. */
int tsb_thread_create(pthread_t *th, void *(*fn)(void *), void *arg);

#endif
