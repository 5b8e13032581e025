/* Shared inside src/wire only. */
#ifndef TSB_WIRE_INTERNAL_H
#define TSB_WIRE_INTERNAL_H

#include <stdint.h>

/* 0 when the type is known and flags are allowed for it, else -EOPNOTSUPP. */
int wire_check_type_flags(uint8_t type, uint8_t flags);

#endif
