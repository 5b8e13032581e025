/* Small helpers: checked number parsing, clocks, fd flags. */
#ifndef TSB_UTIL_H
#define TSB_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TSB_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Parses a whole decimal string into [min, max]; -EINVAL or -ERANGE. */
int tsb_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret);
/*
 * Parses a size with an optional suffix K, M, G (powers of 1024), e.g.
 * "512M"; bare numbers are bytes. -EINVAL or -ERANGE.
 */
int tsb_parse_size(const char *s, uint64_t *ret);
/* Parses a rate like "100mbit", "12.5MB" (bytes/s), "1gbit" into bytes/s. */
int tsb_parse_rate(const char *s, uint64_t *ret_bytes_per_sec);
/* Parses a duration like "25ms", "2s", "1500us" (bare number: ms) into ns. */
int tsb_parse_duration(const char *s, uint64_t *ret_ns);

/* CLOCK_MONOTONIC and CLOCK_REALTIME in nanoseconds. */
uint64_t tsb_now_ns(void);
uint64_t tsb_wall_ns(void);

int tsb_set_nonblock(int fd, bool on);

/*
 * Splits "host:port" (or "[v6]:port") into host and port buffers.
 * -EINVAL when malformed.
 */
int tsb_split_hostport(const char *s, char *host, size_t host_len,
		       char *port, size_t port_len);

#endif
