/* Levelled, structured logging to stderr: text or JSON lines, one write() per line. */
#ifndef LIFELINE_LOG_H
#define LIFELINE_LOG_H

#include <stddef.h>
#include <stdint.h>

/* Levels and formats, each defined once: X(ENUM_SUFFIX, "name in config and CLI"). */
#define LOG_LEVELS(X) X(DEBUG, "debug") X(INFO, "info") X(WARN, "warn") X(ERROR, "error")
#define LOG_FORMATS(X) X(TEXT, "text") X(JSON, "json")

enum log_level {
#define LOG_LEVEL_ENUM_(id, name) LOG_##id,
    LOG_LEVELS(LOG_LEVEL_ENUM_)
#undef LOG_LEVEL_ENUM_
};

enum log_format {
#define LOG_FORMAT_ENUM_(id, name) LOG_FORMAT_##id,
    LOG_FORMATS(LOG_FORMAT_ENUM_)
#undef LOG_FORMAT_ENUM_
};

enum log_field_type { LOG_FIELD_STR, LOG_FIELD_INT };

/* One key=value pair of a log line. Build them with LF_STR() and LF_INT(). */
struct log_field {
    const char *key;
    enum log_field_type type;
    const char *s;
    int64_t i;
};

#define LF_STR(k, v) ((struct log_field){ .key = (k), .type = LOG_FIELD_STR, .s = (v) })
#define LF_INT(k, v) ((struct log_field){ .key = (k), .type = LOG_FIELD_INT, .i = (int64_t)(v) })

void log_set_level(enum log_level level);
void log_set_format(enum log_format format);
int log_enabled(enum log_level level);

/* "debug", "info", ... -> level; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);
int log_format_parse(const char *s, enum log_format *out);
const char *log_level_name(enum log_level level);

/* Writes one line: timestamp, level, message, then the fields. */
/* From now on this thread's lines below error level wait in a buffer of
 * its own (4 KiB) until log_flush() or until it is full: a worker calls it
 * at its start and log_flush() before its loop waits, so a turn's lines cost
 * one write() and a crash loses at most one turn's. */
void log_batch_start(void);
/* Writes this thread's waiting lines. */
void log_flush(void);

void log_write(enum log_level level, const char *msg, const struct log_field *fields,
               size_t n_fields);

#define LOG_FIELDS_(...) ((const struct log_field[]){ __VA_ARGS__ })
#define LOG_NFIELDS_(...) (sizeof(LOG_FIELDS_(__VA_ARGS__)) / sizeof(struct log_field))

/* log_info("msg") or log_info("msg", LF_STR("route", name), LF_INT("port", p)). */
#define log_at(level, msg, ...)                                                                    \
    do {                                                                                           \
        if (log_enabled(level))                                                                    \
            log_write((level), (msg), LOG_FIELDS_(LF_STR(NULL, NULL), ##__VA_ARGS__) + 1,          \
                      LOG_NFIELDS_(LF_STR(NULL, NULL), ##__VA_ARGS__) - 1);                        \
    } while (0)

/* A bound on how often one kind of line is written: at most `per_second`
 * lines in any one-second window. The lines dropped are counted; the next
 * line written reports them in its `suppressed` field, and log_limit_flush()
 * reports them once the window is over if no line came to carry them. Owned
 * by one thread: one per worker and kind of line, never shared. */
struct log_limit {
    const char *kind; /* names the lines in the flush line */
    uint32_t per_second;
    uint32_t in_window; /* lines written in the current window */
    uint64_t window_ms; /* start of the current window */
    uint64_t dropped;   /* lines dropped since the last one written */
};

void log_limit_init(struct log_limit *l, const char *kind, uint32_t per_second);

/* May a line be written at `now_ms`? Returns 1 and sets *suppressed to the
 * lines dropped since the last one written (and starts counting again), or
 * 0 and counts this line as dropped. */
int log_limit_allow(struct log_limit *l, uint64_t now_ms, uint64_t *suppressed);

/* Called now and then (a worker's tick): once the window of the last drop is
 * over, logs "log lines suppressed" with the kind and the count. */
void log_limit_flush(struct log_limit *l, uint64_t now_ms);

#define log_debug(msg, ...) log_at(LOG_DEBUG, msg, ##__VA_ARGS__)
#define log_info(msg, ...) log_at(LOG_INFO, msg, ##__VA_ARGS__)
#define log_warn(msg, ...) log_at(LOG_WARN, msg, ##__VA_ARGS__)
#define log_error(msg, ...) log_at(LOG_ERROR, msg, ##__VA_ARGS__)

#endif
