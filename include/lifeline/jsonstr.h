/* The one JSON string quoter, for log lines and config messages. */
#ifndef LIFELINE_JSONSTR_H
#define LIFELINE_JSONSTR_H

#include <stddef.h>

/* Writes s into buf[len] as a quoted JSON string: '"' and '\' escaped,
 * control characters as \u00XX, the rest (UTF-8 included) as is. Once the
 * output has `max` bytes, or would not fit, it is cut (never inside a UTF-8
 * sequence) and ends in "...". Always NUL-terminated; len must be at least
 * 16. Returns the length written. */
size_t jsonstr_quote(char *buf, size_t len, const char *s, size_t max);

#endif
