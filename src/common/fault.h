/*
 * Test-only fault injection at named protocol points.
 *
 * With TSUBAME_FAULT_AT=POINT[,POINT...] and TSUBAME_FAULT_CMD=COMMAND in
 * the environment, the first time the process reaches one of the named
 * points it runs COMMAND with /bin/sh and waits for it before going on.
 * Tests use it to cut or blackhole the link, or to kill a process, at the
 * exact step (docs/protocol.md lists the points); without the variables it
 * costs one getenv per point.
 */
#ifndef TSB_FAULT_H
#define TSB_FAULT_H

/* Runs the fault command if point is armed and has not fired yet. */
void tsb_fault_point(const char *point);

#endif
