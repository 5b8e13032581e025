/*
 * One ordered stream of frames spread over several connections (lanes),
 * for paths where one TCP connection cannot fill the link (loss-based
 * congestion control on a long, lossy path). The sender writes its
 * ordered frames round robin: frame i on lane i mod n, lane 0 being the
 * main connection, which also carries frames outside that order (control:
 * BASE, PING, DECISION...). The receiver reads every lane in a thread of
 * its own and hands the frames on in the sender's order, control frames
 * of the main connection as soon as they came. docs/protocol.md, LANE.
 */
#ifndef TSB_WIRE_LANES_H
#define TSB_WIRE_LANES_H

#include "wire/tls.h"
#include "wire/wire.h"

#include <stdbool.h>
#include <stdint.h>

struct wire_lanes;

/* Is a frame of this type part of the ordered, striped stream? */
typedef bool (*wire_lane_ordered_fn)(uint8_t type);

/*
 * Starts reading main and the n - 1 other lanes (others[0] is lane 1);
 * the connections stay the caller's and must outlive the readers
 * (wire_lanes_stop()). Frames read ahead are kept, at most max_bytes of
 * payload in all: more is the peer's error (its credit window bounds
 * them). NULL on ENOMEM or when threads cannot start.
 */
struct wire_lanes *wire_lanes_start(struct wire_conn *main, struct wire_conn *const *others,
				    unsigned n, wire_lane_ordered_fn ordered, uint64_t max_bytes);
/*
 * The next frame: a control frame of the main connection if one waits,
 * else the next ordered one. 1 with *f (valid until the next call), 0
 * when the main connection ended cleanly, -errno when a lane failed
 * (a lane's clean end is no failure: the sender closes the lanes after
 * the last ordered frame), -EBADMSG when a lane other than the main one
 * carried a control frame, -EOVERFLOW past max_bytes.
 */
int wire_lanes_next(struct wire_lanes *l, struct wire_frame *f);
/* The lane that failed, for messages (-1: none). */
int wire_lanes_failed_lane(const struct wire_lanes *l);
/* Bytes received on the lanes other than main. */
void wire_lanes_get_stats(const struct wire_lanes *l, struct wire_conn_stats *ret);
/*
 * Aborts the other lanes (not main: abort it first if its reader may be
 * blocked), joins the readers and frees. Accepts NULL.
 */
void wire_lanes_stop(struct wire_lanes *l);

#endif
