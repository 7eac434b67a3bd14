/* Process-wide budgets the workers draw on: file descriptors and relay-buffer memory. */
#include "lifeline/budget.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "lifeline/num.h"

/* libuv's default thread pool, and its largest (UV_THREADPOOL_SIZE). */
#define THREADPOOL_DEFAULT 4
#define THREADPOOL_MAX 1024
/* A lookup holds a socket (DNS, or netlink for AI_ADDRCONFIG) and a file
 * (/etc/hosts, resolv.conf, nsswitch.conf) at most at once. */
#define FDS_PER_LOOKUP 2

void budget_init(struct budget *b, int64_t fds_max, int64_t buf_max)
{
    atomic_init(&b->fds_used, 0);
    atomic_init(&b->fds_max, fds_max);
    atomic_init(&b->buf_used, 0);
    atomic_init(&b->buf_max, buf_max);
}

int budget_take_fds(struct budget *b, int n)
{
    int64_t before = atomic_fetch_add(&b->fds_used, n);
    if (before + n <= atomic_load(&b->fds_max))
        return 0;
    atomic_fetch_sub(&b->fds_used, n);
    return -EMFILE;
}

void budget_give_fds(struct budget *b, int n) { atomic_fetch_sub(&b->fds_used, n); }

void budget_claim_fds(struct budget *b, int n) { atomic_fetch_add(&b->fds_used, n); }

int budget_fds_room(const struct budget *b)
{
    return atomic_load(&b->fds_used) + BUDGET_FDS_PER_SESSION <= atomic_load(&b->fds_max);
}

void budget_adjust_fds(struct budget *b, int64_t delta) { atomic_fetch_sub(&b->fds_max, delta); }

size_t budget_buf_room(const struct budget *b)
{
    int64_t room = atomic_load_explicit(&b->buf_max, memory_order_relaxed) -
                   atomic_load_explicit(&b->buf_used, memory_order_relaxed);
    return room > 0 ? (size_t)room : 0;
}

void budget_take_buf(struct budget *b, size_t n)
{
    atomic_fetch_add_explicit(&b->buf_used, (int64_t)n, memory_order_relaxed);
}

void budget_give_buf(struct budget *b, size_t n)
{
    atomic_fetch_sub_explicit(&b->buf_used, (int64_t)n, memory_order_relaxed);
}

void budget_set_buf_max(struct budget *b, int64_t max) { atomic_store(&b->buf_max, max); }

void budget_raise_fd_limit(void)
{
    /* Two descriptors per session: take all the hard limit allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl); /* the budget is sized from what it got */
    }
}

int64_t budget_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    return rl.rlim_cur == RLIM_INFINITY ? INT64_MAX : (int64_t)rl.rlim_cur;
}

int64_t budget_fds_open(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int64_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

int64_t budget_resolver_fds(void)
{
    const char *v = getenv("UV_THREADPOOL_SIZE");
    uint64_t threads = THREADPOOL_DEFAULT;
    /* libuv reads its leading digits (atoi); so does this. */
    size_t digits = v != NULL ? strspn(v, "0123456789") : 0;
    if (digits > 0 && num_parse(v, digits, UINT64_MAX, &threads) == -ERANGE)
        threads = THREADPOOL_MAX;
    if (threads < 1)
        threads = 1;
    if (threads > THREADPOOL_MAX)
        threads = THREADPOOL_MAX;
    return (int64_t)threads * FDS_PER_LOOKUP;
}
