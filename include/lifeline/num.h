/* The one decimal number parser: digits only, checked for overflow and a maximum. */
#ifndef LIFELINE_NUM_H
#define LIFELINE_NUM_H

#include <stddef.h>
#include <stdint.h>

/* Parses s[0..len), which must be decimal digits only (at least one; no
 * sign, no space), into *out when the value is at most max. Returns 0,
 * -EINVAL (empty, or not a digit) or -ERANGE (over max); *out is left alone
 * on an error. */
int num_parse(const char *s, size_t len, uint64_t max, uint64_t *out);

#endif
