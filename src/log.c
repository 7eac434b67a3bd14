/* Levelled, structured logging to stderr: text or JSON lines, whole lines per write(). */
#include "lifeline/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lifeline/jsonstr.h"

/* A thread that batches (a worker) keeps its lines here until log_flush(),
 * which its loop calls before it waits, or until the next one does not fit:
 * one write() for a turn's lines, not one each. PIPE_BUF: a batch written
 * to a pipe is never split. */
#define LOG_BATCH_MAX 4096
static _Thread_local int batching;
static _Thread_local size_t batch_len;
static _Thread_local char batch[LOG_BATCH_MAX];

static void write_all(const char *p, size_t left);

static _Atomic int log_level_ = LOG_INFO;
static _Atomic int log_format_ = LOG_FORMAT_TEXT;

static const char *const level_names[] = {
#define LEVEL_NAME_(id, name) [LOG_##id] = name,
    LOG_LEVELS(LEVEL_NAME_)
#undef LEVEL_NAME_
};

static const char *const format_names[] = {
#define FORMAT_NAME_(id, name) [LOG_FORMAT_##id] = name,
    LOG_FORMATS(FORMAT_NAME_)
#undef FORMAT_NAME_
};

/* The index of s in names[n], or -EINVAL. */
static int name_index(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return (int)i;
    return -EINVAL;
}

void log_set_level(enum log_level level) { atomic_store(&log_level_, (int)level); }
void log_set_format(enum log_format format) { atomic_store(&log_format_, (int)format); }

int log_enabled(enum log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level_, memory_order_relaxed);
}

const char *log_level_name(enum log_level level) { return level_names[level]; }

int log_level_parse(const char *s, enum log_level *out)
{
    int i = name_index(level_names, sizeof(level_names) / sizeof(level_names[0]), s);
    if (i >= 0)
        *out = (enum log_level)i;
    return i < 0 ? i : 0;
}

int log_format_parse(const char *s, enum log_format *out)
{
    int i = name_index(format_names, sizeof(format_names) / sizeof(format_names[0]), s);
    if (i >= 0)
        *out = (enum log_format)i;
    return i < 0 ? i : 0;
}

/* A line buffer that silently truncates: a log line is never worth a crash.
 * Built by appending, not with printf: a worker formats a line per closed
 * session, and vsnprintf per field was most of a connection's user time. */
struct line {
    char buf[2048];
    size_t len;
};

static void put_bytes(struct line *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - 1 - l->len; /* keep one byte for '\n' */
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put(struct line *l, const char *s) { put_bytes(l, s, strlen(s)); }

static void put_int(struct line *l, int64_t v)
{
    char digits[24];
    size_t i = sizeof(digits);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        digits[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        digits[--i] = '-';
    put_bytes(l, digits + i, sizeof(digits) - i);
}

/* Cut with "..." when the rest of the line cannot hold it. */
static void put_json_string(struct line *l, const char *s)
{
    size_t room = sizeof(l->buf) - 1 - l->len; /* keep one byte for '\n' */
    if (room < 16)
        return;
    l->len += jsonstr_quote(l->buf + l->len, room + 1, s, (size_t)-1);
}

/* Text values are quoted only when they would not read as one token. */
static void put_text_value(struct line *l, const char *s)
{
    if (*s != '\0' && strpbrk(s, " \"=\t\n") == NULL) {
        put(l, s);
        return;
    }
    put_json_string(l, s);
}

/* "2026-01-02T03:04:05.678Z": the part up to the seconds is formatted once
 * per second and thread. */
static void put_time(struct line *l)
{
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[24];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    long ms = ts.tv_nsec / 1000000;
    char frac[6] = {
        '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '\0'
    };
    put(l, cached);
    put_bytes(l, frac, 5);
}

void log_write(enum log_level level, const char *msg, const struct log_field *fields,
               size_t n_fields)
{
    struct line l = { .len = 0 };

    if (atomic_load_explicit(&log_format_, memory_order_relaxed) == LOG_FORMAT_JSON) {
        put(&l, "{\"ts\":\"");
        put_time(&l);
        put(&l, "\",\"level\":\"");
        put(&l, level_names[level]);
        put(&l, "\",\"msg\":");
        put_json_string(&l, msg);
        for (size_t i = 0; i < n_fields; i++) {
            put(&l, ",");
            put_json_string(&l, fields[i].key);
            put(&l, ":");
            if (fields[i].type == LOG_FIELD_INT)
                put_int(&l, fields[i].i);
            else
                put_json_string(&l, fields[i].s ? fields[i].s : "");
        }
        put(&l, "}");
    } else {
        put_time(&l);
        put(&l, " ");
        put(&l, level_names[level]);
        put(&l, " ");
        put(&l, msg);
        for (size_t i = 0; i < n_fields; i++) {
            put(&l, " ");
            put(&l, fields[i].key);
            put(&l, "=");
            if (fields[i].type == LOG_FIELD_INT)
                put_int(&l, fields[i].i);
            else
                put_text_value(&l, fields[i].s ? fields[i].s : "");
        }
    }
    l.buf[l.len++] = '\n';

    if (batching && level < LOG_ERROR && l.len <= LOG_BATCH_MAX) {
        if (batch_len + l.len > LOG_BATCH_MAX)
            log_flush();
        memcpy(batch + batch_len, l.buf, l.len);
        batch_len += l.len;
        return;
    }
    log_flush(); /* the lines before it first */
    write_all(l.buf, l.len);
}

void log_batch_start(void) { batching = 1; }

void log_flush(void)
{
    if (batch_len > 0)
        write_all(batch, batch_len);
    batch_len = 0;
}

/* Whole lines per write(), at most PIPE_BUF bytes of them in a batch, keep
 * the lines of different threads whole on a pipe. */
static void write_all(const char *p, size_t left)
{
    while (left > 0) {
        ssize_t n = write(STDERR_FILENO, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        p += n;
        left -= (size_t)n;
    }
}

void log_limit_init(struct log_limit *l, const char *kind, uint32_t per_second)
{
    *l = (struct log_limit){ .kind = kind, .per_second = per_second };
}

int log_limit_allow(struct log_limit *l, uint64_t now_ms, uint64_t *suppressed)
{
    if (l->in_window == 0 || now_ms - l->window_ms >= 1000) {
        l->window_ms = now_ms;
        l->in_window = 0;
    }
    if (l->in_window >= l->per_second) {
        l->dropped++;
        return 0;
    }
    l->in_window++;
    *suppressed = l->dropped;
    l->dropped = 0;
    return 1;
}

void log_limit_flush(struct log_limit *l, uint64_t now_ms)
{
    if (l->dropped == 0 || now_ms - l->window_ms < 1000)
        return;
    log_warn("log lines suppressed", LF_STR("kind", l->kind), LF_INT("count", l->dropped));
    l->dropped = 0;
    l->in_window = 0;
}
